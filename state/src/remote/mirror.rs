//! A checkpoint kept in object storage, worked on through a local copy.
//!
//! The local directory is a cache: at start it is emptied and filled from the bucket
//! ([`CheckpointMirror::restore`]), and the engine calls [`CheckpointMirror::sync`] at its
//! durable points (after an offsets entry is written, before the batch runs; after a commit
//! entry). A sync uploads, in this order:
//!
//! 1. every new or changed file but the offsets and commit logs: state schemas, each state
//!    store's committed changelogs, the `metadata` and each source log entry (those two with a
//!    conditional put, `If-None-Match: *`), and each new state snapshot's files;
//! 2. new offsets entries, then new commit entries, each with a conditional put: when the entry
//!    exists with other content another query wrote it, and this one stops (two writers on one
//!    checkpoint cannot both succeed);
//! 3. the `_SLUICE_SNAPSHOT_COMPLETE` marker of each snapshot whose files are all up (a restore
//!    ignores a snapshot without it; a snapshot replaced under the same number loses its marker
//!    before its new files go up);
//! 4. deletions of what the query deleted (purged log entries, old snapshots: marker first); a
//!    changelog only once the bucket holds a complete snapshot at or after its batch (the
//!    snapshot thread deletes a changelog right after it renamed its snapshot into place, which
//!    a walk may not have seen yet).
//!
//! A lease (`_lease`: owner, host, pid, heartbeat) says which process runs on the checkpoint:
//! a second process is refused at start while the holder lives — on the same machine, while
//! its pid exists; elsewhere, while its heartbeat (renewed by its syncs, at most every
//! [`HEARTBEAT`]) is younger than [`LEASE_TIMEOUT`]. A holder killed on another machine is
//! waited out; one that stops cleanly releases it. The conditional puts below guard what the
//! lease cannot (two starts at the same moment, an idle holder elsewhere).
//!
//! The live RocksDB databases (and their lock files) stay local: a restore rebuilds each store
//! from its newest complete snapshot and the changelogs after it.
//!
//! Crash safety: a crash between the local write and the upload of an offsets entry leaves the
//! bucket without it, and the batch is planned again (its sink never saw it); a crash before a
//! commit entry's upload re-runs the batch, which the exactly-once sinks recognise by its id.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use super::location::Location;
use crate::{Result, StateError};

/// The lease object (remote only).
const LEASE: &str = "_lease";
/// How often a syncing holder renews its lease.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a lease of a process on another machine holds without a heartbeat.
pub const LEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Who runs on a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lease {
    owner: String,
    host: String,
    pid: u32,
    heartbeat_ms: i64,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `lease` (found at start) still holds for a process `me_pid` on `me_host` at
/// `now_ms`; `pid_alive` tells whether a pid exists on this machine.
fn lease_holds(
    lease: &Lease,
    me_host: &str,
    me_pid: u32,
    now_ms: i64,
    pid_alive: &dyn Fn(u32) -> bool,
) -> bool {
    if lease.host == me_host {
        lease.pid != me_pid && pid_alive(lease.pid)
    } else {
        now_ms - lease.heartbeat_ms < LEASE_TIMEOUT.as_millis() as i64
    }
}

/// The remote-only marker that closes a snapshot's upload.
const SNAPSHOT_DONE: &str = "_SLUICE_SNAPSHOT_COMPLETE";

/// How a path is mirrored: its kind and, for a snapshot file, its snapshot directory.
type Class = (Kind, Option<String>);

/// A file of the local checkpoint that belongs in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    rel: String,
    len: u64,
    mtime: SystemTime,
}

/// What part of the checkpoint a relative path is (decides order and how it is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Plain files (schemas, changelogs, a source's own files).
    Plain,
    /// Written once (the `metadata`, a source's numbered log entries): a conditional put.
    Entry,
    /// A file of state snapshot `dir` (its `<store>.snapshots/<batch>` path).
    Snapshot,
    /// An offsets entry (conditional put).
    Offsets,
    /// A commit entry (conditional put).
    Commit,
}

