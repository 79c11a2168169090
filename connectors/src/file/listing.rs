//! Where a file source looks: a directory or a glob, listed into the files it may take.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sluice_engine::connector::storage::{is_remote, local_path, Location as Bucket};
use sluice_engine::{EngineError, Options, Result};

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
    /// An object store's prefix (`s3://bucket/raw`), when the path is a URL: `base` is then
    /// unused, and `pattern` matches whole object URLs.
    pub(super) bucket: Option<Arc<Bucket>>,
    /// The glob, compiled, for a bucket's object URLs.
    matcher: Option<glob::Pattern>,
}

/// The first `/`-separated part of `path` with a wildcard, and what comes before it.
fn split_glob(path: &str) -> (&str, bool) {
    let mut end = 0;
    for part in path.split('/') {
        if part.contains(['*', '?', '[', '{']) {
            return (path[..end].trim_end_matches('/'), true);
        }
        end += part.len() + 1;
    }
    (path, false)
}

impl Location {
    /// Where `path` (a directory, a glob, one file, or a URL of either in object storage)
    /// points; `options` may hold the object store's settings (`fs.s3a.*`).
    pub(super) fn new(path: &str, options: &Options) -> Result<Self> {
        if is_remote(path) {
            let (base, globbed) = split_glob(path);
            let bucket = Bucket::parse(base, &options.storage())?;
            let matcher = if globbed {
                Some(
                    glob::Pattern::new(path)
                        .map_err(|e| EngineError::user(format!("invalid glob '{path}': {e}")))?,
                )
            } else {
                None
            };
            return Ok(Self {
                base: PathBuf::new(),
                pattern: globbed.then(|| path.to_string()),
                bucket: Some(Arc::new(bucket)),
                matcher,
            });
        }
        let local = local_path(path).ok_or_else(|| {
            EngineError::user(format!(
                "unsupported location '{path}': a local path, file://, s3://, gs://, az:// or abfss://"
            ))
        })?;
        let path = &*local.to_string_lossy();
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
                bucket: None,
                matcher: None,
            })
        } else {
            let base = PathBuf::from(path);
            if base.is_file() {
                // one file (a static table's `campaigns.csv`): its directory, matching it alone
                let dir = base.parent().map(Path::to_path_buf).unwrap_or_default();
                return Ok(Self {
                    base: dir,
                    pattern: Some(glob::Pattern::escape(path)),
                    bucket: None,
                    matcher: None,
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
                bucket: None,
                matcher: None,
            })
        }
    }

    /// Whether object `url` of the bucket is one this location reads: below its prefix, no
    /// hidden name at any level, a direct child (any level with a glob, which must match).
    pub(super) fn admits(&self, url: &str) -> bool {
        let Some(bucket) = &self.bucket else {
            return false;
        };
        let Some(rel) = bucket.key_of_url(url).and_then(|k| bucket.rel_of(&k)) else {
            return false;
        };
        if rel.is_empty() || rel.split('/').any(|p| p.is_empty() || Self::hidden(p)) {
            return false;
        }
        match &self.matcher {
            None => !rel.contains('/'),
            Some(p) => p.matches(url),
        }
    }

    /// The objects below a bucket prefix that [`Self::admits`].
    fn list_bucket(&self, bucket: &Bucket) -> Result<Vec<FileEntry>> {
        let mut out = Vec::new();
        for m in bucket.list_below(None)? {
            let url = bucket.url_of(&m.location);
            if self.admits(&url) {
                out.push(FileEntry {
                    path: url,
                    mtime_ms: m.last_modified.timestamp_millis(),
                    size: m.size,
                });
            }
        }
        Ok(out)
    }

    pub(super) fn hidden(name: &str) -> bool {
        name.starts_with('_') || name.starts_with('.')
    }

    /// All visible files now present.
    pub(super) fn list(&self) -> Result<Vec<FileEntry>> {
        if let Some(b) = &self.bucket {
            return self.list_bucket(b);
        }
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

/// The whole of file `f` (to infer a schema from).
pub(super) fn read_whole(loc: &Location, f: &FileEntry) -> Result<Vec<u8>> {
    match &loc.bucket {
        Some(b) => {
            let key = b.key_of_url(&f.path).ok_or_else(|| {
                EngineError::bug(format!("{} is not an object of {}", f.path, b.url()))
            })?;
            b.get_key(&key)?
                .map(|bytes| bytes.to_vec())
                .ok_or_else(|| EngineError::user(format!("input object {} is gone", f.path)))
        }
        None => std::fs::read(&f.path).map_err(|e| EngineError::io(Path::new(&f.path), e)),
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
