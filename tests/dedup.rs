//! Streaming deduplication: keys remembered across batches and restarts (RocksDB state), and
//! forgotten once the watermark passes them with `drop_duplicates_within_watermark`.

mod common;

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::*;
use sluice::prelude::*;

fn ev(id: i64, ts: &str, v: i64) -> String {
    format!("{{\"id\":{id},\"ts\":\"2025-01-01T{ts}:00Z\",\"v\":{v}}}\n")
}

fn run(input: &Path, chk: &Path, within: bool) -> Vec<(i64, i64)> {
    run_with(input, chk, within, false)
}

/// `project_above`: only `id, v` are read above the deduplication (the event time is not), so
/// a column pruning that ignored the watermark would take it away from the operator.
fn run_with(input: &Path, chk: &Path, within: bool, project_above: bool) -> Vec<(i64, i64)> {
    let s = Session::builder().build().expect("session");
    let df = s
        .read_stream()
        .schema("id BIGINT, ts TIMESTAMP, v BIGINT")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .with_watermark("ts", "10 minutes")
        .expect("wm");
    let df = if within {
        df.drop_duplicates_within_watermark(&["id"]).expect("dedup")
    } else {
        df.drop_duplicates(&["id"]).expect("dedup")
    };
    let df = if project_above {
        df.select_columns(&["id", "v"]).expect("select")
    } else {
        df
    };
    let q = df
        .write_stream()
        .format("memory")
        .query_name("dedup")
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(chk)
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let rows = s
        .sql("SELECT id, v FROM dedup")
        .expect("sql")
        .collect()
        .expect("collect");
    let mut out: Vec<(i64, i64)> = rows
        .iter()
        .flat_map(|b| {
            let id = b.column(0).as_primitive::<Int64Type>().clone();
            let v = b.column(1).as_primitive::<Int64Type>().clone();
            (0..b.num_rows()).map(move |i| (id.value(i), v.value(i)))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn drop_duplicates_remembers_keys_across_batches_and_restarts() {
    let w = workdir();
    let input = w.path().join("in");
    let chk = w.path().join("chk");
    put_file(
        &input,
        "1.json",
        &(ev(1, "00:00", 10) + &ev(2, "00:00", 20) + &ev(1, "00:01", 11)),
        0,
    );
    put_file(
        &input,
        "2.json",
        &(ev(2, "00:02", 21) + &ev(3, "00:02", 30)),
        1,
    );
    assert_eq!(run(&input, &chk, false), vec![(1, 10), (2, 20), (3, 30)]);
    // restart on the same checkpoint with more input: the keys seen before stay seen
    put_file(
        &input,
        "3.json",
        &(ev(3, "00:03", 31) + &ev(4, "00:03", 40) + &ev(1, "00:04", 12)),
        2,
    );
    assert_eq!(run(&input, &chk, false), vec![(4, 40)]);
}

#[test]
fn within_watermark_forgets_a_key_after_the_watermark_passes_it() {
    within_watermark_case(false);
}

#[test]
fn within_watermark_forgets_keys_across_a_restart_without_the_event_time_selected_above() {
    within_watermark_case(true);
}

/// `variant`: stop after the first file and restart on the checkpoint for the rest (the keys
/// and their expiry live in the state), with only `id, v` read above the deduplication.
fn within_watermark_case(variant: bool) {
    let w = workdir();
    let input = w.path().join("in");
    let chk = w.path().join("chk");
    put_file(
        &input,
        "1.json",
        &(ev(1, "00:00", 10) + &ev(2, "00:00", 20)),
        0,
    );
    let mut first = Vec::new();
    if variant {
        // the watermark after it (23:50 the day before) expires nothing
        first = run_with(&input, &chk, true, variant);
        assert_eq!(first, vec![(1, 10), (2, 20)]);
    }
    // a duplicate within 10 minutes is dropped; event time 00:30 moves the watermark to 00:20
    put_file(
        &input,
        "2.json",
        &(ev(1, "00:05", 11) + &ev(3, "00:30", 30)),
        1,
    );
    // key 1 (first seen 00:00, kept until 00:10) is forgotten at the end of this batch
    put_file(&input, "3.json", &ev(1, "00:31", 12), 2);
    put_file(&input, "4.json", &ev(1, "00:32", 13), 3);
    let mut all = first;
    all.extend(run_with(&input, &chk, true, variant));
    all.sort();
    assert_eq!(all, vec![(1, 10), (1, 13), (2, 20), (3, 30)]);
}

#[test]
fn select_distinct_on_a_stream_drops_duplicate_rows_across_batches_in_append_mode() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(
        &input,
        "1.json",
        &(ev(1, "00:00", 10) + &ev(1, "00:00", 10) + &ev(2, "00:00", 20)),
        0,
    );
    put_file(
        &input,
        "2.json",
        &(ev(1, "00:00", 10) + &ev(1, "00:00", 11) + &ev(3, "00:01", 30)),
        1,
    );
    let s = Session::builder().build().expect("session");
    s.read_stream()
        .schema("id BIGINT, ts TIMESTAMP, v BIGINT")
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().expect("p"))
        .expect("load")
        .create_or_replace_temp_view("events")
        .expect("view");
    // Spark: distinct on a stream is dropDuplicates() on all columns, fine in append mode
    let q = s
        .sql("SELECT DISTINCT id, v FROM events WHERE v > 0")
        .expect("sql")
        .write_stream()
        .format("memory")
        .query_name("distinct_rows")
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(w.path().join("chk"))
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let rows = s
        .sql("SELECT id, v FROM distinct_rows ORDER BY id, v")
        .expect("sql")
        .collect()
        .expect("collect");
    let got: Vec<(i64, i64)> = rows
        .iter()
        .flat_map(|b| {
            let id = b.column(0).as_primitive::<Int64Type>().clone();
            let v = b.column(1).as_primitive::<Int64Type>().clone();
            (0..b.num_rows()).map(move |i| (id.value(i), v.value(i)))
        })
        .collect();
    assert_eq!(got, vec![(1, 10), (1, 11), (2, 20), (3, 30)]);
    let p = q.last_progress().expect("progress");
    assert_eq!(
        p.state_operators.len(),
        1,
        "one dedup operator keeps the rows"
    );
}

#[test]
fn late_rows_are_dropped_even_when_the_event_time_is_not_a_key() {
    // watermark delay 10 minutes; the previous batch's watermark decides lateness (Spark):
    // batch 2 runs after 00:30 was seen (watermark 00:20) but judges lateness by batch 1's
    // watermark (the day before), so 3@00:05 passes; batch 3 judges by 00:20, so 4@00:06 is late
    for within in [false, true] {
        let w = workdir();
        let input = w.path().join("in");
        put_file(&input, "1.json", &ev(1, "00:00", 10), 0);
        put_file(&input, "2.json", &ev(2, "00:30", 20), 1);
        put_file(&input, "3.json", &ev(3, "00:05", 30), 2);
        put_file(
            &input,
            "4.json",
            &(ev(4, "00:06", 40) + &ev(5, "00:40", 50)),
            3,
        );
        assert_eq!(
            run(&input, &w.path().join("chk"), within),
            vec![(1, 10), (2, 20), (3, 30), (5, 50)],
            "within watermark: {within}"
        );
    }
}
