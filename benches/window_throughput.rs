//! Throughput of the golden windowed query over JSON event files, Sluice against Spark in the
//! same run: json source with explicit schema, maxFilesPerTrigger 10, 10-minute watermark,
//! 1-minute window count/sum/avg/max by action, append mode into a Parquet file sink, trigger
//! available-now — as testdata/bench/spark/spark_window_agg.py runs it on Spark (local[2],
//! HDFS state, 2 shuffle partitions).
//!
//! `cargo bench --bench window_throughput -- [--input DIR] [--max-files N] [--runs N] [--no-spark]
//! [--partitions N]` (state partitions; default: the cores)
//!
//! The input (default `$BENCH_DATA/ev_10m`, `BENCH_DATA` defaulting to /tmp/sluice-bench) is
//! generated when missing with
//! `python3 testdata/bench/spark/gen_events.py --out DIR --events 10000000 --files 200 --span-min 200 --seed 2`.
//! Spark runs with `$SPARK_PYTHON` (default `~/venvs/spark/bin/python`; set it up as
//! testdata/bench/README.md says). Sluice and Spark alternate (Sluice, Spark, Sluice, ...) so
//! that both see the same machine; the ratio uses the median of each.

use std::process::Command;
use std::time::Instant;

use sluice::prelude::*;

mod common;
use common::{arg, err, flag, median, require_spark, shared_bench, spark_python, spark_summary};

struct SluiceRun {
    events: u64,
    rows_out: u64,
    wall_s: f64,
    state_commit_pct: f64,
    parse_pct: f64,
}

fn run_sluice(input: &str, max_files: &str) -> sluice::Result<SluiceRun> {
    let dir = tempfile::tempdir().map_err(err)?;
    let mut builder = Session::builder().app_name("throughput");
    if let Some(n) = arg("--partitions") {
        builder = builder.config("spark.sql.shuffle.partitions", n);
    }
    let session = builder.build()?;
    let t0 = Instant::now();
    let query = common::start_window_query(
        &session,
        input,
        max_files,
        &dir.path().join("out").to_string_lossy(),
        &dir.path().join("chk").to_string_lossy(),
    )?;
    query.await_termination()?;
    let wall_s = t0.elapsed().as_secs_f64();
    let progress = query.recent_progress();
    let trigger_ms: u64 = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .sum();
    let state_ms: u64 = progress
        .iter()
        .flat_map(|p| p.state_operators.iter().map(|s| s.commit_time_ms))
        .sum();
    let get_ms: u64 = progress.iter().map(|p| p.duration_ms.get_batch).sum();
    Ok(SluiceRun {
        events: progress.iter().map(|p| p.num_input_rows).sum(),
        rows_out: progress.iter().map(|p| p.sink.num_output_rows).sum(),
        wall_s,
        state_commit_pct: 100.0 * state_ms as f64 / trigger_ms.max(1) as f64,
        parse_pct: 100.0 * get_ms as f64 / trigger_ms.max(1) as f64,
    })
}

struct SparkRun {
    events: u64,
    events_per_s: f64,
    rows_out: u64,
}

fn run_spark(input: &str, max_files: &str) -> sluice::Result<SparkRun> {
    let work = tempfile::tempdir().map_err(err)?;
    let out = Command::new(spark_python())
        .arg(shared_bench().join("spark_window_agg.py"))
        .args(["--input", input, "--max-files-per-trigger", max_files])
        .args(["--state-store", "hdfs", "--shuffle-partitions", "2"])
        .args([
            "--sink",
            "parquet",
            "--mode",
            "append",
            "--count-output",
            "--quiet",
        ])
        .args(["--name", "sluice-bench"])
        .arg("--output")
        .arg(work.path().join("out"))
        .arg("--checkpoint")
        .arg(work.path().join("chk"))
        .output()
        .map_err(|e| err(format!("running Spark: {e}")))?;
    let v = spark_summary(&out)?;
    Ok(SparkRun {
        events: v["events"].as_u64().unwrap_or(0),
        events_per_s: v["events_per_s"].as_f64().unwrap_or(0.0),
        rows_out: v["output_rows"].as_u64().unwrap_or(0),
    })
}

fn main() -> sluice::Result<()> {
    let input = common::window_input()?;
    let max_files = arg("--max-files").unwrap_or_else(|| "10".into());
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(3);
    let with_spark = !flag("--no-spark");
    if with_spark {
        require_spark()?;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut sluice_eps = Vec::new();
    let mut spark_eps = Vec::new();
    let mut sluice_rows = 0;
    let mut spark_rows = 0;
    for i in 0..runs.max(1) {
        let r = run_sluice(&input, &max_files)?;
        let eps = r.events as f64 / r.wall_s;
        println!(
            "sluice run {i}: {} events, {} rows out, {:.2} s = {eps:.0} events/s \
             ({:.0} per core); reading+parsing {:.0}% of batch time, state commit {:.1}%",
            r.events,
            r.rows_out,
            r.wall_s,
            eps / cores as f64,
            r.parse_pct,
            r.state_commit_pct
        );
        sluice_eps.push(eps);
        sluice_rows = r.rows_out;
        // Sluice, Spark, Sluice, ...: Spark between Sluice runs (and once with a single run)
        if with_spark && (i + 1 < runs || runs <= 1) {
            let s = run_spark(&input, &max_files)?;
            println!(
                "spark  run {i}: {} events, {} rows out = {:.0} events/s",
                s.events, s.rows_out, s.events_per_s
            );
            spark_eps.push(s.events_per_s);
            spark_rows = s.rows_out;
        }
    }
    let sl = median(sluice_eps);
    println!(
        "sluice median: {sl:.0} events/s, {:.0} per core over {cores} cores \
         (Structured Streaming paper: ≈1.6M events/s per vCPU)",
        sl / cores as f64
    );
    if !spark_eps.is_empty() {
        let sp = median(spark_eps);
        println!("spark  median: {sp:.0} events/s (local[{cores}])");
        println!(
            "RATIO sluice/spark = {:.1}x (target >= 15x); output rows sluice {sluice_rows}, spark {spark_rows}{}",
            sl / sp,
            if sluice_rows == spark_rows {
                " (equal)"
            } else {
                " (DIFFERENT)"
            }
        );
    }
    Ok(())
}
