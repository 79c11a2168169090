//! The files of a RocksDB state store besides the database: changelogs (one synced file per
//! committed batch, replayed on open), snapshots (RocksDB checkpoints), their retention, and
//! opening the database; RocksDB errors classified by cause.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use super::{write_buffer_bytes, StoreOptions, BATCH_KEY, DATA_CF, META_CF, ROWS_KEY};
use crate::{ErrorKind, Result, StateError};

pub(crate) const CHANGELOG_MAGIC: &[u8; 8] = b"SLCLOG01";

/// A changelog file's bytes: the magic, the rows delta, the write batch's length and bytes.
pub(crate) fn changelog_bytes(rows_delta: i64, wb: &WriteBatch) -> Vec<u8> {
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
pub(crate) fn delete_changelogs(dir: &Path, upto: Option<u64>) -> Result<()> {
    for b in list_changelogs(dir)?.into_iter().rev() {
        if upto.is_none_or(|u| b <= u) {
            let p = dir.join(b.to_string());
            std::fs::remove_file(&p).map_err(|e| StateError::io(&p, e))?;
        }
    }
    crate::atomic::sync_dir(dir)
}

/// Flushes the memtables of both column families together (the batch id with its data).
pub(crate) fn flush_all(db: &DB) -> std::result::Result<(), rocksdb::Error> {
    let cfs: Vec<_> = [DATA_CF, META_CF]
        .iter()
        .filter_map(|n| db.cf_handle(n))
        .collect();
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
}

/// Starts flushing the memtables of both column families without waiting for it (RocksDB's
/// background threads do it): a snapshot taken a batch later then has only that batch's
/// memtable left to flush.
pub(crate) fn start_flush(db: &DB) -> std::result::Result<(), rocksdb::Error> {
    let cfs: Vec<_> = [DATA_CF, META_CF]
        .iter()
        .filter_map(|n| db.cf_handle(n))
        .collect();
    let mut fo = rocksdb::FlushOptions::default();
    fo.set_wait(false);
    db.flush_cfs_opt(&cfs, &fo)
}

/// Writes without RocksDB's WAL: durability comes from the changelog.
pub(crate) fn write_options() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.disable_wal(true);
    wo
}

/// A batch's changes: the write batch its commit applies, and the thread writing its bytes to
/// the staged changelog.
pub(crate) struct Staged {
    pub(crate) batch: WriteBatch,
    /// Writes the changelog file's bytes to `.staged`, synced.
    pub(crate) writer: JoinHandle<Result<()>>,
    pub(crate) rows_delta: i64,
    pub(crate) puts: u64,
    pub(crate) deletes: u64,
}

/// Waits for a staged changelog's synced write.
pub(crate) fn wait_for(writer: JoinHandle<Result<()>>, dir: &Path) -> Result<()> {
    writer.join().unwrap_or_else(|_| {
        Err(StateError::Inconsistent {
            dir: dir.to_path_buf(),
            reason: "the changelog writer thread panicked".into(),
        })
    })
}

