//! With no late data, how input is split into batches does not change the result: the windowed
//! aggregation run with maxFilesPerTrigger 1, 3 and all gives the same final rows in append mode
//! and the same last-emitted rows in update mode (Spark's rule 7 says this holds only without
//! late data).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::*;
use sluice::prelude::*;

fn generate(dir: &Path, seed: u32) {
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/spark/gen_events.py");
    let st = Command::new("python3")
        .arg(gen)
        .args([
            "--events",
            "30000",
            "--files",
            "12",
            "--span-min",
            "40",
            "--late-frac",
            "0",
        ])
        .args([
            "--very-late-frac",
            "0",
            "--seed",
            &seed.to_string(),
            "--force",
            "--out",
        ])
        .arg(dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("python3");
    assert!(st.success());
}

/// Runs the query; returns (window_start, action) -> "count,sum,avg,max" of the last row emitted.
fn run(input: &Path, mode: OutputMode, max_files: usize) -> BTreeMap<String, String> {
    let s = Session::builder().build().expect("session");
    s.read_stream()
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .option("maxFilesPerTrigger", max_files)
        .json(input.to_str().expect("p"))
        .expect("load")
        .with_watermark("event_time", "10 minutes")
        .expect("wm")
        .group_by([window(col("event_time"), "1 minute"), col("action")])
        .agg([
            count(lit(1)).alias("count"),
            sum(col("value")).alias("sum"),
            avg(col("value")).alias("avg"),
            max(col("value")).alias("max"),
        ])
        .expect("agg")
        .select([
            get_field(col("window"), "start").alias("ws"),
            col("action"),
            col("count"),
            col("sum"),
            col("avg"),
            col("max"),
        ])
        .expect("select")
        .create_or_replace_temp_view("result_src")
        .expect("view");
    let rows: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let sink = Arc::clone(&rows);
    let q = s
        .table("result_src")
        .expect("table")
        .write_stream()
        .output_mode(mode)
        .trigger(Trigger::AvailableNow)
        .foreach_batch(move |_, batches| {
            let mut out = sink.lock().expect("lock");
            let opts = FormatOptions::default();
            for b in batches {
                let f: Vec<ArrayFormatter<'_>> = b
                    .columns()
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("fmt"))
                    .collect();
                for i in 0..b.num_rows() {
                    let cells: Vec<String> = f.iter().map(|f| f.value(i).to_string()).collect();
                    out.insert(format!("{},{}", cells[0], cells[1]), cells[2..].join(","));
                }
            }
            Ok(())
        })
        .start()
        .expect("start");
    q.await_termination().expect("done");
    let r = rows.lock().expect("lock").clone();
    r
}

#[test]
fn batch_sizes_do_not_change_results_without_late_data() {
    let w = workdir();
    generate(w.path(), 11);
    for mode in [OutputMode::Append, OutputMode::Update] {
        let one = run(w.path(), mode, 1);
        assert!(one.len() > 100, "{mode}: {} groups", one.len());
        assert_eq!(run(w.path(), mode, 3), one, "{mode}: 3 files per batch");
        assert_eq!(
            run(w.path(), mode, 1000),
            one,
            "{mode}: all files in one batch"
        );
    }
}