/// Whether a file or directory name is a temporary one: an atomic write's `.<name>.tmp`, a
/// snapshot being taken (`.tmp-…`) or deleted (`.del-…`), a changelog not yet committed
/// (`.staged`). Other hidden files (a source's `.cloudfiles-existing-files.json`) are kept.
fn temporary(name: &str) -> bool {
    name.starts_with('.')
        && (name.ends_with(".tmp")
            || name.starts_with(".tmp-")
            || name.starts_with(".del-")
            || name == ".staged")
}

/// The kind of `rel` and, for a snapshot file, its snapshot directory; `None`: not mirrored
/// (a live RocksDB database, a lock, a temporary or hidden file).
fn classify(rel: &str) -> Option<Class> {
    if rel == LEASE {
        return None;
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|p| temporary(p) || p.is_empty()) {
        return None;
    }
    let numbered = |dir: &str| {
        parts.len() == 2 && parts[0] == dir && parts[1].bytes().all(|b| b.is_ascii_digit())
    };
    if numbered("offsets") {
        return Some((Kind::Offsets, None));
    }
    if numbered("commits") {
        return Some((Kind::Commit, None));
    }
    let source_entry =
        parts.len() == 3 && parts[0] == "sources" && parts[2].bytes().all(|b| b.is_ascii_digit());
    if rel == "metadata" || source_entry {
        return Some((Kind::Entry, None));
    }
    if parts[0] != "state" {
        return Some((Kind::Plain, None));
    }
    if let Some(i) = parts.iter().position(|p| p.ends_with(".snapshots")) {
        // <store>.snapshots/<batch>/<file>
        if parts.len() == i + 3 && parts[i + 1].bytes().all(|b| b.is_ascii_digit()) {
            return Some((Kind::Snapshot, Some(parts[..i + 2].join("/"))));
        }
        return None;
    }
    if parts.iter().any(|p| p.ends_with(".changelog"))
        || parts.last().is_some_and(|n| n.ends_with(".schema"))
    {
        return Some((Kind::Plain, None));
    }
    None
}

/// A checkpoint in object storage and its local working copy.
pub struct CheckpointMirror {
    remote: Location,
    local: PathBuf,
    /// What the bucket holds of this checkpoint, as this process knows it: path → (size, mtime)
    /// of the local file uploaded.
    held: Mutex<HashMap<String, (u64, SystemTime)>>,
    /// Snapshot directories whose marker is in the bucket.
    snapshots: Mutex<BTreeSet<String>>,
    /// This process's lease and when it was last renewed (none for a group's task, which
    /// its epoch guards instead).
    lease: Option<Mutex<(Lease, std::time::Instant)>>,
    /// A group's task: the epoch this process holds, checked before every upload.
    fence: Option<super::TaskFence>,
}

impl std::fmt::Debug for CheckpointMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CheckpointMirror({} at {})",
            self.remote.url(),
            self.local.display()
        )
    }
}

fn write_local(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| StateError::io(path, e))
}

fn file_meta(path: &Path) -> Option<(u64, SystemTime)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.len(), md.modified().ok()?))
}

impl CheckpointMirror {
    /// Empties `local` and fills it with the checkpoint at `remote` (nothing when there is
    /// none yet): every file but snapshots whose upload was not completed.
    pub fn restore(remote: Location, local: PathBuf) -> Result<Self> {
        if local.exists() {
            std::fs::remove_dir_all(&local).map_err(|e| StateError::io(&local, e))?;
        }
        std::fs::create_dir_all(&local).map_err(|e| StateError::io(&local, e))?;
        let listed = remote.list_below(None)?;
        let rels: Vec<(String, object_store::path::Path)> = listed
            .into_iter()
            .filter_map(|m| remote.rel_of(&m.location).map(|r| (r, m.location)))
            .collect();
        let complete: BTreeSet<String> = rels
            .iter()
            .filter_map(|(r, _)| r.strip_suffix(&format!("/{SNAPSHOT_DONE}")))
            .map(str::to_string)
            .collect();
        let mut held = HashMap::new();
        for (rel, key) in &rels {
            let Some((kind, snap)) = classify(rel) else {
                continue;
            };
            if kind == Kind::Snapshot && !snap.as_ref().is_some_and(|s| complete.contains(s)) {
                continue;
            }
            let Some(bytes) = remote.get_key(key)? else {
                continue; // deleted since the listing
            };
            let path = local.join(rel);
            write_local(&path, &bytes)?;
            if let Some(m) = file_meta(&path) {
                held.insert(rel.clone(), m);
            }
        }
        tracing::info!(
            "restored checkpoint {} into {} ({} files)",
            remote.url(),
            local.display(),
            held.len()
        );
        let lease = Lease {
            owner: uuid::Uuid::new_v4().to_string(),
            host: hostname(),
            pid: std::process::id(),
            heartbeat_ms: now_ms(),
        };
        Ok(Self {
            remote,
            local,
            held: Mutex::new(held),
            snapshots: Mutex::new(complete),
            lease: Some(Mutex::new((lease, std::time::Instant::now()))),
            fence: None,
        })
    }

