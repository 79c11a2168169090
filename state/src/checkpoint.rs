//! The checkpoint directory of one query:
//!
//! ```text
//! <checkpoint>/metadata        v1 + {"id": ...}: the query id, stable across restarts
//! <checkpoint>/offsets/<N>     v1 + OffsetsEntry, written before batch N runs
//! <checkpoint>/commits/<N>     v1 + CommitEntry, written after batch N reached the sink
//! <checkpoint>/sources/<i>/    private logs of source i (e.g. the files a file source took)
//! <checkpoint>/state/<op>.schema       what operator op's state means (its fingerprint)
//! <checkpoint>/state/<op>/<p>/         partition p of stateful operator op: its store
//! ```
//!
//! Checkpoints written before state was partitioned hold one store per operator directly in
//! `state/<op>/`; they run with one partition.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{ensure_dir, write_atomic};
use crate::log::{parse_entry, VersionedLog, LOG_VERSION};
use crate::recovery::{resolve_start, StartDecision};
use crate::remote::{is_remote, CheckpointMirror, Location, StorageOptions};
use crate::{Result, StateError};

/// The query's identity, written once when the checkpoint is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryMetadata {
    /// Stable query id (a UUID).
    pub id: String,
}

/// The write-ahead entry of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetsEntry {
    /// The batch id (equal to the entry's file name).
    pub batch_id: u64,
    /// Batch timestamp in ms since the epoch: `now()`/`current_timestamp()` of this batch.
    pub batch_timestamp_ms: i64,
    /// Event-time watermark in force for this batch (eviction and append emission), ms since
    /// the epoch (0 when none).
    pub watermark_ms: i64,
    /// The previous batch's watermark: rows whose window ends at or before it are late
    /// (Spark >= 3.4).
    #[serde(default)]
    pub late_watermark_ms: i64,
    /// End offset of each source (source-specific JSON), in the order of the query's sources.
    pub sources: Vec<serde_json::Value>,
    /// Settings that must not change between restarts.
    #[serde(default)]
    pub conf: BTreeMap<String, String>,
}

/// The commit entry of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitEntry {
    /// The batch id.
    pub batch_id: u64,
    /// Watermark for the next batch, ms since the epoch.
    pub next_watermark_ms: i64,
    /// Each watermark operator's own watermark after this batch, ms (queries with several
    /// watermarked inputs choose among them by policy); empty before the first batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_watermarks_ms: Vec<i64>,
}

/// The local working copy of the checkpoint at `url`: `<base>/<hash of url>-<pid>`, where
/// base is `$SLUICE_LOCAL_DIR` or the temporary directory. Copies left by processes that are
/// gone are deleted.
fn local_copy_dir(url: &str) -> Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let base = std::env::var_os("SLUICE_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-checkpoints"));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    let stem = format!("{:016x}", h.finish());
    if let Ok(rd) = fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(&format!("{stem}-"))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(base.join(format!("{stem}-{}", std::process::id())))
}

/// An opened checkpoint directory.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
    /// The bucket this checkpoint lives in, when its location is a URL (`root` is then the
    /// local working copy).
    mirror: Option<std::sync::Arc<CheckpointMirror>>,
    metadata: QueryMetadata,
    offsets: VersionedLog<OffsetsEntry>,
    commits: VersionedLog<CommitEntry>,
}

impl CheckpointDir {
    /// The query id of the checkpoint at `root` without creating or changing anything:
    /// `None` when there is no checkpoint there yet (no directory, or an empty one); an error
    /// when the directory holds something that is not a Sluice checkpoint.
    pub fn peek_query_id(root: &Path) -> Result<Option<String>> {
        let meta_path = root.join("metadata");
        match fs::read(&meta_path) {
            Ok(bytes) => Ok(Some(parse_entry::<QueryMetadata>(&meta_path, &bytes)?.id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match first_visible_entry(root)? {
                    None => Ok(None),
                    Some(other) => Err(StateError::Inconsistent {
                        dir: root.to_path_buf(),
                        reason: format!(
                            "the directory is not empty ({} exists) but has no Sluice `metadata` file; \
                             it is not a Sluice checkpoint or its metadata was deleted",
                            other.display()
                        ),
                    }),
                }
            }
            Err(e) => Err(StateError::io(&meta_path, e)),
        }
    }

    /// Opens the checkpoint at `root`, creating it (with a new query id) if it does not exist or
    /// is empty. A non-empty directory without Sluice metadata is refused: it is someone else's.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        let meta_path = root.join("metadata");
        let metadata = match fs::read(&meta_path) {
            Ok(bytes) => parse_entry::<QueryMetadata>(&meta_path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(other) = first_visible_entry(&root)? {
                    return Err(StateError::Inconsistent {
                        dir: root.clone(),
                        reason: format!(
                            "the directory is not empty ({} exists) but has no Sluice `metadata` file; \
                             it is not a Sluice checkpoint or its metadata was deleted. Refusing to start \
                             from zero: choose an empty or new checkpoint location",
                            other.display()
                        ),
                    });
                }
                ensure_dir(&root)?;
                let metadata = QueryMetadata {
                    id: uuid::Uuid::new_v4().to_string(),
                };
                let json = serde_json::to_string(&metadata).map_err(|e| StateError::Corrupt {
                    path: meta_path.clone(),
                    reason: e.to_string(),
                })?;
                write_atomic(&meta_path, format!("{LOG_VERSION}\n{json}").as_bytes())?;
                metadata
            }
            Err(e) => return Err(StateError::io(&meta_path, e)),
        };
        Ok(Self {
            offsets: VersionedLog::open(root.join("offsets"))?,
            commits: VersionedLog::open(root.join("commits"))?,
            metadata,
            root,
            mirror: None,
        })
    }

