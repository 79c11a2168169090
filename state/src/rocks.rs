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

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::store::{CommitStats, ScanFn, StateChanges, StateStore, StateStoreProvider};
use crate::{ErrorKind, Result, StateError};

pub(crate) const META_CF: &str = "sluice_meta";
pub(crate) const DATA_CF: &str = "default";
const BATCH_KEY: &[u8] = b"batch";
/// Without snapshots, the memtables are flushed (and the changelogs they cover deleted) every
/// this many batches.
const FLUSH_EVERY_WITHOUT_SNAPSHOTS: u64 = 100;
const ROWS_KEY: &[u8] = b"rows";

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
fn write_buffer_bytes(memory_share: u32) -> usize {
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
const CHANGELOG_MAGIC: &[u8; 8] = b"SLCLOG01";

/// A changelog file's bytes: the magic, the rows delta, the write batch's length and bytes.
fn changelog_bytes(rows_delta: i64, wb: &WriteBatch) -> Vec<u8> {
    let data = wb.data();
    let mut out = Vec::with_capacity(24 + data.len());
    out.extend_from_slice(CHANGELOG_MAGIC);
    out.extend_from_slice(&rows_delta.to_be_bytes());
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Parses a changelog file into (rows delta, write batch).
pub(crate) fn parse_changelog(path: &Path, bytes: &[u8]) -> Result<(i64, WriteBatch)> {
    let corrupt = |reason: &str| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < 24 || &bytes[..8] != CHANGELOG_MAGIC {
        return Err(corrupt("not a Sluice state changelog"));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[8..16]);
    let delta = i64::from_be_bytes(n);
    n.copy_from_slice(&bytes[16..24]);
    let len = u64::from_be_bytes(n) as usize;
    if bytes.len() != 24 + len {
        return Err(corrupt("truncated changelog"));
    }
    Ok((delta, WriteBatch::from_data(&bytes[24..])))
}

/// The committed changelogs in `dir`, ascending.
pub(crate) fn list_changelogs(dir: &Path) -> Result<Vec<u64>> {
    list_snapshots(dir)
}

/// Deletes the changelogs of batches `<= upto` (all with `None`), newest first: a deletion cut
/// short leaves a contiguous run of the oldest ones.
fn delete_changelogs(dir: &Path, upto: Option<u64>) -> Result<()> {
    for b in list_changelogs(dir)?.into_iter().rev() {
        if upto.is_none_or(|u| b <= u) {
            let p = dir.join(b.to_string());
            std::fs::remove_file(&p).map_err(|e| StateError::io(&p, e))?;
        }
    }
    crate::atomic::sync_dir(dir)
}

/// Flushes the memtables of both column families together (the batch id with its data).
fn flush_all(db: &DB) -> std::result::Result<(), rocksdb::Error> {
    let cfs: Vec<_> = [DATA_CF, META_CF]
        .iter()
        .filter_map(|n| db.cf_handle(n))
        .collect();
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
}

/// Writes without RocksDB's WAL: durability comes from the changelog.
fn write_options() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    wo
}

/// A batch's changes: the write batch its commit applies, and the thread writing its bytes to
/// the staged changelog.
struct Staged {
    batch: WriteBatch,
    /// Writes the changelog file's bytes to `.staged`, synced.
    writer: JoinHandle<Result<()>>,
    rows_delta: i64,
    puts: u64,
    deletes: u64,
}

/// Waits for a staged changelog's synced write.
fn wait_for(writer: JoinHandle<Result<()>>, dir: &Path) -> Result<()> {
    writer.join().unwrap_or_else(|_| {
        Err(StateError::Inconsistent {
            dir: dir.to_path_buf(),
            reason: "the changelog writer thread panicked".into(),
        })
    })
}

/// Sorts `puts` (the memtable takes sorted keys faster) and encodes the changes in a write
/// batch.
fn encode_changes(mut puts: Vec<(Vec<u8>, Vec<u8>)>, deletes: Vec<Vec<u8>>) -> WriteBatch {
    puts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let bytes: usize = puts
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum::<usize>()
        + deletes.iter().map(|k| k.len() + 4).sum::<usize>()
        + 64;
    let mut batch = WriteBatch::with_capacity_bytes(bytes);
    for (k, v) in &puts {
        batch.put(k, v);
    }
    for k in &deletes {
        batch.delete(k);
    }
    batch
}

/// Writes a changelog file's bytes to `path`, synced.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| StateError::io(path, e))?;
    std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_data())
        .map_err(|e| StateError::io(path, e))
}

