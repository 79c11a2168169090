//! State snapshots, retention and rebuilding the state from a snapshot plus the offsets log:
//! `minDeltasForSnapshot` (a RocksDB checkpoint every N batches, taken in the background),
//! `minBatchesToRetain` (older snapshots and log entries deleted), a lost state directory
//! rebuilt on restart, and log entries removed to reprocess batches (the state rolled back).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::util::display::array_value_to_string;
use common::*;
use sluice::prelude::*;

/// Batch id → the rows it emitted, as sorted text lines.
type Emitted = Arc<Mutex<BTreeMap<u64, Vec<String>>>>;

const SQL: &str = "SELECT window.start AS ws, action, count(*) AS n, sum(value) AS total \
                   FROM events GROUP BY window(event_time, '1 minute'), action";

/// File i: four events in minutes i and i+1, two actions.
fn file(i: u64) -> String {
    let mut s = String::new();
    for (k, action) in ["a", "b", "a", "b"].iter().enumerate() {
        let minute = i + (k as u64) / 2;
        s.push_str(&format!(
            "{{\"event_time\":\"2026-01-01T00:{minute:02}:{:02}Z\",\"action\":\"{action}\",\"value\":{}}}\n",
            10 + k,
            i * 10 + k as u64
        ));
    }
    s
}

fn stage(dir: &Path, from: u64, to: u64) {
    for i in from..to {
        put_file(&dir.join("in"), &format!("f{i:02}.json"), &file(i), i);
    }
}

/// The state partitions of these runs: every store of an operator is lost or kept alike.
const PARTITIONS: usize = 2;

fn session() -> Session {
    Session::builder()
        .config("spark.sql.shuffle.partitions", PARTITIONS.to_string())
        .build()
        .expect("session")
}

/// Removes operator 0's partition stores (and, with `snapshots`, their snapshots).
fn remove_state(chk: &Path, snapshots: bool) {
    for p in 0..PARTITIONS {
        fs::remove_dir_all(chk.join(format!("state/0/{p}"))).expect("rm state");
        if snapshots {
            fs::remove_dir_all(chk.join(format!("state/0/{p}.snapshots"))).expect("rm snapshots");
        }
    }
}

fn run(dir: &Path, emitted: &Emitted, conf: &[(&str, &str)]) {
    let session = session();
    session
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .option("maxFilesPerTrigger", 1)
        .json(dir.join("in").to_str().expect("path"))
        .expect("source")
        .create_or_replace_temp_view("events")
        .expect("view");
    let out = Arc::clone(emitted);
    let mut w = session
        .sql(SQL)
        .expect("sql")
        .write_stream()
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(dir.join("chk"));
    for (k, v) in conf {
        w = w.option(k, v);
    }
    let q = w
        .foreach_batch(move |id, batches| {
            let mut rows = Vec::new();
            for b in batches {
                for r in 0..b.num_rows() {
                    let cells: Vec<String> = b
                        .columns()
                        .iter()
                        .map(|c| array_value_to_string(c, r).expect("cell"))
                        .collect();
                    rows.push(cells.join(","));
                }
            }
            rows.sort();
            out.lock().expect("lock").insert(id, rows);
            Ok(())
        })
        .start()
        .expect("start");
    q.await_termination().expect("run");
}

