//! The RocksDB state store, with changelog checkpointing as Spark's RocksDB store does it.
//!
//! One DB per operator, written without RocksDB's WAL. A batch's changes are staged when the
//! batch computes them: sorted and encoded in a `WriteBatch`, whose bytes a writer thread writes
//! to `<dir>.changelog/.staged`, synced (one synced write per micro-batch), while the batch goes
//! on to its output and sink. The commit (after the sink) applies the write batch, with the batch
//! id, to the memtable on one thread while on another it waits for that write and renames the
//! file to `<dir>.changelog/<batch>` (the durable point): no WAL, no memtable flush per batch. Memtables reach disk when RocksDB
//! flushes them (all column families together: atomic flush, so the batch id in the SSTs says
//! which batch they hold); on open, the changelogs after that batch are applied again.
//!
//! Every `snapshot_interval` batches a snapshot (a RocksDB checkpoint: the memtables flushed,
//! hard links to the immutable SST files) is taken into `<dir>.snapshots/<batch>/` on a
//! background thread, while the next batches run; after it the changelogs it covers are
//! deleted. Snapshots older than `min_batches_to_retain` batches are deleted (the newest of them
//! kept, so every retained batch can be rebuilt from a snapshot and the offsets log).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::DB;

use crate::store::{CommitStats, ScanFn, StateChanges, StateStore, StateStoreProvider};
use crate::{Result, StateError};

mod files;
#[cfg(test)]
mod tests;

pub use files::snapshots_to_delete;
use files::*;
pub(crate) use files::{
    changelogs_to_apply, list_changelogs, meta_of, parse_changelog, rocks_err, side_dir,
};

pub(crate) const META_CF: &str = "sluice_meta";
pub(crate) const DATA_CF: &str = "default";
pub(crate) const BATCH_KEY: &[u8] = b"batch";
/// Without snapshots, the memtables are flushed (and the changelogs they cover deleted) every
/// this many batches.
pub(crate) const FLUSH_EVERY_WITHOUT_SNAPSHOTS: u64 = 100;
pub(crate) const ROWS_KEY: &[u8] = b"rows";

/// Snapshot and retention settings of a store (Spark's `minDeltasForSnapshot` and
/// `minBatchesToRetain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// A snapshot every this many batches (0: never).
    pub snapshot_interval: u64,
    /// Batches whose state must stay recoverable (from a snapshot plus replay).
    pub min_batches_to_retain: u64,
    /// How many stores of the query share one store's memory budget (its partitions): each
    /// gets that share of the write buffers.
    pub memory_share: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            snapshot_interval: 10,
            min_batches_to_retain: 100,
            memory_share: 1,
        }
    }
}

/// The write-buffer (memtable) size of one store, of a budget of 64 MiB per query's operator.
pub(crate) fn write_buffer_bytes(memory_share: u32) -> usize {
    ((64usize << 20) / memory_share.max(1) as usize).max(8 << 20)
}

/// Opens RocksDB state stores.
#[derive(Debug, Default, Clone, Copy)]
pub struct RocksStateStoreProvider;

impl StateStoreProvider for RocksStateStoreProvider {
    fn open(&self, dir: &Path, options: &StoreOptions) -> Result<Box<dyn StateStore>> {
        Ok(Box::new(RocksStateStore::open_with(dir, *options)?))
    }
}

/// A RocksDB-backed [`StateStore`].
pub struct RocksStateStore {
    db: Option<Arc<DB>>,
    dir: PathBuf,
    snapshots_dir: PathBuf,
    options: StoreOptions,
    batch: Option<u64>,
    rows: u64,
    /// The snapshot being written in the background, if any.
    pending: Option<JoinHandle<Result<()>>>,
    /// Signalled when the pending snapshot's RocksDB checkpoint exists (the SST files linked):
    /// the next commit waits for it, so the snapshot holds exactly the batch it was started
    /// after — every partition store of a query has its snapshots at the same batches.
    snapshot_taken: Option<std::sync::mpsc::Receiver<()>>,
    /// The staged changes of the batch being processed.
    staged: Option<Staged>,
    /// `<dir>.changelog`: the changes of each committed batch the SSTs may not hold yet.
    changelog_dir: PathBuf,
    /// The lock on `<dir>.lock`, held while the store is open (dropped last).
    _lock: std::fs::File,
}

/// Locks `<dir>.lock`: a second opener (another process, or a CLI command on a running query's
/// checkpoint) is refused before it touches anything (cleaning up leftovers would delete the
/// running store's staged changelog).
fn lock_store(dir: &Path) -> Result<std::fs::File> {
    let path = side_dir(dir, "lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StateError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Inconsistent {
            dir: dir.to_path_buf(),
            reason: "the state store is open elsewhere (a query running on this checkpoint?); \
                     stop it first"
                .into(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StateError::io(&path, e)),
    }
}

