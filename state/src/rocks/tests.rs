//! Tests of the RocksDB state store.

use super::*;
use crate::ErrorKind;

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
        assert_eq!(super::files::rocks_kind(k), want, "{name}");
    }
}

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
fn store_without_snapshots(root: &Path, batches: u64) -> (PathBuf, StoreOptions, RocksStateStore) {
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

#[test]
fn which_changelogs_apply_on_open() {
    let dir = Path::new("/chk/state/0/0.changelog");
    // (batch the DB holds, changelogs found) → applied, None (orphaned), or the error text
    type Case = (
        Option<u64>,
        Vec<u64>,
        std::result::Result<Option<Vec<u64>>, &'static str>,
    );
    let table: [Case; 7] = [
        (None, vec![], Ok(Some(vec![]))),
        (None, vec![0, 1, 2], Ok(Some(vec![0, 1, 2]))),
        (Some(4), vec![3, 4, 5, 6], Ok(Some(vec![5, 6]))),
        (Some(6), vec![5, 6], Ok(Some(vec![]))),
        (None, vec![3, 4], Ok(None)),
        (
            Some(4),
            vec![6, 7],
            Err("holds batch 4 and the next changelog is of batch 6"),
        ),
        (
            Some(4),
            vec![5, 7],
            Err("holds batch 5 and the next changelog is of batch 7"),
        ),
    ];
    for (held, listed, want) in table {
        let got = super::files::changelogs_to_apply(dir, held, listed.clone());
        match (&want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{held:?} {listed:?}"),
            (Err(w), Err(g)) => assert!(g.to_string().contains(w), "{g}"),
            _ => panic!("{held:?} {listed:?}: {got:?}"),
        }
    }
}
