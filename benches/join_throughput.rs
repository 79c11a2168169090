//! Throughput and state size of the `ss_inner` stream-stream join (testdata/golden/spark-join),
//! Sluice against Spark in the same run: impressions JOIN clicks on ad_id with the click within
//! an hour after the impression, both streams JSON with maxFilesPerTrigger N, watermarks 10 and
//! 20 minutes, append mode into Parquet, trigger available-now — as
//! testdata/bench/spark/spark_join.py runs it on Spark (local[2], HDFS state, 2 shuffle
//! partitions).
//!
//! `cargo bench --bench join_throughput -- [--input DIR] [--max-files N] [--runs N] [--no-spark]
//! [--partitions N]`
//!
//! The input (default `$BENCH_DATA/ads_1m`, `BENCH_DATA` defaulting to /tmp/sluice-bench) is
//! generated when missing with
//! `python3 testdata/golden/spark-join/gen_ads.py --out DIR --seed 5 --files 40 --per-file 26000 --click-prob 0.95`:
//! 1.02M impressions and 1.10M clicks over 10 hours of event time. Besides rows/s it reports the
//! peak number of rows the join held (its `numRowsTotal`) against the input, and the peak RSS.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sluice::functions::{col, interval};
use sluice::prelude::*;

mod common;
use common::{
    arg, err, flag, median, peak_rss_mib, repo, require_spark, spark_python, spark_summary,
};

struct Run {
    rows: u64,
    rows_out: u64,
    wall_s: f64,
    peak_state: u64,
    /// Sluice only: the share of batch time spent reading and parsing, and committing state.
    parse_pct: f64,
    commit_pct: f64,
}

fn run_sluice(input: &str, max_files: &str) -> sluice::Result<Run> {
    let dir = tempfile::tempdir().map_err(err)?;
    let mut builder = Session::builder().app_name("join-throughput");
    if let Some(n) = arg("--partitions") {
        builder = builder.config("spark.sql.shuffle.partitions", n);
    }
    let s = builder.build()?;
    let t0 = Instant::now();
    let read = |sub: &str, schema: &str, time: &str, delay: &str| -> sluice::Result<DataFrame> {
        s.read_stream()
            .schema(schema)
            .option("maxFilesPerTrigger", max_files)
            .json(format!("{input}/{sub}"))?
            .with_watermark(time, delay)
    };
    let i = read(
        "impressions",
        "impression_id BIGINT, ad_id BIGINT, campaign STRING, impression_time TIMESTAMP",
        "impression_time",
        "10 minutes",
    )?
    .alias("i")?;
    let c = read(
        "clicks",
        "click_id BIGINT, ad_id BIGINT, click_time TIMESTAMP, cost DOUBLE",
        "click_time",
        "20 minutes",
    )?
    .alias("c")?;
    let cond = col("i.ad_id")
        .eq(col("c.ad_id"))
        .and(col("c.click_time").gt_eq(col("i.impression_time")))
        .and(col("c.click_time").lt_eq(col("i.impression_time") + interval("1 hour")?));
    let q = i
        .join_on(c, cond, "inner")?
        .select([
            col("i.impression_id"),
            col("c.click_id"),
            col("i.ad_id").alias("ad_id"),
            col("i.campaign"),
            col("i.impression_time"),
            col("c.click_time"),
            col("c.cost"),
        ])?
        .write_stream()
        .format("parquet")
        .option("path", dir.path().join("out").to_string_lossy())
        .checkpoint_location(dir.path().join("chk"))
        .trigger(Trigger::AvailableNow)
        .start()?;
    q.await_termination()?;
    let wall_s = t0.elapsed().as_secs_f64();
    let progress = q.recent_progress();
    let total: u64 = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .sum();
    let share = |ms: u64| 100.0 * ms as f64 / total.max(1) as f64;
    Ok(Run {
        parse_pct: share(progress.iter().map(|p| p.duration_ms.get_batch).sum()),
        commit_pct: share(
            progress
                .iter()
                .flat_map(|p| p.state_operators.iter().map(|o| o.commit_time_ms))
                .sum(),
        ),
        rows: progress.iter().map(|p| p.num_input_rows).sum(),
        rows_out: progress.iter().map(|p| p.sink.num_output_rows).sum(),
        wall_s,
        peak_state: progress
            .iter()
            .flat_map(|p| p.state_operators.iter().map(|o| o.num_rows_total))
            .max()
            .unwrap_or(0),
    })
}

