//! Atomic file writes: write a hidden temporary file, fsync it, rename it into place, fsync the
//! directory. A reader sees either the old state (no file) or the whole new file, never a part.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::{Result, StateError};

/// Writes `bytes` to `path` atomically and durably.
///
/// The temporary file is `.<name>.tmp` in the same directory (names starting with `.` are
/// ignored by readers). If `path` exists it is replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StateError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| StateError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StateError::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| StateError::io(path, e))?;
    sync_dir(dir)
}

/// Fsyncs a directory so that a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| StateError::io(dir, e))?;
    d.sync_all().map_err(|e| StateError::io(dir, e))
}

/// Creates a directory (and parents) if missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }
}