/// Sorts `puts` (the memtable takes sorted keys faster) and encodes the changes in a write
/// batch.
pub(crate) fn encode_changes(
    mut puts: Vec<(Vec<u8>, Vec<u8>)>,
    deletes: Vec<Vec<u8>>,
) -> WriteBatch {
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
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
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
pub(crate) fn rocks_kind(kind: rocksdb::ErrorKind) -> ErrorKind {
    use rocksdb::ErrorKind as K;
    match kind {
        K::Corruption | K::NotFound => ErrorKind::User,
        K::InvalidArgument | K::NotSupported | K::MergeInProgress | K::ColumnFamilyDropped => {
            ErrorKind::Bug
        }
        _ => ErrorKind::External,
    }
}

pub(crate) fn u64_of(dir: &Path, v: Option<Vec<u8>>) -> Result<Option<u64>> {
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

pub(crate) fn open_db(dir: &Path, options: &StoreOptions) -> Result<DB> {
    std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_write_buffer_size(write_buffer_bytes(options.memory_share));
    opts.set_max_write_buffer_number(4);
    opts.set_max_open_files(256);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // point lookups (an aggregation's or a join's keys of a batch, most of them new) skip the
    // files and memtables that cannot hold the key
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    opts.set_block_based_table_factory(&table);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_memtable_whole_key_filtering(true);
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
pub(crate) fn list_snapshots(dir: &Path) -> Result<Vec<u64>> {
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
pub(crate) fn take_snapshot(
    db: &DB,
    dir: &Path,
    retain: u64,
    taken: std::sync::mpsc::Sender<()>,
) -> Result<()> {
    crate::atomic::ensure_dir(dir)?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(&tmp))
        .map_err(|e| rocks_err(&tmp, e))?;
    // the checkpoint exists: the next commit may change the live DB
    let _ = taken.send(());
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
pub(crate) fn remove_snapshot(dir: &Path, batch: u64) -> Result<()> {
    let p = dir.join(batch.to_string());
    let gone = dir.join(format!(".del-{batch}"));
    std::fs::rename(&p, &gone).map_err(|e| StateError::io(&p, e))?;
    std::fs::remove_dir_all(&gone).map_err(|e| StateError::io(&gone, e))
}

/// Removes what an interrupted snapshot, deletion, restore or stage left behind.
pub(crate) fn clean_leftovers(dir: &Path, snapshots_dir: &Path) -> Result<()> {
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

/// Which of the committed changelogs `listed` (ascending) apply on a DB whose files hold
/// `held`: those after it, which must follow on without a gap (else the store is corrupt).
/// `None`: they are orphaned — no DB state, and the first is not batch 0 — and apply to nothing.
/// The one rule of a writer's open and of a read-only open.
pub(crate) fn changelogs_to_apply(
    changelog_dir: &Path,
    held: Option<u64>,
    listed: Vec<u64>,
) -> Result<Option<Vec<u64>>> {
    if held.is_none() && listed.first().is_some_and(|first| *first > 0) {
        return Ok(None);
    }
    let after: Vec<u64> = listed
        .into_iter()
        .filter(|b| held.is_none_or(|h| *b > h))
        .collect();
    let mut expect = held.map(|h| h + 1);
    for b in &after {
        if let Some(e) = expect.filter(|e| e != b) {
            return Err(StateError::Corrupt {
                path: changelog_dir.join(b.to_string()),
                reason: format!(
                    "the state holds batch {} and the next changelog is of batch {b}: the \
                     changelogs in between are missing",
                    e - 1
                ),
            });
        }
        expect = Some(b + 1);
    }
    Ok(Some(after))
}

/// Applies the changelogs of the batches after the one the DB's files hold (what the memtables
/// held when the process ended). Every batch of a stateful query commits, so they must follow
/// on without a gap. Returns the batch and row count.
pub(crate) fn replay_changelogs(
    db: &DB,
    dir: &Path,
    changelog_dir: &Path,
) -> Result<(Option<u64>, u64)> {
    let (mut batch, mut rows) = meta_of(db, dir)?;
    let meta = db.cf_handle(META_CF).ok_or_else(|| StateError::Corrupt {
        path: dir.to_path_buf(),
        reason: "state store has no metadata column family".into(),
    })?;
    let Some(changelogs) =
        changelogs_to_apply(changelog_dir, batch, list_changelogs(changelog_dir)?)?
    else {
        // the DB these changelogs were written on is gone (the state directory was lost or
        // removed): they apply to nothing. The store is empty and recovery rebuilds it from a
        // snapshot and the offsets log, or refuses saying why.
        tracing::warn!(
            "state {}: no state to apply the changelogs in {} to; discarding them",
            dir.display(),
            changelog_dir.display()
        );
        delete_changelogs(changelog_dir, None)?;
        return Ok((None, 0));
    };
    for b in changelogs {
        let path = changelog_dir.join(b.to_string());
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
pub(crate) fn copy_snapshot(from: &Path, to: &Path) -> Result<()> {
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
