//! Wall-clock time for the control plane. Codecs never read a clock: callers pass `now` in, so
//! that tests drive time.

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-23T21:18:06Z` for unix seconds `secs`.
pub fn format_unix_time(secs: u64) -> String {
    let format = time::format_description::well_known::Rfc3339;
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::format_unix_time(0), "1970-01-01T00:00:00Z");
        assert!(super::unix_now() > 1_700_000_000);
    }
}
