//! Firmware files uploaded through the client API (`POST /v1.0/firmware/{fileName}`), kept in
//! `DATA/firmware/` for upgrade sessions to send to devices (the platform keeps them in
//! `/home/admin/rop/data/firmware`). A firmware is tens of MiB: the body is streamed from the
//! socket to a temporary file in the same directory, synced, and renamed into place, so a
//! connection never holds the file in memory and a half-received upload never shows under the
//! name a session would open.
//!
//! The writes are plain blocking file writes on the control plane's thread (16 KiB at a time,
//! into the page cache; one fsync at the end): the control plane is not a data-plane shard.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::http_server::{BodyChunks, BodyError};

/// Largest firmware accepted by default (`api.firmware_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Longest file name (the platform's `upgradeFile` is 0-255 bytes).
pub const MAX_NAME_LEN: usize = 255;

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    /// The file name is not one we store (`invalid_parameter`, 400).
    #[error("invalid firmware file name: {0}")]
    BadName(&'static str),
    /// No body.
    #[error("the request body is empty: it must be the firmware file itself")]
    Empty,
    /// The client stopped sending.
    #[error("{0}")]
    Body(#[from] BodyError),
    /// Writing the file failed (our side, 500).
    #[error("storing firmware {path}: {source}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Checks a firmware file name: 1-255 bytes of letters, digits, `.`, `-` and `_`, not
/// starting with a dot (no directories, no hidden or temporary files).
pub fn validate_name(name: &str) -> Result<(), FirmwareError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(FirmwareError::BadName("the name must be 1 to 255 bytes"));
    }
    if name.starts_with('.') {
        return Err(FirmwareError::BadName("the name must not start with a dot"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(FirmwareError::BadName(
            "the name may hold only letters, digits, '.', '-' and '_'",
        ));
    }
    Ok(())
}

/// The firmware directory.
#[derive(Debug, Clone)]
pub struct FirmwareStore {
    dir: PathBuf,
    /// Largest upload accepted.
    pub max_bytes: u64,
}

impl FirmwareStore {
    /// A store in `dir` (created on the first upload).
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a stored firmware, if it exists.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        validate_name(name).ok()?;
        let path = self.dir.join(name);
        path.is_file().then_some(path)
    }

    /// Streams `body` into the firmware `name`, replacing a previous file of that name once
    /// the whole body arrived; returns its size.
    pub async fn receive<B: BodyChunks>(
        &self,
        name: &str,
        body: &mut B,
    ) -> Result<u64, FirmwareError> {
        validate_name(name)?;
        if body.remaining() == 0 {
            return Err(FirmwareError::Empty);
        }
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| FirmwareError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        // A fixed-length name: the final name may already be as long as a file name can be.
        let part = self
            .dir
            .join(format!(".upload-{:016x}.part", rand::random::<u64>()));
        let result = async {
            let file = File::create(&part).map_err(io_error(&part))?;
            let mut out = BufWriter::with_capacity(256 * 1024, file);
            let mut size = 0u64;
            while let Some(chunk) = body.next_chunk().await? {
                out.write_all(&chunk).map_err(io_error(&part))?;
                size += chunk.len() as u64;
            }
            let file = out
                .into_inner()
                .map_err(|e| io_error(&part)(e.into_error()))?;
            file.sync_all().map_err(io_error(&part))?;
            let target = self.dir.join(name);
            fs::rename(&part, &target).map_err(io_error(&target))?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for good in [
            "Reolink-Duo-2.2143_23042822.BIPC_529MIX32M35B17B6MP.paks",
            "IPC_523B188MP.1569_230106789.RLC-812A.IMX415.8MP.REOLINK.pak",
            "a",
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "../etc/passwd",
            "dir/file.pak",
            "a b.pak",
            "%2e%2e",
            &"x".repeat(256),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