/// First bytes of a changelog file (then the rows delta and the length of the write batch).
impl RocksStateStore {
    /// Opens (creating if missing) the DB in `dir` with the default snapshot settings.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens (creating if missing) the DB in `dir`.
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<Self> {
        let lock = lock_store(dir)?;
        let snapshots_dir = side_dir(dir, "snapshots");
        let changelog_dir = side_dir(dir, "changelog");
        clean_leftovers(dir, &snapshots_dir)?;
        crate::atomic::ensure_dir(&changelog_dir)?;
        if !dir.exists() {
            // a working copy restored from object storage (or a deleted live DB): start from
            // the newest snapshot; the changelogs after it are applied below
            if let Some(newest) = list_snapshots(&snapshots_dir)?.last() {
                let fresh = side_dir(dir, "restore");
                copy_snapshot(&snapshots_dir.join(newest.to_string()), &fresh)?;
                std::fs::rename(&fresh, dir).map_err(|e| StateError::io(dir, e))?;
            }
        }
        let db = open_db(dir, &options)?;
        let (batch, rows) = replay_changelogs(&db, dir, &changelog_dir)?;
        Ok(Self {
            db: Some(Arc::new(db)),
            snapshots_dir,
            dir: dir.to_path_buf(),
            options,
            batch,
            rows,
            pending: None,
            snapshot_taken: None,
            staged: None,
            changelog_dir,
            _lock: lock,
        })
    }

    fn db(&self) -> Result<&DB> {
        self.db.as_deref().ok_or_else(|| StateError::Inconsistent {
            dir: self.dir.clone(),
            reason: "the state store was closed after a failed stage, commit or restore".into(),
        })
    }

    /// Starts a snapshot (or, without snapshots, a flush) on a background thread, after the
    /// previous one finished (every interval is taken, so that the stores of a query's
    /// partitions have the same snapshots). The next commit waits only until the RocksDB
    /// checkpoint exists; naming it, retention and deleting the changelogs of the batches up to
    /// `batch` (the DB's files hold them) go on in the background.
    fn start_background(&mut self, db: Arc<DB>, batch: u64, snapshot: bool) {
        if let Err(e) = self.finish_snapshot() {
            tracing::warn!(
                "state snapshot in {} failed: {e}",
                self.snapshots_dir.display()
            );
        }
        let dir = self.snapshots_dir.clone();
        let changelog_dir = self.changelog_dir.clone();
        let retain = self.options.min_batches_to_retain;
        let live = self.dir.clone();
        let (taken, gate) = std::sync::mpsc::channel();
        self.snapshot_taken = snapshot.then_some(gate);
        match std::thread::Builder::new()
            .name("sluice-state-snapshot".into())
            .spawn(move || {
                if snapshot {
                    take_snapshot(&db, &dir, retain, taken)?;
                } else {
                    flush_all(&db).map_err(|e| rocks_err(&live, e))?;
                }
                delete_changelogs(&changelog_dir, Some(batch))
            }) {
            Ok(h) => self.pending = Some(h),
            Err(e) => tracing::warn!("cannot start a state snapshot: {e}"),
        }
    }

    /// Encodes `changes` and starts writing them to `<dir>.changelog/.staged` (synced) on a
    /// writer thread, after the previous staged write (if any) is finished and discarded: both
    /// write the same file.
    fn start_staging(&mut self, changes: StateChanges) -> Result<Staged> {
        self.discard_staged();
        let StateChanges {
            puts,
            deletes,
            rows_delta,
        } = changes;
        let (n_puts, n_deletes) = (puts.len() as u64, deletes.len() as u64);
        let path = self.changelog_dir.join(".staged");
        let batch = encode_changes(puts, deletes);
        // a copy for the writer (the batch's size again, until it is written): the commit
        // inserts the write batch while the file may still be syncing
        let bytes = changelog_bytes(rows_delta, &batch);
        let writer = std::thread::Builder::new()
            .name("sluice-state-changelog".into())
            .spawn(move || write_synced(&path, &bytes))
            .map_err(|e| StateError::io(&self.changelog_dir, e))?;
        Ok(Staged {
            batch,
            writer,
            rows_delta,
            puts: n_puts,
            deletes: n_deletes,
        })
    }