    /// Opens the checkpoint at `location`: a local path (see [`Self::open`]), or a URL of an
    /// object store (`s3://bucket/prefix`), restored into a local working copy under
    /// `$SLUICE_LOCAL_DIR` (default: the system's temporary directory) and mirrored back to
    /// the bucket at each [`Self::sync`].
    pub fn open_location(location: &str, options: &StorageOptions) -> Result<Self> {
        if !is_remote(location) {
            let path = crate::remote::local_path(location).unwrap_or_else(|| location.into());
            return Self::open(path);
        }
        let remote = Location::parse(location, options)?;
        let local = local_copy_dir(&remote.url())?;
        let mirror = CheckpointMirror::restore(remote, local.clone())?;
        mirror.take_lease()?;
        let mut chk = Self::open(local)?;
        mirror.sync()?;
        chk.mirror = Some(std::sync::Arc::new(mirror));
        Ok(chk)
    }

    /// Opens task `fence.task`'s checkpoint of a group checkpoint, through a local working
    /// copy restored from the shared location (a directory or a bucket), guarded by the epoch
    /// `fence` holds: see [`crate::remote::tasks`].
    pub fn open_task(fence: crate::remote::TaskFence) -> Result<Self> {
        let url = fence.checkpoint().url();
        // one copy per epoch: a task taken again by this process never meets the copy of its
        // earlier epoch, which a stopping query may still hold
        let local = local_copy_dir(&format!("{url}#epoch={}", fence.epoch))?;
        let mirror = CheckpointMirror::restore_task(fence, local.clone())?;
        let mut chk = Self::open(local)?;
        mirror.sync()?;
        chk.mirror = Some(std::sync::Arc::new(mirror));
        Ok(chk)
    }

    /// [`Self::peek_query_id`] of a location that may be a URL (asks the bucket for the
    /// `metadata` object: `sluice validate` learns that the bucket answers).
    pub fn peek_query_id_at(location: &str, options: &StorageOptions) -> Result<Option<String>> {
        if !is_remote(location) {
            let path = crate::remote::local_path(location).unwrap_or_else(|| location.into());
            return Self::peek_query_id(&path);
        }
        let remote = Location::parse(location, options)?;
        remote.check_reachable()?;
        match remote.get("metadata")? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                parse_entry::<QueryMetadata>(Path::new(location), &bytes)?.id,
            )),
        }
    }

    /// Uploads what changed to the bucket (nothing for a local checkpoint): called after
    /// each offsets entry (before its batch runs) and each commit entry.
    pub fn sync(&self) -> Result<()> {
        match &self.mirror {
            Some(m) => m.sync(),
            None => Ok(()),
        }
    }

    /// The checkpoint's URL when it lives in object storage.
    pub fn remote_url(&self) -> Option<String> {
        self.mirror.as_ref().map(|m| m.url())
    }

    /// The checkpoint's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The stable query id.
    pub fn query_id(&self) -> &str {
        &self.metadata.id
    }

    /// The offsets log.
    pub fn offsets(&self) -> &VersionedLog<OffsetsEntry> {
        &self.offsets
    }

    /// The commit log.
    pub fn commits(&self) -> &VersionedLog<CommitEntry> {
        &self.commits
    }

    /// Directory for source `index`'s private logs (created if missing).
    pub fn source_dir(&self, index: usize) -> Result<PathBuf> {
        let d = self.root.join("sources").join(index.to_string());
        ensure_dir(&d)?;
        Ok(d)
    }

    /// The store directories of stateful operator `op` with `partitions` partitions (see
    /// [`state_partition_dirs`]).
    pub fn state_partition_dirs(&self, op: usize, partitions: usize) -> Result<Vec<PathBuf>> {
        state_partition_dirs(&self.root, op, partitions)
    }

    /// The setting `key` recorded in the newest offsets entry (`None`: no batch was planned, or
    /// the entry does not record it).
    pub fn recorded_conf(&self, key: &str) -> Result<Option<String>> {
        match self.offsets.latest_id()? {
            None => Ok(None),
            Some(id) => Ok(self.offsets_of(id)?.conf.get(key).cloned()),
        }
    }

    /// Reads the logs and decides where to start (see [`resolve_start`]).
    pub fn start_decision(&self) -> Result<StartDecision> {
        let last_offsets = self.offsets.latest_id()?;
        let last_commit = self.commits.latest_id()?;
        resolve_start(last_offsets, last_commit).map_err(|reason| StateError::Inconsistent {
            dir: self.root.clone(),
            reason,
        })
    }

    /// Reads the offsets entry of `batch`, which must exist.
    pub fn offsets_of(&self, batch: u64) -> Result<OffsetsEntry> {
        let entry = self
            .offsets
            .get(batch)?
            .ok_or_else(|| StateError::Inconsistent {
                dir: self.root.clone(),
                reason: format!("offsets entry {batch} is missing"),
            })?;
        if entry.batch_id != batch {
            return Err(StateError::Corrupt {
                path: self.offsets.dir().join(batch.to_string()),
                reason: format!("entry says batch {} ", entry.batch_id),
            });
        }
        Ok(entry)
    }
}

