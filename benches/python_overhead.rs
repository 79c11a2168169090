//! What the Python API costs: the windowed aggregation of `window_throughput` (json source with
//! explicit schema, maxFilesPerTrigger 10, 10-minute watermark, 1-minute window
//! count/sum/avg/max by action, append into Parquet, available-now) over 10M events, run from
//! Rust with the DataFrame API and from Python with PySpark's API (python/benches/window_agg.py,
//! the same engine through the `sluice` package), and from Python with a `pandas_udf` scoring
//! every event before the aggregation. Every run is a new process (the Rust one is this bench
//! started again with `--child-rust`), so both sides start cold alike. After an untimed warm-up,
//! runs alternate (Rust, Python, Python+UDF, ...); the ratios use the medians. Target: the
//! Python API costs at most 5%.
//!
//! `cargo bench --bench python_overhead -- [--input DIR] [--max-files N] [--runs N]`, with
//! `SLUICE_BENCH_PYTHON` a Python whose `sluice` package was installed in release mode
//! (`python3 -m venv V && V/bin/pip install pandas ./python`; default
//! `~/.cache/sluice-bench-venv/bin/python`). The input is the one `window_throughput` uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sluice::functions::{avg, count, get_field, max, sum, window};
use sluice::prelude::*;

mod common;
use common::{arg, err, median, repo};

fn run_rust(input: &str, max_files: &str) -> sluice::Result<(f64, u64)> {
    let dir = tempfile::tempdir().map_err(err)?;
    let session = Session::builder().app_name("rust-bench").build()?;
    let t0 = Instant::now();
    let agg = session
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .option("maxFilesPerTrigger", max_files)
        .json(input)?
        .with_watermark("event_time", "10 minutes")?
        .group_by([window(col("event_time"), "1 minute"), col("action")])
        .agg([
            count(lit(1)).alias("count"),
            sum(col("value")).alias("sum"),
            avg(col("value")).alias("avg"),
            max(col("value")).alias("max"),
        ])?
        .select([
            get_field(col("window"), "start").alias("window_start"),
            get_field(col("window"), "end").alias("window_end"),
            col("action"),
            col("count"),
            col("sum"),
            col("avg"),
            col("max"),
        ])?;
    let q = agg
        .write_stream()
        .format("parquet")
        .option("path", dir.path().join("out").to_string_lossy())
        .checkpoint_location(dir.path().join("chk"))
        .trigger(Trigger::AvailableNow)
        .start()?;
    q.await_termination()?;
    let wall = t0.elapsed().as_secs_f64();
    Ok((
        wall,
        q.recent_progress().iter().map(|p| p.num_input_rows).sum(),
    ))
}

/// One run in a new process (both sides start cold alike: a fresh heap, thread pools, RocksDB);
/// the child prints `{"wall_s", "events"}` last.
fn run_child(mut cmd: Command, what: &str) -> sluice::Result<(f64, u64)> {
    let out = cmd.output().map_err(err)?;
    if !out.status.success() {
        return Err(err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line.trim()).map_err(err)?;
    Ok((
        v["wall_s"].as_f64().unwrap_or(f64::NAN),
        v["events"].as_u64().unwrap_or(0),
    ))
}

fn rust_child(input: &str, max_files: &str) -> sluice::Result<(f64, u64)> {
    let mut cmd = Command::new(std::env::current_exe().map_err(err)?);
    cmd.args(["--child-rust", "--input", input, "--max-files", max_files]);
    run_child(cmd, "the Rust run")
}

fn python_child(
    python: &Path,
    input: &str,
    max_files: &str,
    udf: bool,
) -> sluice::Result<(f64, u64)> {
    let script = repo().join("python/benches/window_agg.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).args([input, max_files]);
    if udf {
        cmd.arg("--udf");
    }
    run_child(cmd, &script.display().to_string())
}

fn main() -> sluice::Result<()> {
    let input = common::window_input()?;
    let max_files = arg("--max-files").unwrap_or_else(|| "10".into());
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(3);
    let python = std::env::var("SLUICE_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/sluice-bench-venv/bin/python")
        });
    if common::flag("--child-rust") {
        let (wall, events) = run_rust(&input, &max_files)?;
        println!("{}", serde_json::json!({"wall_s": wall, "events": events}));
        return Ok(());
    }
    // one untimed run first: the input in the page cache for every timed run
    let (w, _) = rust_child(&input, &max_files)?;
    println!("warm-up (rust, not counted): {w:.2} s");
    let (mut rust, mut py, mut py_udf) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs.max(1) {
        let (r, n) = rust_child(&input, &max_files)?;
        println!(
            "rust        run {i}: {n} events in {r:.2} s = {:.0} events/s",
            n as f64 / r
        );
        rust.push(r);
        let (p, m) = python_child(&python, &input, &max_files, false)?;
        println!(
            "python      run {i}: {m} events in {p:.2} s = {:.0} events/s",
            m as f64 / p
        );
        if m != n {
            return Err(err(format!("python read {m} events, rust {n}")));
        }
        py.push(p);
        let (u, k) = python_child(&python, &input, &max_files, true)?;
        println!(
            "python+udf  run {i}: {k} events in {u:.2} s = {:.0} events/s",
            k as f64 / u
        );
        py_udf.push(u);
    }
    let (r, p, u) = (median(rust), median(py), median(py_udf));
    println!(
        "RATIO python/rust = {:.3} (the Python API costs {:+.1}%, target <= 5%)",
        p / r,
        100.0 * (p / r - 1.0)
    );
    println!(
        "RATIO python+pandas_udf/rust = {:.3} (a pandas_udf over every event costs {:+.1}%)",
        u / r,
        100.0 * (u / r - 1.0)
    );
    Ok(())
}
