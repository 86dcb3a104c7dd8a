//! File handling for the PKI directory: crash-safe replacement of files and change detection.
//!
//! Every file is written to a temporary file in the same directory (created with its final
//! mode, so a private key is never readable by others, not even for a moment), flushed to disk,
//! renamed over the old one and the directory entry flushed: after a crash a reader sees either
//! the old or the new file, never a mix.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::PkiError;

/// Mode of private key files.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates and CRLs (public material).
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of the PKI directory.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and parents) if missing; a new directory gets [`DIR_MODE`].
pub(crate) fn create_dir(dir: &Path) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| PkiError::io("create directory", dir, e))
}

/// Replaces `path` with `contents` atomically (temporary file + fsync + rename + directory fsync).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{:016x}",
        std::process::id(),
        random_u64()
    ));
    let written = write_new_file(&tmp, contents, mode).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| PkiError::io("rename into place", path, e))
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| PkiError::io("create", path, e))?;
    file.write_all(contents)
        .map_err(|e| PkiError::io("write", path, e))?;
    file.sync_all().map_err(|e| PkiError::io("fsync", path, e))
}

/// Flushes a directory's entries (a rename or unlink inside it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io("fsync directory", dir, e))
}

/// Removes `path` if it exists and flushes its directory.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), PkiError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(&parent_dir(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PkiError::io("remove", path, e)),
    }
}

pub(crate) fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::io("read", path, e))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // A failing system RNG leaves zeros; the pid and create_new still keep names apart.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}

/// Identity of one version of a file: an atomic replacement gives a new inode, an in-place
/// edit a new mtime or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    inode: u64,
    device: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of `path` now, or `None` when it does not exist.
    pub(crate) fn of(path: &Path) -> Result<Option<FileStamp>, PkiError> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(FileStamp {
                inode: meta.ino(),
                device: meta.dev(),
                len: meta.len(),
                modified: meta.modified().ok(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PkiError::io("stat", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_atomic(&path, b"one", KEY_MODE).unwrap();
        write_atomic(&path, b"two", KEY_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files must not remain");
    }

    #[test]
    fn stamp_changes_on_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crl.pem");
        assert_eq!(FileStamp::of(&path).unwrap(), None);
        write_atomic(&path, b"a", PUBLIC_MODE).unwrap();
        let first = FileStamp::of(&path).unwrap();
        write_atomic(&path, b"a", PUBLIC_MODE).unwrap();
        assert_ne!(first, FileStamp::of(&path).unwrap());
    }
}