fn first_visible_entry(dir: &Path) -> Result<Option<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StateError::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// The store directory of each partition of stateful operator `op` in the checkpoint at `root`:
/// `state/<op>/<p>/`. A checkpoint written before state was partitioned keeps its one store in
/// `state/<op>/` (a RocksDB `CURRENT` file there); it runs with one partition only.
pub fn state_partition_dirs(root: &Path, op: usize, partitions: usize) -> Result<Vec<PathBuf>> {
    let dir = root.join("state").join(op.to_string());
    if dir.join("CURRENT").exists() {
        if partitions != 1 {
            return Err(StateError::Inconsistent {
                dir,
                reason: format!(
                    "this checkpoint's state was written unpartitioned (one store per operator), \
                     so it runs with spark.sql.shuffle.partitions=1, not {partitions}; \
                     use a new checkpoint location for another number of partitions"
                ),
            });
        }
        return Ok(vec![dir]);
    }
    Ok((0..partitions.max(1))
        .map(|p| dir.join(p.to_string()))
        .collect())
}

/// Where what stateful operator `op`'s state means is recorded: `state/<op>.schema`.
pub fn state_fingerprint_path(root: &Path, op: usize) -> PathBuf {
    root.join("state").join(format!("{op}.schema"))
}

/// Whether the checkpoint at `root` holds state written before state was partitioned (one store
/// per operator, in `state/<op>/` itself).
pub fn state_is_unpartitioned(root: &Path) -> bool {
    root.join("state").join("0").join("CURRENT").exists()
}

/// `(operator index, partition stores found)` of the stateful operators whose state exists in
/// the checkpoint at `root` (1 for an unpartitioned one), by index. For `sluice checkpoint`.
pub fn state_partitions_found(root: &Path) -> Result<Vec<(usize, usize)>> {
    let state = root.join("state");
    let rd = match fs::read_dir(&state) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::io(&state, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| StateError::io(&state, e))?;
        let Ok(op) = e.file_name().to_string_lossy().parse::<usize>() else {
            continue;
        };
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        if dir.join("CURRENT").exists() {
            out.push((op, 1));
            continue;
        }
        let mut n = 0;
        while dir.join(n.to_string()).join("CURRENT").exists() {
            n += 1;
        }
        out.push((op, n));
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(batch_id: u64) -> OffsetsEntry {
        OffsetsEntry {
            batch_id,
            batch_timestamp_ms: 1,
            watermark_ms: 0,
            late_watermark_ms: 0,
            sources: vec![serde_json::json!({"logOffset": batch_id})],
            conf: BTreeMap::new(),
        }
    }

    #[test]
    fn id_is_stable_and_decisions_follow_the_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("chk");
        let c = CheckpointDir::open(&root).expect("open");
        let id = c.query_id().to_string();
        assert_eq!(c.start_decision().expect("d"), StartDecision::Fresh);
        c.offsets().add(0, &entry(0)).expect("add");
        assert_eq!(
            c.start_decision().expect("d"),
            StartDecision::Rerun { batch: 0 }
        );
        c.commits()
            .add(
                0,
                &CommitEntry {
                    batch_id: 0,
                    next_watermark_ms: 0,
                    operator_watermarks_ms: vec![],
                },
            )
            .expect("add");
        let c2 = CheckpointDir::open(&root).expect("reopen");
        assert_eq!(c2.query_id(), id);
        assert_eq!(
            c2.start_decision().expect("d"),
            StartDecision::Resume { last_committed: 0 }
        );
        assert_eq!(c2.offsets_of(0).expect("entry"), entry(0));
    }

    #[test]
    fn foreign_and_corrupt_checkpoints_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("data.csv"), "a,b").expect("write");
        let err = CheckpointDir::open(dir.path()).expect_err("foreign dir");
        assert!(err.to_string().contains("not a Sluice checkpoint"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("metadata"), "{\"id\":\"x\"}").expect("write");
        let err = CheckpointDir::open(dir.path()).expect_err("no version line");
        assert!(matches!(err, StateError::Foreign { .. }), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("metadata"), "v1\n{\"id\":").expect("write");
        let err = CheckpointDir::open(dir.path()).expect_err("truncated");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }
}
