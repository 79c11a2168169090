//! State-heavy throughput on one worker thread against all cores, in the same run: a
//! non-windowed count/sum by key over Parquet files (cheap to read, so the time goes to the
//! stateful operator), 10M distinct keys, each batch adding 1M new keys and updating keys of
//! earlier batches, update mode into a no-op foreach_batch sink. Both runs split the state into
//! the same number of partitions (the cores); only the worker pool's cap
//! (`sluice.state.workerThreads`) differs.
//!
//! `cargo bench --bench state_parallel -- [--groups N] [--files N] [--per-batch N] [--runs N]`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use sluice::prelude::*;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn err(e: impl std::fmt::Display) -> sluice::EngineError {
    sluice::EngineError::external(e.to_string())
}

/// `files` Parquet files of `(id, v)`: file f holds ids `[f·n, (f+1)·n)` shuffled within the
/// file, plus a quarter as many ids of the previous file (updates of keys in state).
fn write_input(dir: &Path, groups: u64, files: u64) -> sluice::Result<()> {
    std::fs::create_dir_all(dir).map_err(err)?;
    let n = groups / files;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    for f in 0..files {
        let mut ids: Vec<i64> = (f * n..(f + 1) * n).map(|i| i as i64).collect();
        if f > 0 {
            ids.extend(((f - 1) * n..(f - 1) * n + n / 4).map(|i| i as i64));
        }
        // a fixed permutation: keys do not arrive sorted
        let len = ids.len();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ f;
        for i in (1..len).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ids.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let v: Vec<i64> = ids.iter().map(|i| i % 13).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(v)),
            ],
        )
        .map_err(err)?;
        let tmp = dir.join(format!(".f{f:05}.tmp"));
        let file = std::fs::File::create(&tmp).map_err(err)?;
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None).map_err(err)?;
        w.write(&batch).map_err(err)?;
        w.close().map_err(err)?;
        std::fs::rename(&tmp, dir.join(format!("f{f:05}.parquet"))).map_err(err)?;
        // mtime order = file order
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

struct Run {
    events: u64,
    secs: f64,
    state_rows: u64,
}

fn run(input: &Path, threads: usize, partitions: usize, per_batch: u64) -> sluice::Result<Run> {
    let dir = tempfile::tempdir().map_err(err)?;
    let session = Session::builder()
        .app_name("state-parallel")
        .config("spark.sql.shuffle.partitions", partitions.to_string())
        .config("sluice.state.workerThreads", threads.to_string())
        .build()?;
    let t0 = Instant::now();
    let query = session
        .read_stream()
        .schema("id BIGINT, v BIGINT")
        .option("maxFilesPerTrigger", per_batch)
        .parquet(input.to_str().unwrap_or_default())?
        .group_by([col("id")])
        .agg([count(lit(1)).alias("n"), sum(col("v")).alias("total")])?
        .write_stream()
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(dir.path().join("chk"))
        .foreach_batch(|_, _| Ok(()))
        .start()?;
    query.await_termination()?;
    let secs = t0.elapsed().as_secs_f64();
    let progress = query.recent_progress();
    Ok(Run {
        events: progress.iter().map(|p| p.num_input_rows).sum(),
        secs,
        state_rows: progress
            .last()
            .and_then(|p| p.state_operators.first())
            .map_or(0, |s| s.num_rows_total),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> sluice::Result<()> {
    let groups = arg("--groups", 10_000_000);
    let files = arg("--files", 10);
    let per_batch = arg("--per-batch", 1);
    let runs = arg("--runs", 3).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let data = tempfile::tempdir().map_err(err)?;
    let input = data.path().join("in");
    write_input(&input, groups, files)?;
    let (mut one, mut all) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // alternating, so that both see the same machine
        for (threads, into) in [(1, &mut one), (cores, &mut all)] {
            let r = run(&input, threads, cores, per_batch)?;
            let eps = r.events as f64 / r.secs;
            println!(
                "run {i}, {threads} worker thread(s), {cores} partitions: {} events in {:.2} s = \
                 {eps:.0} events/s; {} keys in state",
                r.events, r.secs, r.state_rows
            );
            into.push(eps);
        }
    }
    let (one, all) = (median(one), median(all));
    println!(
        "RATIO {cores} threads / 1 thread = {:.2}x (target >= 1.6x on 2 cores); \
         median {all:.0} vs {one:.0} events/s",
        all / one
    );
    Ok(())
}
