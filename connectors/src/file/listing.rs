//! Where a file source looks: a directory or a glob, listed into the files it may take.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sluice_engine::{EngineError, Result};

/// One input file, as recorded in the source log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Absolute path.
    pub path: String,
    /// Modification time, ms since the epoch.
    #[serde(rename = "modificationTime")]
    pub mtime_ms: i64,
    /// Size in bytes.
    pub size: u64,
}

/// Where to look for files.
#[derive(Debug, Clone)]
pub(super) struct Location {
    /// A directory, or the directory part of a glob.
    pub(super) base: PathBuf,
    /// The glob pattern, if the path had wildcards.
    pub(super) pattern: Option<String>,
}

impl Location {
    pub(super) fn new(path: &str) -> Result<Self> {
        if path.contains(['*', '?', '[', '{']) {
            let p = Path::new(path);
            let mut base = PathBuf::new();
            for c in p.components() {
                if c.as_os_str()
                    .to_string_lossy()
                    .contains(['*', '?', '[', '{'])
                {
                    break;
                }
                base.push(c);
            }
            glob::Pattern::new(path)
                .map_err(|e| EngineError::user(format!("invalid glob '{path}': {e}")))?;
            Ok(Self {
                base,
                pattern: Some(path.to_string()),
            })
        } else {
            let base = PathBuf::from(path);
            if base.is_file() {
                // one file (a static table's `campaigns.csv`): its directory, matching it alone
                let dir = base.parent().map(Path::to_path_buf).unwrap_or_default();
                return Ok(Self {
                    base: dir,
                    pattern: Some(glob::Pattern::escape(path)),
                });
            }
            if !base.is_dir() {
                return Err(EngineError::user(format!(
                    "path does not exist or is not a directory: {path} (a file source reads a directory, a glob or one file)"
                )));
            }
            Ok(Self {
                base,
                pattern: None,
            })
        }
    }

    pub(super) fn hidden(name: &str) -> bool {
        name.starts_with('_') || name.starts_with('.')
    }

    /// All visible files now present.
    pub(super) fn list(&self) -> Result<Vec<FileEntry>> {
        let mut out = Vec::new();
        let mut push = |p: PathBuf| -> Result<()> {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if Self::hidden(&name) {
                return Ok(());
            }
            let md = match std::fs::metadata(&p) {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()), // raced away
                Err(e) => return Err(EngineError::io(&p, e)),
            };
            if !md.is_file() {
                return Ok(());
            }
            let mtime_ms = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let abs = std::path::absolute(&p).unwrap_or(p);
            out.push(FileEntry {
                path: abs.to_string_lossy().into_owned(),
                mtime_ms,
                size: md.len(),
            });
            Ok(())
        };
        match &self.pattern {
            Some(pat) => {
                let paths = glob::glob(pat)
                    .map_err(|e| EngineError::user(format!("invalid glob '{pat}': {e}")))?;
                for p in paths {
                    match p {
                        Ok(p) => {
                            // skip files under hidden directories below the base too
                            let below = p.strip_prefix(&self.base).unwrap_or(&p);
                            if below.components().any(|c| {
                                let s = c.as_os_str().to_string_lossy();
                                s.len() > 1 && s != ".." && Self::hidden(&s)
                            }) {
                                continue;
                            }
                            push(p)?
                        }
                        Err(e) => return Err(EngineError::external(format!("listing {pat}: {e}"))),
                    }
                }
            }
            None => {
                let rd =
                    std::fs::read_dir(&self.base).map_err(|e| EngineError::io(&self.base, e))?;
                for e in rd {
                    let e = e.map_err(|e| EngineError::io(&self.base, e))?;
                    push(e.path())?;
                }
            }
        }
        Ok(out)
    }
}

pub(super) fn key(path: &str, file_name_only: bool) -> String {
    if file_name_only {
        Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string())
    } else {
        path.to_string()
    }
}
