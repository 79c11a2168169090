//! What the benchmarks share: their command-line arguments, the Spark baseline's interpreter,
//! the bench scripts' folder, medians, and the process's peak memory.

#![allow(dead_code)]

use std::path::PathBuf;

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether `name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A benchmark's failure (its setup or an external program).
pub fn err(msg: impl std::fmt::Display) -> sluice::EngineError {
    sluice::EngineError::external(msg.to_string())
}

/// The repository's root.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// testdata/bench/spark: the Spark baseline's scripts and the input generators.
pub fn shared_bench() -> PathBuf {
    repo().join("testdata/bench/spark")
}

/// The Python that runs PySpark (`$SPARK_PYTHON`, default `~/venvs/spark/bin/python`).
pub fn spark_python() -> PathBuf {
    std::env::var("SPARK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join("venvs/spark/bin/python")
        })
}

/// Fails with how to set Spark up when it is missing.
pub fn require_spark() -> sluice::Result<()> {
    if spark_python().exists() {
        return Ok(());
    }
    Err(err(format!(
        "{} not found: set up Spark as testdata/bench/README.md says \
         (python3 -m venv ~/venvs/spark && ~/venvs/spark/bin/pip install pyspark==4.3.0), \
         set SPARK_PYTHON, or pass --no-spark",
        spark_python().display()
    )))
}

/// Generates a benchmark's input into `dir` with `script` (a Python generator taking `--out`)
/// and `args`, unless it is there already (its `_manifest.json` exists).
pub fn ensure_input(
    dir: &std::path::Path,
    script: &std::path::Path,
    args: &[&str],
) -> sluice::Result<()> {
    if dir.join("_manifest.json").is_file() {
        return Ok(());
    }
    eprintln!(
        "generating {} ({} {})...",
        dir.display(),
        script.display(),
        args.join(" ")
    );
    let st = std::process::Command::new("python3")
        .arg(script)
        .args(["--out", &dir.to_string_lossy()])
        .args(args)
        .arg("--force")
        .status()
        .map_err(|e| err(format!("python3 {}: {e}", script.display())))?;
    if !st.success() {
        return Err(err(format!("{} failed: {st}", script.display())));
    }
    Ok(())
}

/// The 10M-event input of the windowed-aggregation benches (`--input DIR`, default
/// `$BENCH_DATA/ev_10m`, `BENCH_DATA` defaulting to /tmp/sluice-bench), generated when missing.
pub fn window_input() -> sluice::Result<String> {
    let data = std::env::var("BENCH_DATA").unwrap_or_else(|_| "/tmp/sluice-bench".into());
    let input = arg("--input").unwrap_or_else(|| format!("{data}/ev_10m"));
    ensure_input(
        std::path::Path::new(&input),
        &shared_bench().join("gen_events.py"),
        &[
            "--events",
            "10000000",
            "--files",
            "200",
            "--span-min",
            "200",
            "--seed",
            "2",
        ],
    )?;
    Ok(input)
}

/// Starts the windowed aggregation the windowed benches measure (Spark's
/// `spark_window_agg.py`): `input`'s JSON events, `maxFilesPerTrigger` `max_files`, a 10-minute
/// watermark, 1-minute windows by action, append mode into Parquet at `out`, available-now.
pub fn start_window_query(
    session: &sluice::Session,
    input: &str,
    max_files: &str,
    out: &str,
    checkpoint: &str,
) -> sluice::Result<sluice::StreamingQuery> {
    use sluice::prelude::*;
    session
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .option("maxFilesPerTrigger", max_files)
        .json(input)?
        .with_watermark("event_time", "10 minutes")?
        .create_or_replace_temp_view("events")?;
    session
        .sql(
            "SELECT window.start AS window_start, window.end AS window_end, action, count(*) AS count, \
             sum(value) AS sum, avg(value) AS avg, max(value) AS max \
             FROM events GROUP BY window(event_time, '1 minute'), action",
        )?
        .write_stream()
        .format("parquet")
        .option("path", out)
        .checkpoint_location(checkpoint)
        .trigger(Trigger::AvailableNow)
        .start()
}

/// The median.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The process's peak resident memory so far (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `SUMMARY {json}` line a Spark baseline script prints.
pub fn spark_summary(out: &std::process::Output) -> sluice::Result<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .ok_or_else(|| {
            err(format!(
                "Spark printed no SUMMARY ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            ))
        })?;
    serde_json::from_str(summary).map_err(err)
}
