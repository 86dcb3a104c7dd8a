//! Per-stream URLs for the generic RTSP mode: one `--play-url`/`--publish-url` argument names the
//! URLs of S streams, so the same command drives any server. Either a template with `{n}` (the
//! stream's index, 0-based, e.g. `rtsp://127.0.0.1:8554/live/{n}`) for servers whose paths are
//! free-form, or `@FILE` with one URL per line (line n for stream n) for servers that sign each
//! URL, such as ours (`relay url publish --uid ... --count S` writes such a file).
//!
//! Expansion is pure ([`expand`]); reading the file is the caller's ([`read_list`]).

use std::path::Path;

/// The placeholder replaced by the stream's index.
pub const INDEX_PLACEHOLDER: &str = "{n}";

/// Why an argument does not name S URLs (the user's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("{streams} streams need `{{n}}` in the URL {template:?} (one URL per stream)")]
    NoPlaceholder { template: String, streams: usize },
    #[error("{file}: {found} URLs for {streams} streams")]
    TooFewLines {
        file: String,
        found: usize,
        streams: usize,
    },
    #[error("{file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("at least one stream is needed")]
    NoStreams,
}

/// The URLs of streams `0..streams` from a template: `{n}` replaced by the index, everywhere it
/// occurs. One stream needs no placeholder; several do (they would all name one stream).
pub fn expand(template: &str, streams: usize) -> Result<Vec<String>, TemplateError> {
    if streams == 0 {
        return Err(TemplateError::NoStreams);
    }
    if !template.contains(INDEX_PLACEHOLDER) {
        if streams == 1 {
            return Ok(vec![template.to_owned()]);
        }
        return Err(TemplateError::NoPlaceholder {
            template: template.to_owned(),
            streams,
        });
    }
    Ok((0..streams)
        .map(|n| template.replace(INDEX_PLACEHOLDER, &n.to_string()))
        .collect())
}

/// The first `streams` URLs of a list (one per line; blank lines and `#` comments skipped).
pub fn from_list(name: &str, text: &str, streams: usize) -> Result<Vec<String>, TemplateError> {
    if streams == 0 {
        return Err(TemplateError::NoStreams);
    }
    let urls: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .take(streams)
        .map(str::to_owned)
        .collect();
    if urls.len() < streams {
        return Err(TemplateError::TooFewLines {
            file: name.to_owned(),
            found: urls.len(),
            streams,
        });
    }
    Ok(urls)
}

/// The URLs an argument names: `@FILE` (a list) or a template.
pub fn read_list(argument: &str, streams: usize) -> Result<Vec<String>, TemplateError> {
    match argument.strip_prefix('@') {
        Some(file) => {
            let text = std::fs::read_to_string(Path::new(file)).map_err(|e| {
                TemplateError::Unreadable {
                    file: file.to_owned(),
                    reason: e.to_string(),
                }
            })?;
            from_list(file, &text, streams)
        }
        None => expand(argument, streams),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_per_stream() {
        assert_eq!(
            expand("rtsp://127.0.0.1:8554/live/{n}", 3).unwrap(),
            [
                "rtsp://127.0.0.1:8554/live/0",
                "rtsp://127.0.0.1:8554/live/1",
                "rtsp://127.0.0.1:8554/live/2"
            ]
        );
        assert_eq!(
            expand("rtsp://h/{n}/cam{n}", 11).unwrap()[10],
            "rtsp://h/10/cam10"
        );
        assert_eq!(expand("rtsp://h/cam", 1).unwrap(), ["rtsp://h/cam"]);
        assert!(matches!(
            expand("rtsp://h/cam", 2),
            Err(TemplateError::NoPlaceholder { streams: 2, .. })
        ));
        assert_eq!(expand("rtsp://h/{n}", 0), Err(TemplateError::NoStreams));
    }

    #[test]
    fn lists_give_one_url_per_line() {
        let text = "# signed by relay url\nrtsp://h/a?t=1\n\n  rtsp://h/b?t=2  \nrtsp://h/c\n";
        assert_eq!(
            from_list("urls.txt", text, 2).unwrap(),
            ["rtsp://h/a?t=1", "rtsp://h/b?t=2"]
        );
        let err = from_list("urls.txt", text, 4).unwrap_err();
        assert_eq!(err.to_string(), "urls.txt: 3 URLs for 4 streams");
        assert!(matches!(
            read_list("@/nonexistent/urls", 1),
            Err(TemplateError::Unreadable { .. })
        ));
    }
}