fn run_spark(input: &str, max_files: &str) -> sluice::Result<Run> {
    let work = tempfile::tempdir().map_err(err)?;
    let out = Command::new(spark_python())
        .arg(common::shared_bench().join("spark_join.py"))
        .args(["--input", input, "--max-files-per-trigger", max_files])
        .arg("--output")
        .arg(work.path().join("out"))
        .arg("--checkpoint")
        .arg(work.path().join("chk"))
        .output()
        .map_err(|e| err(format!("running Spark: {e}")))?;
    let v = spark_summary(&out)?;
    Ok(Run {
        rows: v["rows"].as_u64().unwrap_or(0),
        rows_out: v["output_rows"].as_u64().unwrap_or(0),
        wall_s: v["wall_s"].as_f64().unwrap_or(0.0),
        peak_state: v["peak_state_rows"].as_u64().unwrap_or(0),
        parse_pct: 0.0,
        commit_pct: 0.0,
    })
}

fn main() -> sluice::Result<()> {
    let data = std::env::var("BENCH_DATA").unwrap_or_else(|_| "/tmp/sluice-bench".into());
    let input = arg("--input").unwrap_or_else(|| format!("{data}/ads_1m"));
    let max_files = arg("--max-files").unwrap_or_else(|| "4".into());
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(3);
    common::ensure_input(
        Path::new(&input),
        &repo().join("testdata/golden/spark-join/gen_ads.py"),
        &[
            "--seed",
            "5",
            "--files",
            "40",
            "--per-file",
            "26000",
            "--click-prob",
            "0.95",
        ],
    )?;
    let with_spark = !flag("--no-spark");
    if with_spark {
        require_spark()?;
    }
    let mut sluice_rps = Vec::new();
    let mut spark_rps = Vec::new();
    let (mut sluice_out, mut spark_out) = (0, 0);
    for i in 0..runs.max(1) {
        let r = run_sluice(&input, &max_files)?;
        let rps = r.rows as f64 / r.wall_s;
        println!(
            "sluice run {i}: {} input rows, {} rows out, {:.2} s = {rps:.0} rows/s \
             (reading+parsing {:.0}% of batch time, state commit {:.0}%); \
             peak state {} rows = {:.1}% of the input; peak RSS {:.0} MiB",
            r.rows,
            r.rows_out,
            r.wall_s,
            r.parse_pct,
            r.commit_pct,
            r.peak_state,
            100.0 * r.peak_state as f64 / r.rows.max(1) as f64,
            peak_rss_mib()
        );
        sluice_rps.push(rps);
        sluice_out = r.rows_out;
        if with_spark && (i + 1 < runs || runs <= 1) {
            let s = run_spark(&input, &max_files)?;
            println!(
                "spark  run {i}: {} input rows, {} rows out, {:.2} s = {:.0} rows/s; peak state {} rows",
                s.rows,
                s.rows_out,
                s.wall_s,
                s.rows as f64 / s.wall_s,
                s.peak_state
            );
            spark_rps.push(s.rows as f64 / s.wall_s);
            spark_out = s.rows_out;
        }
    }
    let sl = median(sluice_rps);
    println!("sluice median: {sl:.0} rows/s");
    if !spark_rps.is_empty() {
        let sp = median(spark_rps);
        println!("spark  median: {sp:.0} rows/s (local[2])");
        println!(
            "RATIO sluice/spark = {:.1}x (target >= 10x); output rows sluice {sluice_out}, spark {spark_out}{}",
            sl / sp,
            if sluice_out == spark_out {
                " (equal)"
            } else {
                " (DIFFERENT)"
            }
        );
    }
    Ok(())
}