    /// [`Self::restore`] for a task of a group: the task's checkpoint, guarded by the epoch
    /// `fence` holds instead of a lease (the new owner of a task must start while its old
    /// owner, paused, still lives); every sync first checks that no newer epoch exists.
    pub fn restore_task(fence: super::TaskFence, local: PathBuf) -> Result<Self> {
        let mut m = Self::restore(fence.checkpoint().clone(), local)?;
        m.lease = None;
        fence.check()?;
        m.fence = Some(fence);
        Ok(m)
    }

    /// Takes the checkpoint's lease, or refuses when another live process holds it (see the
    /// module's notes). Called at start, before anything is written.
    pub fn take_lease(&self) -> Result<()> {
        if self.lease.is_none() {
            return Ok(());
        }
        if let Some(bytes) = self.remote.get(LEASE)? {
            if let Ok(l) = serde_json::from_slice::<Lease>(&bytes) {
                let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
                if lease_holds(&l, &hostname(), std::process::id(), now_ms(), &alive) {
                    return Err(StateError::InUse {
                        url: self.remote.url(),
                        holder: if l.host == hostname() {
                            format!("process {} on this machine", l.pid)
                        } else {
                            format!(
                                "process {} on {} (heartbeat {} s ago)",
                                l.pid,
                                l.host,
                                (now_ms() - l.heartbeat_ms) / 1000
                            )
                        },
                    });
                }
            }
        }
        self.renew_lease(true)
    }

    /// Writes the lease again when `now` or a heartbeat is due.
    fn renew_lease(&self, now: bool) -> Result<()> {
        let Some(lease) = &self.lease else {
            return Ok(());
        };
        let mut g = lease.lock().map_err(|_| poisoned())?;
        if !now && g.1.elapsed() < HEARTBEAT {
            return Ok(());
        }
        g.0.heartbeat_ms = now_ms();
        let bytes = serde_json::to_vec(&g.0).map_err(|e| StateError::Bug {
            dir: self.local.clone(),
            reason: format!("lease to JSON: {e}"),
        })?;
        self.remote.put(LEASE, bytes.into())?;
        g.1 = std::time::Instant::now();
        Ok(())
    }

    /// The local working copy.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// The checkpoint's URL.
    pub fn url(&self) -> String {
        self.remote.url()
    }