/// A RocksDB error, classified by its cause: a corrupt or missing database needs the user
/// (restore the state, or a new checkpoint location), never a retry; an invalid argument is a
/// bug of Sluice's; I/O, busy and timed-out errors are external and may pass.
pub(crate) fn rocks_err(dir: &Path, e: rocksdb::Error) -> StateError {
    match rocks_kind(e.kind()) {
        ErrorKind::User => StateError::Corrupt {
            path: dir.to_path_buf(),
            reason: format!(
                "RocksDB: {}; restore the state directory from a copy, or remove it to \
                 rebuild it from the snapshots and logs (sluice checkpoint inspect shows them)",
                e.into_string()
            ),
        },
        ErrorKind::Bug => StateError::Bug {
            dir: dir.to_path_buf(),
            reason: format!("RocksDB: {}", e.into_string()),
        },
        ErrorKind::External => StateError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(e.into_string()),
        },
    }
}

/// Who must act on a RocksDB error of this kind. Pure; table-tested.
fn rocks_kind(kind: rocksdb::ErrorKind) -> ErrorKind {
    use rocksdb::ErrorKind as K;
    match kind {
        K::Corruption | K::NotFound => ErrorKind::User,
        K::InvalidArgument | K::NotSupported | K::MergeInProgress | K::ColumnFamilyDropped => {
            ErrorKind::Bug
        }
        _ => ErrorKind::External,
    }
}

fn u64_of(dir: &Path, v: Option<Vec<u8>>) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(b) => {
            let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| StateError::Corrupt {
                path: dir.to_path_buf(),
                reason: "state store metadata is not a u64".into(),
            })?;
            Ok(Some(u64::from_be_bytes(arr)))
        }
    }
}

fn open_db(dir: &Path, options: &StoreOptions) -> Result<DB> {
    std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_write_buffer_size(write_buffer_bytes(options.memory_share));
    opts.set_max_write_buffer_number(4);
    opts.set_max_open_files(256);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // one writer at a time (the commit's insert thread): the memtable's single-writer path
    opts.set_allow_concurrent_memtable_write(false);
    // without a WAL the column families are flushed together (the batch id with its data)
    opts.set_atomic_flush(true);
    // snapshots flush small memtables into L0: let compaction catch up before slowing writes
    opts.set_level_zero_slowdown_writes_trigger(40);
    opts.set_level_zero_stop_writes_trigger(64);
    let cfs = vec![
        ColumnFamilyDescriptor::new(DATA_CF, opts.clone()),
        ColumnFamilyDescriptor::new(META_CF, Options::default()),
    ];
    DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| rocks_err(dir, e))
}

pub(crate) fn meta_of(db: &DB, dir: &Path) -> Result<(Option<u64>, u64)> {
    let meta = db.cf_handle(META_CF).ok_or_else(|| StateError::Corrupt {
        path: dir.to_path_buf(),
        reason: "state store has no metadata column family".into(),
    })?;
    let batch = u64_of(
        dir,
        db.get_cf(&meta, BATCH_KEY).map_err(|e| rocks_err(dir, e))?,
    )?;
    let rows = u64_of(
        dir,
        db.get_cf(&meta, ROWS_KEY).map_err(|e| rocks_err(dir, e))?,
    )?
    .unwrap_or(0);
    Ok((batch, rows))
}

