//! With no late data, how input is split into batches does not change the result: the windowed
//! aggregation run with maxFilesPerTrigger 1, 3 and all, and over the same events from a Kafka
//! topic (a real broker) with maxOffsetsPerTrigger 500, 4000 and unlimited, gives the same final
//! rows in append mode and the same last-emitted rows in update mode (Spark's rule 7 says this
//! holds only without late data); and so does the number of state partitions (1, 2, 8).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::*;
use sluice::prelude::*;

fn generate(dir: &Path, seed: u32) {
    let gen = common::repo_dir().join("testdata/bench/spark/gen_events.py");
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

const SCHEMA: &str =
    "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING";

/// Where the events come from, and how many per batch.
enum Input<'a> {
    Files {
        dir: &'a Path,
        max_files: usize,
    },
    Kafka {
        bootstrap: &'a str,
        max_offsets: Option<u64>,
    },
}

/// Runs the query; returns (window_start, action) -> "count,sum,avg,max" of the last row emitted.
fn run(input: Input<'_>, mode: OutputMode) -> BTreeMap<String, String> {
    run_partitioned(input, mode, 2)
}

/// [`run`] with the state in `partitions` partitions.
fn run_partitioned(
    input: Input<'_>,
    mode: OutputMode,
    partitions: usize,
) -> BTreeMap<String, String> {
    let s = Session::builder()
        .config("spark.sql.shuffle.partitions", partitions.to_string())
        .build()
        .expect("session");
    let stream = match input {
        Input::Files { dir, max_files } => s
            .read_stream()
            .schema(SCHEMA)
            .option("maxFilesPerTrigger", max_files)
            .json(dir.to_str().expect("p")),
        Input::Kafka {
            bootstrap,
            max_offsets,
        } => {
            let mut r = s
                .read_stream()
                .format("kafka")
                .schema(SCHEMA)
                .option("kafka.bootstrap.servers", bootstrap)
                .option("subscribe", "events")
                .option("startingOffsets", "earliest");
            if let Some(n) = max_offsets {
                r = r.option("maxOffsetsPerTrigger", n);
            }
            r.load_default()
        }
    };
    stream
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

fn files(dir: &Path, max_files: usize) -> Input<'_> {
    Input::Files { dir, max_files }
}

#[test]
fn batch_sizes_do_not_change_results_without_late_data() {
    let w = workdir();
    generate(w.path(), 11);
    for mode in [OutputMode::Append, OutputMode::Update] {
        let one = run(files(w.path(), 1), mode);
        assert!(one.len() > 100, "{mode}: {} groups", one.len());
        assert_eq!(
            run(files(w.path(), 3), mode),
            one,
            "{mode}: 3 files per batch"
        );
        assert_eq!(
            run(files(w.path(), 1000), mode),
            one,
            "{mode}: all files in one batch"
        );
        // nor does the number of state partitions
        for partitions in [1, 8] {
            assert_eq!(
                run_partitioned(files(w.path(), 1), mode, partitions),
                one,
                "{mode}: {partitions} state partitions"
            );
        }
    }
}

#[test]
fn kafka_batch_sizes_do_not_change_results_without_late_data() {
    let w = workdir();
    generate(w.path(), 12);
    // the same events, in file order, spread over two partitions of a real broker
    let broker = common::kafka::Broker::start();
    broker.create_topic("events", 2);
    let mut names: Vec<_> = std::fs::read_dir(w.path())
        .expect("ls")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    let mut records = Vec::new();
    for f in &names {
        for line in std::fs::read_to_string(f).expect("read").lines() {
            let i = records.len();
            records.push((
                (i % 2) as i32,
                i.to_string(),
                line.to_string(),
                1_700_000_000_000,
            ));
        }
    }
    assert_eq!(records.len(), 30000);
    common::kafka::produce(&broker.bootstrap(), "events", &records);
    let bootstrap = broker.bootstrap();
    let kafka = |max_offsets| Input::Kafka {
        bootstrap: &bootstrap,
        max_offsets,
    };
    for mode in [OutputMode::Append, OutputMode::Update] {
        let from_files = run(files(w.path(), 1), mode);
        assert!(
            from_files.len() > 100,
            "{mode}: {} groups",
            from_files.len()
        );
        for max in [Some(500), Some(4000), None] {
            assert_eq!(
                run(kafka(max), mode),
                from_files,
                "{mode}: kafka, maxOffsetsPerTrigger {max:?}"
            );
        }
    }
}