    /// The files below `dir` that belong in the bucket. A file or directory that vanishes
    /// while walking is skipped (the next sync sees what replaced it); any other error stops
    /// the sync, which then deletes nothing.
    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        out: &mut Vec<(Entry, Kind, Option<String>)>,
    ) -> Result<()> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(StateError::io(dir, e)),
        };
        for e in rd {
            let e = e.map_err(|err| StateError::io(dir, err))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if temporary(&name) {
                continue;
            }
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = match e.file_type() {
                Ok(ft) => ft,
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(StateError::io(e.path(), err)),
            };
            if ft.is_dir() {
                self.walk(&e.path(), &r, out)?;
            } else if let Some((kind, snap)) = classify(&r) {
                match std::fs::metadata(e.path()).and_then(|m| Ok((m.len(), m.modified()?))) {
                    Ok((len, mtime)) => out.push((Entry { rel: r, len, mtime }, kind, snap)),
                    Err(err) if gone(&err) => {}
                    Err(err) => return Err(StateError::io(e.path(), err)),
                }
            }
        }
        Ok(())
    }

    /// Uploads what changed locally since the last sync (see the module's notes for the
    /// order). An error leaves the bucket consistent: the next sync (or a restart) goes on.
    pub fn sync(&self) -> Result<()> {
        if let Some(f) = &self.fence {
            f.check()?;
        }
        self.renew_lease(false)?;
        let mut found = Vec::new();
        self.walk(&self.local, "", &mut found)?;
        found.sort_by(|a, b| (a.1, a.0.rel.len(), &a.0.rel).cmp(&(b.1, b.0.rel.len(), &b.0.rel)));
        let mut held = self.held.lock().map_err(|_| poisoned())?;
        let mut marked = self.snapshots.lock().map_err(|_| poisoned())?;
        let seen: BTreeSet<String> = found.iter().map(|(e, _, _)| e.rel.clone()).collect();
        // snapshots with a file that vanished before it was read: no marker this time
        let mut incomplete = BTreeSet::new();
        for (e, kind, snap) in &found {
            if held.get(&e.rel) == Some(&(e.len, e.mtime)) {
                continue;
            }
            if let Some(s) = snap {
                if marked.remove(s) {
                    // replaced under the same number: unmarked before its new files go up
                    self.remote.delete(&format!("{s}/{SNAPSHOT_DONE}"))?;
                }
            }
            let path = self.local.join(&e.rel);
            let bytes = match std::fs::read(&path) {
                Ok(b) => Bytes::from(b),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    incomplete.extend(snap.clone());
                    continue;
                }
                Err(err) => return Err(StateError::io(&path, err)),
            };
            match kind {
                Kind::Offsets | Kind::Commit | Kind::Entry => self
                    .put_entry(&e.rel, bytes)
                    .map_err(|err| self.task_conflict(err))?,
                Kind::Plain | Kind::Snapshot => self.remote.put(&e.rel, bytes)?,
            }
            held.insert(e.rel.clone(), (e.len, e.mtime));
        }
        // a snapshot's marker goes up once all its files are
        let local_snapshots: BTreeSet<String> =
            found.iter().filter_map(|(_, _, s)| s.clone()).collect();
        for s in local_snapshots.difference(&incomplete) {
            if !marked.contains(s) {
                self.remote
                    .put(&format!("{s}/{SNAPSHOT_DONE}"), Bytes::from_static(b"v1\n"))?;
                marked.insert(s.clone());
            }
        }
        // deletions: snapshot markers first, then files (a changelog once a complete snapshot
        // in the bucket covers it)
        let gone_snapshots: Vec<String> = marked.difference(&local_snapshots).cloned().collect();
        for s in gone_snapshots {
            self.remote.delete(&format!("{s}/{SNAPSHOT_DONE}"))?;
            marked.remove(&s);
        }
        let gone: Vec<String> = held
            .keys()
            .filter(|r| !seen.contains(*r))
            .filter(|r| covered_changelog(r, &marked).unwrap_or(true))
            .cloned()
            .collect();
        for rel in gone {
            self.remote.delete(&rel)?;
            held.remove(&rel);
        }
        Ok(())
    }

    /// A task's entry written by another process: the task was taken over (a newer epoch), or
    /// two processes started it at once (the coordinator gave it to both): an external error,
    /// after which the task is taken again from what the bucket holds.
    fn task_conflict(&self, err: StateError) -> StateError {
        let (Some(fence), StateError::ConcurrentWriter { url, entry }) = (&self.fence, &err) else {
            return err;
        };
        if let Err(fenced) = fence.check() {
            return fenced;
        }
        StateError::Remote {
            url: url.clone(),
            reason: format!(
                "entry {entry} of task {} was written by another process that started the task \
                 at the same time; the task starts again from the checkpoint",
                fence.task
            ),
        }
    }

    /// Creates log entry `rel` in the bucket; when it exists, it must hold the same bytes (this
    /// query's own earlier upload), else another query wrote it.
    fn put_entry(&self, rel: &str, bytes: Bytes) -> Result<()> {
        if self.remote.put_new(rel, bytes.clone())? {
            return Ok(());
        }
        match self.remote.get(rel)? {
            Some(there) if there == bytes => Ok(()),
            _ => Err(StateError::ConcurrentWriter {
                url: self.remote.url(),
                entry: rel.to_string(),
            }),
        }
    }
}