/// The batches of the snapshots in `dir`, ascending (temporary ones of an interrupted snapshot
/// are ignored).
fn list_snapshots(dir: &Path) -> Result<Vec<u64>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| StateError::io(dir, e))?;
        if let Ok(b) = e.file_name().to_string_lossy().parse::<u64>() {
            out.push(b);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Snapshots to delete after a snapshot at `latest`: those at or before the start of the
/// retained window `[latest + 1 − min_batches_to_retain, latest]`, except the newest of them (the
/// base from which the oldest retained batches are rebuilt).
pub fn snapshots_to_delete(snapshots: &[u64], latest: u64, min_batches_to_retain: u64) -> Vec<u64> {
    let keep_from = (latest + 1).saturating_sub(min_batches_to_retain.max(1));
    let older: Vec<u64> = snapshots
        .iter()
        .copied()
        .filter(|s| *s <= keep_from)
        .collect();
    match older.split_last() {
        Some((_base, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

/// Takes a snapshot of `db` into `dir/<batch>`, `batch` being the one it holds (read from the
/// snapshot itself: commits go on while it is taken), then deletes the snapshots no longer
/// needed.
fn take_snapshot(db: &DB, dir: &Path, retain: u64) -> Result<()> {
    crate::atomic::ensure_dir(dir)?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(&tmp))
        .map_err(|e| rocks_err(&tmp, e))?;
    let held = {
        let cfs = [DATA_CF, META_CF];
        let ro = DB::open_cf_for_read_only(&Options::default(), &tmp, cfs, false)
            .map_err(|e| rocks_err(&tmp, e))?;
        meta_of(&ro, &tmp)?.0
    };
    let Some(batch) = held else {
        std::fs::remove_dir_all(&tmp).map_err(|e| StateError::io(&tmp, e))?;
        return Ok(());
    };
    let target = dir.join(batch.to_string());
    if target.exists() {
        // left by a run whose later batches were discarded, or taken twice
        remove_snapshot(dir, batch)?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| StateError::io(&target, e))?;
    crate::atomic::sync_dir(dir)?;
    for old in snapshots_to_delete(&list_snapshots(dir)?, batch, retain) {
        remove_snapshot(dir, old)?;
    }
    Ok(())
}

/// Deletes snapshot `batch` of `dir`: first renamed to a hidden name (so a deletion cut short by
/// a crash never leaves a partial snapshot under a batch number), then removed.
fn remove_snapshot(dir: &Path, batch: u64) -> Result<()> {
    let p = dir.join(batch.to_string());
    let gone = dir.join(format!(".del-{batch}"));
    std::fs::rename(&p, &gone).map_err(|e| StateError::io(&p, e))?;
    std::fs::remove_dir_all(&gone).map_err(|e| StateError::io(&gone, e))
}

/// Removes what an interrupted snapshot, deletion, restore or stage left behind.
fn clean_leftovers(dir: &Path, snapshots_dir: &Path) -> Result<()> {
    let staged = side_dir(dir, "changelog").join(".staged");
    if staged.exists() {
        std::fs::remove_file(&staged).map_err(|e| StateError::io(&staged, e))?;
    }
    if let Ok(rd) = std::fs::read_dir(snapshots_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let p = e.path();
                std::fs::remove_dir_all(&p).map_err(|e| StateError::io(&p, e))?;
            }
        }
    }
    for p in [side_dir(dir, "restore"), side_dir(dir, "old")] {
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| StateError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Applies the changelogs of the batches after the one the DB's files hold (what the memtables
/// held when the process ended). Every batch of a stateful query commits, so they must follow
/// on without a gap. Returns the batch and row count.
fn replay_changelogs(db: &DB, dir: &Path, changelog_dir: &Path) -> Result<(Option<u64>, u64)> {
    let (mut batch, mut rows) = meta_of(db, dir)?;
    let meta = db.cf_handle(META_CF).ok_or_else(|| StateError::Corrupt {
        path: dir.to_path_buf(),
        reason: "state store has no metadata column family".into(),
    })?;
    let changelogs = list_changelogs(changelog_dir)?;
    if batch.is_none() && changelogs.first().is_some_and(|first| *first > 0) {
        // the DB these changelogs were written on is gone (the state directory was lost or
        // removed): they apply to nothing. The store is empty and recovery rebuilds it from a
        // snapshot and the offsets log, or refuses saying why.
        tracing::warn!(
            "state {}: no state to apply the changelogs of batches {:?}.. to; discarding them",
            dir.display(),
            changelogs.first()
        );
        delete_changelogs(changelog_dir, None)?;
        return Ok((None, 0));
    }
    for b in changelogs {
        if batch.is_some_and(|held| b <= held) {
            continue;
        }
        let path = changelog_dir.join(b.to_string());
        if let Some(held) = batch {
            if b != held + 1 {
                return Err(StateError::Corrupt {
                    path,
                    reason: format!(
                        "the state holds batch {held} and the next changelog is of batch {b}: \
                         the changelogs in between are missing"
                    ),
                });
            }
        }
        let bytes = std::fs::read(&path).map_err(|e| StateError::io(&path, e))?;
        let (delta, mut wb) = parse_changelog(&path, &bytes)?;
        rows = (rows as i64 + delta).max(0) as u64;
        wb.put_cf(&meta, BATCH_KEY, b.to_be_bytes());
        wb.put_cf(&meta, ROWS_KEY, rows.to_be_bytes());
        db.write_opt(wb, &write_options())
            .map_err(|e| rocks_err(dir, e))?;
        batch = Some(b);
    }
    Ok((batch, rows))
}

/// `<dir>.<what>`, beside the live DB.
pub(crate) fn side_dir(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    dir.with_file_name(format!("{name}.{what}"))
}

/// Copies a snapshot into `to` (a new directory): SST files are hard-linked (RocksDB never
/// changes them), the rest copied and synced.
fn copy_snapshot(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| StateError::io(to, e))?;
    let rd = std::fs::read_dir(from).map_err(|e| StateError::io(from, e))?;
    for e in rd {
        let e = e.map_err(|e| StateError::io(from, e))?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let is_sst = src.extension().is_some_and(|x| x == "sst");
        if !(is_sst && std::fs::hard_link(&src, &dst).is_ok()) {
            std::fs::copy(&src, &dst).map_err(|e| StateError::io(&src, e))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| StateError::io(&dst, e))?;
        }
    }
    crate::atomic::sync_dir(to)
}

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

    /// Starts a snapshot (or, without snapshots, a flush) on a background thread, unless the
    /// previous one is still running (then this interval is skipped: they never hold a commit
    /// up). Afterwards the changelogs of the batches up to `batch` are deleted: the DB's files
    /// hold them.
    fn start_background(&mut self, db: Arc<DB>, batch: u64, snapshot: bool) {
        if self.pending.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::debug!("state snapshot still in progress, skipping this one");
            return;
        }
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
        match std::thread::Builder::new()
            .name("sluice-state-snapshot".into())
            .spawn(move || {
                if snapshot {
                    take_snapshot(&db, &dir, retain)?;
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
        db.multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(|e| rocks_err(&self.dir, e)))
            .collect()
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

#[cfg(test)]
mod tests {

    #[test]
    fn rocksdb_errors_by_cause() {
        use rocksdb::ErrorKind as K;
        // (RocksDB's kind, who must act)
        let table = [
            (K::Corruption, ErrorKind::User),
            (K::NotFound, ErrorKind::User),
            (K::IOError, ErrorKind::External),
            (K::Busy, ErrorKind::External),
            (K::TimedOut, ErrorKind::External),
            (K::TryAgain, ErrorKind::External),
            (K::InvalidArgument, ErrorKind::Bug),
            (K::NotSupported, ErrorKind::Bug),
        ];
        for (k, want) in table {
            let name = format!("{k:?}");
            assert_eq!(super::rocks_kind(k), want, "{name}");
        }
    }

    use super::*;

    fn put(s: &mut RocksStateStore, batch: u64, key: &str) {
        s.stage(StateChanges {
            puts: vec![(key.as_bytes().to_vec(), batch.to_be_bytes().to_vec())],
            deletes: vec![],
            rows_delta: 1,
        })
        .expect("stage");
        s.commit(batch).expect("commit");
        // one snapshot at a time: wait for it, so that the test sees every interval's
        s.finish_snapshot().expect("snapshot");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("ls") {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                copy_dir(&p, &to.join(e.file_name()));
            } else {
                std::fs::copy(&p, to.join(e.file_name())).expect("copy");
            }
        }
    }

    /// A store in `root/live/0` without snapshots, batches `0..batches` committed (key `k<b>`).
    fn store_without_snapshots(
        root: &Path,
        batches: u64,
    ) -> (PathBuf, StoreOptions, RocksStateStore) {
        let live = root.join("live/0");
        let opts = StoreOptions {
            snapshot_interval: 0,
            min_batches_to_retain: 100,
            ..StoreOptions::default()
        };
        let mut s = RocksStateStore::open_with(&live, opts).expect("open");
        for b in 0..batches {
            put(&mut s, b, &format!("k{b}"));
        }
        (live, opts, s)
    }

    /// What is on disk of the store in `live` at this instant (its memtables are not), copied
    /// to `root/image/0`.
    fn crash_image(live: &Path, root: &Path) -> PathBuf {
        let image = root.join("image/0");
        copy_dir(live, &image);
        copy_dir(&side_dir(live, "changelog"), &side_dir(&image, "changelog"));
        image
    }

    #[test]
    fn committed_batches_survive_a_crash_through_the_changelog() {
        let root = tempfile::tempdir().expect("tmp");
        let (live, opts, mut s) = store_without_snapshots(root.path(), 5);
        // batch 5 staged, not committed, when the process dies
        s.stage(StateChanges {
            puts: vec![(b"k5".to_vec(), vec![5])],
            deletes: vec![b"k0".to_vec()],
            rows_delta: 0,
        })
        .expect("stage");
        // what is on disk at that instant (the memtables, never flushed, are lost)
        let image = crash_image(&live, root.path());
        drop(s);
        let s = RocksStateStore::open_with(&image, opts).expect("reopen the crash image");
        assert_eq!(s.committed_batch(), Some(4));
        assert_eq!(s.rows_total(), 5);
        let got = s
            .multi_get(&[b"k0".to_vec(), b"k4".to_vec(), b"k5".to_vec()])
            .expect("get");
        assert_eq!(
            got,
            vec![
                Some(0u64.to_be_bytes().to_vec()),
                Some(4u64.to_be_bytes().to_vec()),
                None
            ]
        );
        assert!(!side_dir(&image, "changelog").join(".staged").exists());
        // a corrupt changelog is an error naming the file, not a silently shorter state
        drop(s);
        let changelogs = side_dir(&image, "changelog");
        let cl = changelogs.join("5");
        std::fs::write(&cl, b"SLCLOG01garbage").expect("write");
        let err = RocksStateStore::open_with(&image, opts)
            .err()
            .expect("corrupt changelog refused")
            .to_string();
        assert!(err.contains("changelog") && err.contains('5'), "{err}");
        // so is a gap between the state and the next changelog
        std::fs::rename(&cl, changelogs.join("9")).expect("mv");
        let err = RocksStateStore::open_with(&image, opts)
            .err()
            .expect("gap refused")
            .to_string();
        assert!(err.contains("batch 9") && err.contains("missing"), "{err}");
        std::fs::remove_file(changelogs.join("9")).expect("rm");
        // the DB lost (a removed state directory) with changelogs of batches 1..4 left: they
        // apply to nothing, the store is empty (recovery rebuilds or refuses), not batches 1..4
        let _ = std::fs::remove_file(changelogs.join("0"));
        std::fs::remove_dir_all(&image).expect("rm db");
        let s = RocksStateStore::open_with(&image, opts).expect("reopen without the DB");
        assert_eq!(s.committed_batch(), None);
        assert_eq!(s.rows_total(), 0);
        assert_eq!(list_changelogs(&changelogs).expect("ls"), Vec::<u64>::new());
    }

    #[test]
    fn snapshots_every_interval_retention_and_restore() {
        let dir = tempfile::tempdir().expect("tmp");
        let live = dir.path().join("0");
        let opts = StoreOptions {
            snapshot_interval: 3,
            min_batches_to_retain: 4,
            ..StoreOptions::default()
        };
        let mut s = RocksStateStore::open_with(&live, opts).expect("open");
        for b in 0..=10 {
            put(&mut s, b, &format!("k{b:02}"));
        }
        s.finish_snapshot().expect("snapshot");
        // taken at 0, 3, 6, 9; after 9 the window is [6, 9]: 6 is its base, 0 and 3 go
        assert_eq!(s.snapshots().expect("list"), vec![6, 9]);
        assert_eq!(snapshots_to_delete(&[0, 3, 6, 9], 9, 4), vec![0, 3]);
        assert_eq!(snapshots_to_delete(&[0, 3, 9], 9, 4), vec![0]);
        assert_eq!(snapshots_to_delete(&[9], 9, 4), Vec::<u64>::new());
        assert_eq!(s.rows_total(), 11);
        // back to batch 6: keys of batches 7.. are gone, later snapshots too
        s.restore(Some(6)).expect("restore");
        assert_eq!(s.committed_batch(), Some(6));
        assert_eq!(s.rows_total(), 7);
        let got = s
            .multi_get(&[b"k06".to_vec(), b"k07".to_vec()])
            .expect("get");
        assert_eq!(got, vec![Some(6u64.to_be_bytes().to_vec()), None]);
        assert_eq!(s.snapshots().expect("list"), vec![6]);
        // the restored store goes on committing, and survives a reopen
        put(&mut s, 7, "x07");
        drop(s);
        let s = RocksStateStore::open_with(&live, opts).expect("reopen");
        assert_eq!(s.committed_batch(), Some(7));
        assert_eq!(s.rows_total(), 8);
        // the empty state
        let mut s = s;
        s.restore(None).expect("restore empty");
        assert_eq!(s.committed_batch(), None);
        assert!(s.snapshots().expect("list").is_empty());
    }

    #[test]
    fn a_db_flushed_ahead_of_its_changelog_holds_that_batch() {
        // the commit applies the memtable while the changelog is renamed: a flush can persist
        // a batch whose changelog rename never became durable (the process died in between)
        let root = tempfile::tempdir().expect("tmp");
        let (live, opts, s) = store_without_snapshots(root.path(), 3);
        flush_all(s.db().expect("db")).expect("flush");
        let image = crash_image(&live, root.path());
        drop(s);
        // the rename of batch 2's changelog lost
        std::fs::remove_file(side_dir(&image, "changelog").join("2")).expect("rm");
        let s = RocksStateStore::open_with(&image, opts).expect("reopen");
        assert_eq!(s.committed_batch(), Some(2));
        assert_eq!(s.rows_total(), 3);
        assert_eq!(
            s.multi_get(&[b"k2".to_vec()]).expect("get"),
            vec![Some(2u64.to_be_bytes().to_vec())]
        );
    }

    #[test]
    fn a_second_opener_is_refused_without_touching_the_open_store() {
        let dir = tempfile::tempdir().expect("tmp");
        let live = dir.path().join("0");
        let mut s = RocksStateStore::open(&live).expect("open");
        s.stage(StateChanges {
            puts: vec![(b"a".to_vec(), b"1".to_vec())],
            deletes: vec![],
            rows_delta: 1,
        })
        .expect("stage");
        let err = RocksStateStore::open(&live)
            .err()
            .expect("second open refused")
            .to_string();
        assert!(err.contains("open elsewhere"), "{err}");
        // the refused opener did not clean up the open store's staged changelog
        s.commit(0).expect("commit after the refused open");
        drop(s);
        let s = RocksStateStore::open(&live).expect("reopen once closed");
        assert_eq!(s.committed_batch(), Some(0));
        assert_eq!(
            s.multi_get(&[b"a".to_vec()]).expect("get"),
            vec![Some(b"1".to_vec())]
        );
    }

    #[test]
    fn commits_are_versioned_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = RocksStateStore::open(dir.path()).expect("open");
        assert_eq!(s.committed_batch(), None);
        s.stage(StateChanges {
            puts: vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"a".to_vec(), b"1".to_vec()),
            ],
            deletes: vec![],
            rows_delta: 2,
        })
        .expect("stage");
        // staged changes are not visible before the commit
        assert_eq!(s.multi_get(&[b"a".to_vec()]).expect("get"), vec![None]);
        let stats = s.commit(0).expect("commit");
        assert_eq!(stats.rows_total, 2);
        assert_eq!(stats.rows_updated, 2);
        s.stage(StateChanges {
            puts: vec![(b"c".to_vec(), b"3".to_vec())],
            deletes: vec![b"a".to_vec()],
            rows_delta: 0,
        })
        .expect("stage");
        s.commit(1).expect("commit");
        // a batch re-run in the same process stages again: only the last staging is committed
        s.stage(StateChanges {
            puts: vec![(b"x".to_vec(), b"9".to_vec())],
            deletes: vec![],
            rows_delta: 1,
        })
        .expect("stage");
        // a batch that changed nothing still records its id
        s.stage(StateChanges::default()).expect("stage again");
        s.commit(2).expect("commit");
        drop(s);
        let s = RocksStateStore::open(dir.path()).expect("reopen");
        assert_eq!(s.committed_batch(), Some(2));
        assert_eq!(s.rows_total(), 2);
        let got = s
            .multi_get(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
            .expect("get");
        assert_eq!(got, vec![None, Some(b"2".to_vec()), Some(b"3".to_vec())]);
        assert_eq!(s.multi_get(&[b"x".to_vec()]).expect("get"), vec![None]);
        let mut keys = Vec::new();
        s.scan(b"b", Some(b"c"), &mut |k, _| {
            keys.push(k.to_vec());
            Ok(true)
        })
        .expect("scan");
        assert_eq!(keys, vec![b"b".to_vec()]);
        let snap = dir.path().join("snap");
        s.snapshot(&snap).expect("snapshot");
        drop(s);
        let s2 = RocksStateStore::open(&snap).expect("open snapshot");
        assert_eq!(s2.committed_batch(), Some(2));
    }
}
