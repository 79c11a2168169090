//! A write-ahead log of numbered entries: `<dir>/<N>`, each a version line (`v1`) followed by one
//! JSON document. Entries are written atomically and never overwritten.

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::atomic::{ensure_dir, write_atomic};
use crate::{Result, StateError};

/// The format version line every log entry starts with.
pub const LOG_VERSION: &str = "v1";

/// A directory of numbered entries of type `T`.
#[derive(Debug, Clone)]
pub struct VersionedLog<T> {
    dir: PathBuf,
    _entry: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> VersionedLog<T> {
    /// Opens (creating if missing) the log in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        ensure_dir(&dir)?;
        Ok(Self {
            dir,
            _entry: PhantomData,
        })
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Writes entry `id` unless it exists. Returns `false` (and leaves the entry untouched) when
    /// it already exists: a log entry is never overwritten.
    pub fn add(&self, id: u64, entry: &T) -> Result<bool> {
        let path = self.path(id);
        if path.exists() {
            return Ok(false);
        }
        let json = serde_json::to_string(entry).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: format!("cannot serialise entry: {e}"),
        })?;
        let mut bytes = Vec::with_capacity(json.len() + 4);
        bytes.extend_from_slice(LOG_VERSION.as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(json.as_bytes());
        write_atomic(&path, &bytes)?;
        Ok(true)
    }

    /// Reads entry `id`, `None` if it does not exist.
    pub fn get(&self, id: u64) -> Result<Option<T>> {
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        parse_entry(&path, &bytes).map(Some)
    }

    /// All entry ids, ascending.
    pub fn ids(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| StateError::io(&self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| StateError::io(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue; // temporary files of an interrupted write
            }
            match name.parse::<u64>() {
                Ok(id) => ids.push(id),
                Err(_) => {
                    return Err(StateError::Corrupt {
                        path: entry.path(),
                        reason: "unexpected file in a log directory (names must be batch numbers)"
                            .into(),
                    })
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The highest id, if any.
    pub fn latest_id(&self) -> Result<Option<u64>> {
        Ok(self.ids()?.last().copied())
    }

    /// The entry with the highest id, if any.
    pub fn latest(&self) -> Result<Option<(u64, T)>> {
        match self.latest_id()? {
            None => Ok(None),
            Some(id) => {
                let entry = self.get(id)?.ok_or_else(|| StateError::Inconsistent {
                    dir: self.dir.clone(),
                    reason: format!("entry {id} disappeared while reading"),
                })?;
                Ok(Some((id, entry)))
            }
        }
    }

    /// Deletes entries with id < `keep_from`.
    pub fn purge_before(&self, keep_from: u64) -> Result<()> {
        for id in self.ids()? {
            if id >= keep_from {
                break;
            }
            let p = self.path(id);
            fs::remove_file(&p).map_err(|e| StateError::io(&p, e))?;
        }
        Ok(())
    }
}

/// Parses one entry: version line, then JSON.
pub fn parse_entry<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    if bytes.is_empty() {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            reason: truncated_reason(path, bytes.len()),
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })?;
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    if first != LOG_VERSION {
        return Err(StateError::Foreign {
            path: path.to_path_buf(),
            found: first.chars().take(40).collect(),
            expected: LOG_VERSION.into(),
        });
    }
    serde_json::from_str(rest).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: if e.is_eof() {
            truncated_reason(path, bytes.len())
        } else {
            e.to_string()
        },
    })
}

/// What to say about a log entry cut short (a crash of the machine or file system while it was
/// written): which entry it is and how to recover, without a new checkpoint location (that
/// would give the query a new id, and its exactly-once sinks would not recognise its batches).
fn truncated_reason(path: &Path, len: usize) -> String {
    let entry = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let log = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let how = match log.as_str() {
        "offsets" => format!(
            "batch {entry} was planned but never committed; remove this file and start again: \
             the batch is planned anew (its sink has not committed it)"
        ),
        "commits" => format!(
            "batch {entry} reached its sink; remove this file and start again: the batch runs \
             again and its exactly-once sink skips it"
        ),
        _ => "remove this entry if it is the last of its log, and start again".to_string(),
    };
    format!("the file is truncated ({len} bytes): {how}. Keep the checkpoint location: a new one gives the query a new id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_get_latest_and_never_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: VersionedLog<Vec<u32>> = VersionedLog::open(dir.path().join("l")).expect("open");
        assert!(log.latest().expect("latest").is_none());
        assert!(log.add(0, &vec![1]).expect("add"));
        assert!(log.add(10, &vec![2]).expect("add"));
        assert!(log.add(2, &vec![3]).expect("add"));
        assert!(!log.add(2, &vec![99]).expect("add again"));
        assert_eq!(log.get(2).expect("get"), Some(vec![3]));
        assert_eq!(log.ids().expect("ids"), vec![0, 2, 10]);
        assert_eq!(log.latest().expect("latest"), Some((10, vec![2])));
        log.purge_before(3).expect("purge");
        assert_eq!(log.ids().expect("ids"), vec![10]);
    }

    #[test]
    fn a_truncated_entry_says_which_batch_and_how_to_recover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let offsets = dir.path().join("offsets");
        std::fs::create_dir_all(&offsets).expect("dir");
        // (file content, what the message says)
        let table: [(&[u8], &str); 3] = [
            (b"", "truncated (0 bytes)"),
            (b"v1\n{\"batchId\": 10, \"sour", "truncated (24 bytes)"),
            (
                b"v1\n{\"batchId\": 10, \"sour",
                "batch 10 was planned but never committed; remove this file",
            ),
        ];
        for (bytes, needle) in table {
            let p = offsets.join("10");
            let e = parse_entry::<serde_json::Value>(&p, bytes).expect_err("truncated");
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(!msg.contains("use another checkpoint location"), "{msg}");
            assert_eq!(e.kind(), crate::ErrorKind::User);
        }
        let e = parse_entry::<serde_json::Value>(&dir.path().join("commits").join("7"), b"")
            .expect_err("truncated");
        assert!(e.to_string().contains("batch 7 reached its sink"), "{e}");
    }

    #[test]
    fn corrupt_and_foreign_entries_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log: VersionedLog<Vec<u32>> = VersionedLog::open(dir.path()).expect("open");
        fs::write(dir.path().join("0"), "v1\n[1, 2").expect("write");
        let err = log.get(0).expect_err("corrupt");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("/0"), "{err}");
        fs::write(dir.path().join("1"), "v7\n[1]").expect("write");
        let err = log.get(1).expect_err("foreign");
        assert!(matches!(err, StateError::Foreign { .. }), "{err}");
        fs::write(dir.path().join("junk.txt"), "x").expect("write");
        assert!(log.ids().is_err());
    }
}
