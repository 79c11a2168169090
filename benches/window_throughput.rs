//! Throughput of the golden windowed query over JSON event files, as Spark's
//! ../shared/bench/spark/spark_window_agg.py runs it: json source with explicit schema,
//! maxFilesPerTrigger 10, 10-minute watermark, 1-minute window count/sum/avg/max by action,
//! append mode into a Parquet file sink, trigger available-now.
//!
//! `cargo bench --bench window_throughput -- [--input DIR] [--max-files N]`
//! (default input `$BENCH_DATA/ev_10m`, made by
//! `python3 ../shared/bench/spark/gen_events.py --out $BENCH_DATA/ev_10m --events 10000000 --files 200 --span-min 200 --seed 2 --force`).

use std::time::Instant;

use sluice::prelude::*;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> sluice::Result<()> {
    let data = std::env::var("BENCH_DATA").unwrap_or_else(|_| "/tmp/sluice-bench".into());
    let input = arg("--input").unwrap_or_else(|| format!("{data}/ev_10m"));
    let max_files = arg("--max-files").unwrap_or_else(|| "10".into());
    let dir = tempfile::tempdir().map_err(|e| sluice::EngineError::external(e.to_string()))?;
    let session = Session::builder().app_name("throughput").build()?;
    let t0 = Instant::now();
    session
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .option("maxFilesPerTrigger", &max_files)
        .json(&input)?
        .with_watermark("event_time", "10 minutes")?
        .create_or_replace_temp_view("events")?;
    let query = session
        .sql(
            "SELECT window.start AS window_start, window.end AS window_end, action, count(*) AS count, \
             sum(value) AS sum, avg(value) AS avg, max(value) AS max \
             FROM events GROUP BY window(event_time, '1 minute'), action",
        )?
        .write_stream()
        .format("parquet")
        .option("path", dir.path().join("out").to_string_lossy())
        .checkpoint_location(dir.path().join("chk"))
        .trigger(Trigger::AvailableNow)
        .start()?;
    query.await_termination()?;
    let wall = t0.elapsed().as_secs_f64();
    let progress = query.recent_progress();
    let events: u64 = progress.iter().map(|p| p.num_input_rows).sum();
    let out: u64 = progress.iter().map(|p| p.sink.num_output_rows).sum();
    let trigger_ms: u64 = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .sum();
    let state_ms: u64 = progress
        .iter()
        .flat_map(|p| p.state_operators.iter().map(|s| s.commit_time_ms))
        .sum();
    let get_ms: u64 = progress.iter().map(|p| p.duration_ms.get_batch).sum();
    let add_ms: u64 = progress.iter().map(|p| p.duration_ms.add_batch).sum();
    println!("time in batches: {trigger_ms} ms (reading+parsing {get_ms} ms, plan+sink+state {add_ms} ms)");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "sluice window throughput: {events} events, {out} rows out, {} batches, {wall:.2} s wall = {:.0} events/s \
         ({:.0} events/s per core over {cores} cores); state commit {:.1}% of batch time",
        progress.len(),
        events as f64 / wall,
        events as f64 / wall / cores as f64,
        100.0 * state_ms as f64 / trigger_ms.max(1) as f64
    );
    Ok(())
}