fn ids(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

const CONF: [(&str, &str); 2] = [("minDeltasForSnapshot", "2"), ("minBatchesToRetain", "3")];

#[test]
fn snapshots_and_log_entries_are_kept_for_the_retained_batches_only() {
    let w = workdir();
    stage(w.path(), 0, 9);
    let emitted = Emitted::default();
    run(w.path(), &emitted, &CONF);
    assert_eq!(emitted.lock().expect("lock").len(), 9);
    let chk = w.path().join("chk");
    // snapshots are started after batches 0, 2, 4, 6, 8 on a background thread while later
    // batches commit (each is named after the batch it holds; one still running makes the next
    // one skip): which exist depends on timing, what must hold does not
    let offsets = ids(&chk.join("offsets"));
    assert_eq!(ids(&chk.join("commits")), offsets);
    let snaps: Vec<Vec<u64>> = (0..PARTITIONS)
        .map(|p| ids(&chk.join(format!("state/0/{p}.snapshots"))))
        .collect();
    for s in &snaps {
        check_retention(s, &offsets);
    }
    // every partition took its snapshots at the same batches (a rebuild restores them together)
    assert!(snaps.windows(2).all(|w| w[0] == w[1]), "{snaps:?}");
}

/// What must hold of one partition's snapshots and the logs after batches 0..=8.
fn check_retention(snaps: &[u64], offsets: &[u64]) {
    assert!(
        !snaps.is_empty() && snaps.iter().all(|s| *s <= 8),
        "{snaps:?}"
    );
    // the last 3 batches (6..=8) are kept, in one contiguous run of entries
    let first = offsets[0];
    assert!(first <= 6, "{offsets:?}");
    assert_eq!(offsets, (first..=8).collect::<Vec<_>>());
    // the oldest retained batch can be rebuilt: a snapshot at or before it whose replay has
    // its offsets entries
    assert!(
        snaps.iter().any(|s| (first..=6).contains(s)),
        "snapshots {snaps:?}, offsets {offsets:?}"
    );
    // older snapshots were deleted: at most one (the base) before the retained batches
    assert!(snaps.iter().filter(|s| **s < 6).count() <= 1, "{snaps:?}");
    // something older than the retained batches was purged indeed
    assert!(first > 0, "{offsets:?}");
}

#[test]
fn a_lost_state_directory_is_rebuilt_from_a_snapshot_and_the_offsets_log() {
    // reference: one uninterrupted run over all files
    let reference = workdir();
    stage(reference.path(), 0, 8);
    let expected = Emitted::default();
    run(reference.path(), &expected, &CONF);

    // snapshots every 2 batches; after batches 0..=4 the live state is lost and the
    // snapshots after batch 2 too: the state is rebuilt from an older snapshot (or from
    // nothing) by replaying at least batches 3 and 4
    let every2 = [("minDeltasForSnapshot", "2")];
    let w = workdir();
    stage(w.path(), 0, 5);
    let emitted = Emitted::default();
    run(w.path(), &emitted, &every2);
    remove_state(&w.path().join("chk"), false);
    for p in 0..PARTITIONS {
        let snapshots = w.path().join(format!("chk/state/0/{p}.snapshots"));
        assert!(!ids(&snapshots).is_empty(), "a snapshot was taken");
        for s in ids(&snapshots).into_iter().filter(|s| *s > 2) {
            fs::remove_dir_all(snapshots.join(s.to_string())).expect("rm snapshot");
        }
    }
    stage(w.path(), 5, 8);
    run(w.path(), &emitted, &every2);
    assert_eq!(
        *emitted.lock().expect("lock"),
        *expected.lock().expect("lock"),
        "batches after the rebuild must emit what an uninterrupted run emitted"
    );

    // without any snapshot and with the offsets log complete, the state is rebuilt from batch 0
    let w = workdir();
    stage(w.path(), 0, 5);
    let emitted = Emitted::default();
    let no_snapshots = [("minDeltasForSnapshot", "0")];
    run(w.path(), &emitted, &no_snapshots);
    remove_state(&w.path().join("chk"), false);
    stage(w.path(), 5, 8);
    run(w.path(), &emitted, &no_snapshots);
    assert_eq!(
        *emitted.lock().expect("lock"),
        *expected.lock().expect("lock")
    );
}

#[test]
fn removing_the_last_log_entries_reprocesses_those_batches_on_the_older_state() {
    let w = workdir();
    stage(w.path(), 0, 7);
    let first = Emitted::default();
    run(w.path(), &first, &CONF);
    // reprocess batches 5 and 6 (as with Spark: delete their offsets and commit entries)
    for b in [5, 6] {
        fs::remove_file(w.path().join(format!("chk/offsets/{b}"))).expect("rm offsets");
        fs::remove_file(w.path().join(format!("chk/commits/{b}"))).expect("rm commit");
    }
    let again = Emitted::default();
    run(w.path(), &again, &CONF);
    let first = first.lock().expect("lock");
    let again = again.lock().expect("lock");
    assert_eq!(again.keys().copied().collect::<Vec<_>>(), vec![5, 6]);
    assert_eq!(again[&5], first[&5]);
    assert_eq!(again[&6], first[&6]);
}

#[test]
fn a_state_that_cannot_be_rebuilt_is_refused_with_the_reason() {
    let w = workdir();
    stage(w.path(), 0, 9);
    let emitted = Emitted::default();
    run(w.path(), &emitted, &CONF);
    // state and snapshots gone, log entries before 6 purged: nothing to rebuild from
    remove_state(&w.path().join("chk"), true);
    for log in ["offsets", "commits"] {
        // purged already (retention); made sure of here whatever the snapshots' timing was
        let _ = fs::remove_file(w.path().join(format!("chk/{log}/0")));
    }
    let session = session();
    session
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, value DOUBLE")
        .json(w.path().join("in").to_str().expect("path"))
        .expect("source")
        .create_or_replace_temp_view("events")
        .expect("view");
    let q = session
        .sql(SQL)
        .expect("sql")
        .write_stream()
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(w.path().join("chk"))
        .foreach_batch(|_, _| Ok(()))
        .start()
        .expect("start");
    let err = q.await_termination().expect_err("refused").to_string();
    assert!(
        err.contains("cannot recover the state") && err.contains("oldest one kept is"),
        "{err}"
    );
}