    /// Waits for a staged write being replaced or abandoned, ignoring its outcome.
    fn discard_staged(&mut self) {
        if let Some(s) = self.staged.take() {
            if let Err(e) = wait_for(s.writer, &self.dir) {
                tracing::debug!("discarded staged state changes: {e}");
            }
        }
    }

    /// Waits for the background snapshot, if one is being written.
    fn finish_snapshot(&mut self) -> Result<()> {
        match self.pending.take() {
            None => Ok(()),
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(StateError::Inconsistent {
                    dir: self.snapshots_dir.clone(),
                    reason: "the snapshot thread panicked".into(),
                })
            }),
        }
    }

    fn memory_used(&self) -> u64 {
        let Ok(db) = self.db() else { return 0 };
        let prop = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop("rocksdb.cur-size-all-mem-tables") + prop("rocksdb.estimate-table-readers-mem")
    }

    /// Where the snapshots are.
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots_dir
    }
}

impl Drop for RocksStateStore {
    fn drop(&mut self) {
        self.discard_staged();
        if let Err(e) = self.finish_snapshot() {
            // the snapshot is an optimisation: the live DB is intact
            tracing::warn!(
                "state snapshot in {} failed: {e}",
                self.snapshots_dir.display()
            );
        }
    }
}

impl StateStore for RocksStateStore {
    fn committed_batch(&self) -> Option<u64> {
        self.batch
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let db = self.db()?;
        let cf = db.cf_handle(DATA_CF).ok_or_else(|| StateError::Corrupt {
            path: self.dir.clone(),
            reason: "state store has no data column family".into(),
        })?;
        // RocksDB's batched lookup, keys in order (it need not sort them again)
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by(|a, b| keys[*a].cmp(&keys[*b]));
        let found = db.batched_multi_get_cf(&cf, order.iter().map(|i| &keys[*i]), true);
        let mut out: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        for (i, r) in order.into_iter().zip(found) {
            out[i] = r
                .map_err(|e| rocks_err(&self.dir, e))?
                .map(|v| v.as_ref().to_vec());
        }
        Ok(out)
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db()?.iterator(mode) {
            let (k, v) = item.map_err(|e| rocks_err(&self.dir, e))?;
            if to.is_some_and(|t| k.as_ref() >= t) {
                break;
            }
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn stage(&mut self, changes: StateChanges) -> Result<()> {
        self.db()?;
        match self.start_staging(changes) {
            Ok(staged) => {
                self.staged = Some(staged);
                Ok(())
            }
            Err(e) => {
                // the batch's changes are gone: a later commit must not record it without them
                self.db = None;
                Err(e)
            }
        }
    }

    fn commit(&mut self, batch_id: u64) -> Result<CommitStats> {
        let t = Instant::now();
        if let Some(gate) = self.snapshot_taken.take() {
            // the snapshot started after the previous batch must hold exactly that batch
            // (an error drops the sender: then there is no snapshot to wait for)
            let _ = gate.recv();
        }
        let db = Arc::clone(self.db.as_ref().ok_or_else(|| StateError::Inconsistent {
            dir: self.dir.clone(),
            reason: "the state store was closed after a failed stage, commit or restore".into(),
        })?);
        let meta = db.cf_handle(META_CF).ok_or_else(|| StateError::Corrupt {
            path: self.dir.clone(),
            reason: "state store has no metadata column family".into(),
        })?;
        let staged = match self.staged.take() {
            Some(s) => s,
            // a batch that changed nothing still records its id
            None => self.start_staging(StateChanges::default())?,
        };
        let Staged {
            batch: mut wb,
            writer,
            rows_delta,
            puts,
            deletes,
        } = staged;
        let rows = (self.rows as i64 + rows_delta).max(0) as u64;
        wb.put_cf(&meta, BATCH_KEY, batch_id.to_be_bytes());
        wb.put_cf(&meta, ROWS_KEY, rows.to_be_bytes());
        // Two things at once: on this thread the durable point (the staged changelog's synced
        // write finished, then renamed to the batch's), on another the memtable insert. Applying
        // before the changelog is durable is safe: commit runs after the sink has the batch, so
        // a crash that leaves the DB's files at this batch (a flush or snapshot took the
        // memtable) without its changelog leaves a state holding the batch being re-run, which
        // recovery accepts as is.
        let (dir, changelog_dir) = (&self.dir, &self.changelog_dir);
        let make_durable = |writer| -> Result<()> {
            wait_for(writer, dir)?;
            let from = changelog_dir.join(".staged");
            let to = changelog_dir.join(batch_id.to_string());
            std::fs::rename(&from, &to).map_err(|e| StateError::io(&to, e))?;
            crate::atomic::sync_dir(changelog_dir)
        };
        let db_ref: &DB = &db;
        let outcome = std::thread::scope(|s| {
            let insert = std::thread::Builder::new()
                .name("sluice-state-commit".into())
                .spawn_scoped(s, move || db_ref.write_opt(wb, &write_options()));
            match insert {
                Ok(h) => {
                    let durable = make_durable(writer);
                    let applied = match h.join() {
                        Ok(r) => r.map_err(|e| rocks_err(dir, e)),
                        Err(_) => Err(StateError::Inconsistent {
                            dir: dir.clone(),
                            reason: "the memtable insert thread panicked".into(),
                        }),
                    };
                    durable.and(applied)
                }
                Err(e) => {
                    // nothing applied; the staged write is left to finish
                    let _ = wait_for(writer, dir);
                    Err(StateError::io(dir, e))
                }
            }
        });
        if let Err(e) = outcome {
            // the memtable and the changelogs may disagree: this store is done (a new one
            // opened on the directory replays what is durable)
            self.db = None;
            return Err(e);
        }
        self.batch = Some(batch_id);
        self.rows = rows;
        let commit_ms = t.elapsed().as_millis() as u64;
        let every = self.options.snapshot_interval;
        if every > 1 && (batch_id + 1).is_multiple_of(every) {
            // the next commit snapshots and waits for its checkpoint: flush most of the
            // memtable now, in the background, so that wait is short
            if let Err(e) = start_flush(&db) {
                tracing::debug!("early flush before a snapshot failed: {e}");
            }
        }
        if every > 0 && batch_id.is_multiple_of(every) {
            self.start_background(db, batch_id, true);
        } else if every == 0 && batch_id.is_multiple_of(FLUSH_EVERY_WITHOUT_SNAPSHOTS) {
            self.start_background(db, batch_id, false);
        }
        Ok(CommitStats {
            rows_total: rows,
            rows_updated: puts,
            rows_removed: deletes,
            commit_ms,
            memory_used_bytes: self.memory_used(),
        })
    }

    fn rows_total(&self) -> u64 {
        self.rows
    }

    fn snapshot(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(self.db()?)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| rocks_err(dir, e))
    }

    fn snapshots(&self) -> Result<Vec<u64>> {
        list_snapshots(&self.snapshots_dir)
    }

    fn restore(&mut self, snapshot: Option<u64>) -> Result<()> {
        if let Err(e) = self.finish_snapshot() {
            tracing::warn!(
                "state snapshot in {} failed: {e}",
                self.snapshots_dir.display()
            );
        }
        // the changelogs belong to the state being replaced (those after the snapshot are run
        // again from the offsets log)
        self.discard_staged();
        delete_changelogs(&self.changelog_dir, None)?;
        // later snapshots belong to batches that will be run again
        for later in list_snapshots(&self.snapshots_dir)? {
            if snapshot.is_none_or(|b| later > b) {
                remove_snapshot(&self.snapshots_dir, later)?;
            }
        }
        // build the restored DB beside the live one and check it before swapping: a crash at
        // any point leaves either the old live DB or none (recovery then rebuilds it again)
        let fresh = side_dir(&self.dir, "restore");
        if fresh.exists() {
            std::fs::remove_dir_all(&fresh).map_err(|e| StateError::io(&fresh, e))?;
        }
        if let Some(b) = snapshot {
            copy_snapshot(&self.snapshots_dir.join(b.to_string()), &fresh)?;
        }
        {
            let db = open_db(&fresh, &self.options)?;
            let (batch, _) = meta_of(&db, &fresh)?;
            if batch != snapshot {
                return Err(StateError::Corrupt {
                    path: self.snapshots_dir.join(snapshot.unwrap_or(0).to_string()),
                    reason: format!("the snapshot holds batch {batch:?}, not {snapshot:?}"),
                });
            }
            db.flush_wal(true).map_err(|e| rocks_err(&fresh, e))?;
        }
        self.db = None; // close the live DB
        let old = side_dir(&self.dir, "old");
        if self.dir.exists() {
            std::fs::rename(&self.dir, &old).map_err(|e| StateError::io(&self.dir, e))?;
        }
        std::fs::rename(&fresh, &self.dir).map_err(|e| StateError::io(&self.dir, e))?;
        if let Some(parent) = self.dir.parent() {
            crate::atomic::sync_dir(parent)?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| StateError::io(&old, e))?;
        }
        let db = open_db(&self.dir, &self.options)?;
        let (batch, rows) = meta_of(&db, &self.dir)?;
        self.db = Some(Arc::new(db));
        self.batch = batch;
        self.rows = rows;
        Ok(())
    }
}
