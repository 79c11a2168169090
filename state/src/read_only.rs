//! Partition stores opened read-only, for `sluice checkpoint inspect|state`: RocksDB's
//! read-only mode (no lock taken, nothing written, so a running query's state can be read too),
//! with the committed changelogs the database files may not hold yet applied in memory.
//! Nothing on disk changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocksdb::{Options, WriteBatchIterator, DB};

use crate::rocks::{
    changelogs_to_apply, list_changelogs, meta_of, parse_changelog, rocks_err, side_dir, DATA_CF,
    META_CF,
};
use crate::{Result, StateError};

impl Drop for ReadOnlyStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// One partition store, read-only.
pub struct ReadOnlyStore {
    db: DB,
    /// Where RocksDB writes its info log for this open (outside the checkpoint), removed on drop.
    log_dir: PathBuf,
    dir: PathBuf,
    /// Changes of the changelogs after the database's batch: key → value (`None`: deleted).
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    batch: Option<u64>,
    rows: u64,
}

struct Overlay<'a>(&'a mut BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl WriteBatchIterator for Overlay<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), Some(value.to_vec()));
    }
    fn delete(&mut self, key: &[u8]) {
        self.0.insert(key.to_vec(), None);
    }
}

impl ReadOnlyStore {
    /// Opens the store in `dir` read-only. A writer may be running: its background flush can
    /// delete changelogs the open has listed, so the open is tried again then.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::try_open(dir) {
                Err(StateError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 5 =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn try_open(dir: &Path) -> Result<Self> {
        if !dir.join("CURRENT").exists() {
            return Err(StateError::Inconsistent {
                dir: dir.to_path_buf(),
                reason: "no state store here".into(),
            });
        }
        // listed before the database is opened: a flush that completes in between has written
        // the files before it deletes the changelogs they hold
        let changelog_dir = side_dir(dir, "changelog");
        let changelogs = list_changelogs(&changelog_dir)?;
        // RocksDB writes an info log even in read-only mode: elsewhere, not in the checkpoint
        let log_dir =
            std::env::temp_dir().join(format!("sluice-state-read-{}", uuid::Uuid::new_v4()));
        let mut opts = Options::default();
        opts.set_db_log_dir(&log_dir);
        let db = DB::open_cf_for_read_only(&opts, dir, [DATA_CF, META_CF], false)
            .map_err(|e| rocks_err(dir, e))?;
        let (mut batch, mut rows) = meta_of(&db, dir)?;
        let mut overlay = BTreeMap::new();
        // (orphaned changelogs apply to nothing, as a writer's open decides)
        let apply = changelogs_to_apply(&changelog_dir, batch, changelogs)?.unwrap_or_default();
        for b in apply {
            let path = changelog_dir.join(b.to_string());
            let bytes = std::fs::read(&path).map_err(|e| StateError::io(&path, e))?;
            let (delta, wb) = parse_changelog(&path, &bytes)?;
            wb.iterate(&mut Overlay(&mut overlay));
            rows = (rows as i64 + delta).max(0) as u64;
            batch = Some(b);
        }
        Ok(Self {
            db,
            log_dir,
            dir: dir.to_path_buf(),
            overlay,
            batch,
            rows,
        })
    }

    /// The batch whose state this is.
    pub fn committed_batch(&self) -> Option<u64> {
        self.batch
    }

    /// Number of keys.
    pub fn rows_total(&self) -> u64 {
        self.rows
    }

    /// Calls `f(key, value)` for every key in order, until it returns false.
    pub fn scan(&self, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mut pending = self.overlay.iter().peekable();
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| rocks_err(&self.dir, e))?;
            // overlay keys before this one
            while let Some((ok, ov)) = pending.next_if(|(ok, _)| ok.as_slice() < k.as_ref()) {
                if let Some(ov) = ov {
                    if !f(ok, ov) {
                        return Ok(());
                    }
                }
            }
            let cont = match pending.next_if(|(ok, _)| ok.as_slice() == k.as_ref()) {
                Some((_, Some(ov))) => f(&k, ov),
                Some((_, None)) => true,
                None => f(&k, &v),
            };
            if !cont {
                return Ok(());
            }
        }
        for (ok, ov) in pending {
            if let Some(ov) = ov {
                if !f(ok, ov) {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StateChanges, StateStore};
    use crate::{RocksStateStore, StoreOptions};

    /// Every file under `dir` with the hash of its bytes (a checkpoint's content).
    fn files(dir: &Path) -> BTreeMap<PathBuf, u64> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let bytes = std::fs::read(&p).expect("read");
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    std::hash::Hash::hash(&bytes, &mut h);
                    out.insert(p.clone(), std::hash::Hasher::finish(&h));
                }
            }
        }
        out
    }

    fn scan_all(s: &ReadOnlyStore) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        s.scan(&mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .expect("scan");
        out
    }

    #[test]
    fn reads_what_was_committed_and_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("0");
        let options = StoreOptions {
            snapshot_interval: 0,
            ..StoreOptions::default()
        };
        let mut w = RocksStateStore::open_with(&dir, options).expect("open");
        let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        w.stage(StateChanges {
            puts: vec![kv("a", "1"), kv("c", "3"), kv("e", "5")],
            deletes: vec![],
            rows_delta: 3,
        })
        .expect("stage");
        w.commit(0).expect("commit");
        // closed (which waits for the flush batch 0 starts in the background) and opened again
        drop(w);
        let mut w = RocksStateStore::open_with(&dir, options).expect("open");
        w.stage(StateChanges {
            puts: vec![kv("b", "2"), kv("c", "33")],
            deletes: vec![b"e".to_vec()],
            rows_delta: 0,
        })
        .expect("stage");
        w.commit(1).expect("commit");
        let before = files(tmp.path());
        // the writer still holds the store: read-only needs no lock
        let r = ReadOnlyStore::open(&dir).expect("read-only");
        assert_eq!(r.committed_batch(), Some(1));
        assert_eq!(r.rows_total(), 3);
        assert_eq!(
            scan_all(&r),
            vec![kv("a", "1"), kv("b", "2"), kv("c", "33")]
        );
        drop(r);
        assert_eq!(
            files(tmp.path()),
            before,
            "reading changed the store's files"
        );
        drop(w);
        // after the writer closed (its memtable never flushed): the changelogs carry it
        let r = ReadOnlyStore::open(&dir).expect("read-only");
        assert_eq!(r.committed_batch(), Some(1));
        assert_eq!(scan_all(&r).len(), 3);
    }
}
