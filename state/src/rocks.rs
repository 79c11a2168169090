//! The RocksDB state store: one DB per operator; each batch's changes and its batch id in one
//! synced `WriteBatch` (no memtable flush per batch: the WAL makes it durable).

use std::path::{Path, PathBuf};
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::store::{CommitStats, ScanFn, StateChanges, StateStore, StateStoreProvider};
use crate::{Result, StateError};

const META_CF: &str = "sluice_meta";
const DATA_CF: &str = "default";
const BATCH_KEY: &[u8] = b"batch";
const ROWS_KEY: &[u8] = b"rows";

/// Opens RocksDB state stores.
#[derive(Debug, Default, Clone)]
pub struct RocksStateStoreProvider;

impl StateStoreProvider for RocksStateStoreProvider {
    fn open(&self, dir: &Path) -> Result<Box<dyn StateStore>> {
        Ok(Box::new(RocksStateStore::open(dir)?))
    }
}

/// A RocksDB-backed [`StateStore`].
pub struct RocksStateStore {
    db: DB,
    dir: PathBuf,
    batch: Option<u64>,
    rows: u64,
}

fn rocks_err(dir: &Path, e: rocksdb::Error) -> StateError {
    StateError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(e.into_string()),
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

impl RocksStateStore {
    /// Opens (creating if missing) the DB in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_open_files(256);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(DATA_CF, Options::default()),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| rocks_err(dir, e))?;
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
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            batch,
            rows,
        })
    }

    fn memory_used(&self) -> u64 {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop("rocksdb.cur-size-all-mem-tables") + prop("rocksdb.estimate-table-readers-mem")
    }
}

impl StateStore for RocksStateStore {
    fn committed_batch(&self) -> Option<u64> {
        self.batch
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(|e| rocks_err(&self.dir, e)))
            .collect()
    }

    fn scan(&self, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
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

    fn commit(&mut self, batch_id: u64, changes: StateChanges) -> Result<CommitStats> {
        let t = Instant::now();
        let meta = self
            .db
            .cf_handle(META_CF)
            .ok_or_else(|| StateError::Corrupt {
                path: self.dir.clone(),
                reason: "state store has no metadata column family".into(),
            })?;
        let rows = (self.rows as i64 + changes.rows_delta).max(0) as u64;
        let mut wb = WriteBatch::default();
        for (k, v) in &changes.puts {
            wb.put(k, v);
        }
        for k in &changes.deletes {
            wb.delete(k);
        }
        wb.put_cf(&meta, BATCH_KEY, batch_id.to_be_bytes());
        wb.put_cf(&meta, ROWS_KEY, rows.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(wb, &wo)
            .map_err(|e| rocks_err(&self.dir, e))?;
        self.batch = Some(batch_id);
        self.rows = rows;
        Ok(CommitStats {
            rows_total: rows,
            rows_updated: changes.puts.len() as u64,
            rows_removed: changes.deletes.len() as u64,
            commit_ms: t.elapsed().as_millis() as u64,
            memory_used_bytes: self.memory_used(),
        })
    }

    fn rows_total(&self) -> u64 {
        self.rows
    }

    fn snapshot(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| rocks_err(dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_versioned_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = RocksStateStore::open(dir.path()).expect("open");
        assert_eq!(s.committed_batch(), None);
        let stats = s
            .commit(
                0,
                StateChanges {
                    puts: vec![
                        (b"a".to_vec(), b"1".to_vec()),
                        (b"b".to_vec(), b"2".to_vec()),
                    ],
                    deletes: vec![],
                    rows_delta: 2,
                },
            )
            .expect("commit");
        assert_eq!(stats.rows_total, 2);
        s.commit(
            1,
            StateChanges {
                puts: vec![(b"c".to_vec(), b"3".to_vec())],
                deletes: vec![b"a".to_vec()],
                rows_delta: 0,
            },
        )
        .expect("commit");
        drop(s);
        let s = RocksStateStore::open(dir.path()).expect("reopen");
        assert_eq!(s.committed_batch(), Some(1));
        assert_eq!(s.rows_total(), 2);
        let got = s
            .multi_get(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
            .expect("get");
        assert_eq!(got, vec![None, Some(b"2".to_vec()), Some(b"3".to_vec())]);
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
        assert_eq!(s2.committed_batch(), Some(1));
    }
}