impl Drop for CheckpointMirror {
    /// A clean stop releases the lease (when it is still this process's).
    fn drop(&mut self) {
        if self.fence.is_some() {
            // a task's copy (one per epoch): its query has ended
            let _ = std::fs::remove_dir_all(&self.local);
        }
        let Some(lease) = &self.lease else { return };
        let Ok(g) = lease.lock() else { return };
        if let Ok(Some(bytes)) = self.remote.get(LEASE) {
            if serde_json::from_slice::<Lease>(&bytes).is_ok_and(|l| l.owner == g.0.owner) {
                let _ = self.remote.delete(LEASE);
            }
        }
    }
}

/// For a changelog `<store>.changelog/<n>`: whether a marked snapshot `<store>.snapshots/<m>`
/// with m >= n is in the bucket (`None`: not a changelog).
fn covered_changelog(rel: &str, marked: &BTreeSet<String>) -> Option<bool> {
    let (store, n) = rel.rsplit_once(".changelog/")?;
    let n: u64 = n.parse().ok()?;
    let prefix = format!("{store}.snapshots/");
    Some(marked.iter().any(|s| {
        s.strip_prefix(&prefix)
            .and_then(|m| m.parse::<u64>().ok())
            .is_some_and(|m| m >= n)
    }))
}

fn poisoned() -> StateError {
    StateError::Bug {
        dir: PathBuf::new(),
        reason: "the checkpoint mirror's lock was poisoned by a panic".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_while_its_holder_lives() {
        let lease = |host: &str, pid: u32, heartbeat_ms: i64| Lease {
            owner: "o".into(),
            host: host.into(),
            pid,
            heartbeat_ms,
        };
        let alive = |pid: u32| pid == 7;
        let timeout = LEASE_TIMEOUT.as_millis() as i64;
        // (lease, holds for pid 9 on host "a" at time 1_000_000)
        let table = [
            (lease("a", 7, 0), true),                       // alive here, however old
            (lease("a", 8, 1_000_000), false),              // dead here
            (lease("a", 9, 1_000_000), false),              // this very process
            (lease("b", 7, 1_000_000 - timeout + 1), true), // fresh elsewhere
            (lease("b", 7, 1_000_000 - timeout), false),    // stale elsewhere
        ];
        for (l, want) in table {
            assert_eq!(lease_holds(&l, "a", 9, 1_000_000, &alive), want, "{l:?}");
        }
    }

    #[test]
    fn a_changelog_goes_once_a_snapshot_in_the_bucket_covers_it() {
        let marked: BTreeSet<String> = ["state/0/1.snapshots/10", "state/0/2.snapshots/4"]
            .into_iter()
            .map(str::to_string)
            .collect();
        // (path, covered)
        let table = [
            ("state/0/1.changelog/9", Some(true)),
            ("state/0/1.changelog/10", Some(true)),
            ("state/0/1.changelog/11", Some(false)),
            ("state/0/2.changelog/9", Some(false)),
            ("state/1/1.changelog/3", Some(false)),
            ("offsets/3", None),
        ];
        for (rel, want) in table {
            assert_eq!(covered_changelog(rel, &marked), want, "{rel}");
        }
    }

    #[test]
    fn what_is_mirrored_and_how() {
        let s = |x: &str| Some(x.to_string());
        let table: &[(&str, Option<Class>)] = &[
            ("metadata", Some((Kind::Entry, None))),
            ("offsets/12", Some((Kind::Offsets, None))),
            ("commits/0", Some((Kind::Commit, None))),
            ("offsets/.12.tmp", None),
            (
                "sources/0/.cloudfiles-existing-files.json",
                Some((Kind::Plain, None)),
            ),
            ("sources/0/3", Some((Kind::Entry, None))),
            ("sources/0/initial-offsets.json", Some((Kind::Plain, None))),
            ("state/0.schema", Some((Kind::Plain, None))),
            ("state/0/1.changelog/7", Some((Kind::Plain, None))),
            ("state/0/1.changelog/.staged", None),
            (
                "state/0/1.snapshots/10/000012.sst",
                Some((Kind::Snapshot, s("state/0/1.snapshots/10"))),
            ),
            ("state/0/1.snapshots/.tmp-x/CURRENT", None),
            ("state/0/1/000009.sst", None),
            ("state/0/1/LOCK", None),
            ("state/0/1.lock", None),
            ("state/0/1.restore/CURRENT", None),
        ];
        for (rel, want) in table {
            assert_eq!(&classify(rel), want, "{rel}");
        }
    }
}
