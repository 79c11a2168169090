//! File-arrival latency: time from a file being renamed into a watched directory to its batch
//! being committed (sink written, commit log entry fsynced), over many files, one at a time.
//!
//! `cargo bench --bench file_arrival_latency -- [--files N] [--events-per-file N] [--gap-ms N]`
//! (defaults: 220 files, the first 20 are warm-up, 1000 events each, like the Spark probe in
//! testdata/bench/spark/spark_latency_probe.py). The query parses the JSON events, filters and
//! projects them, and writes them to the exactly-once CSV file sink; with `--windowed`, it runs
//! Spark's probe query instead (windowed aggregation, update mode, a Parquet file per batch).

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::prelude::*;
use sluice::{QueryProgress, StreamingQueryListener};

struct Committed(Mutex<mpsc::Sender<(u64, Instant)>>);

impl StreamingQueryListener for Committed {
    fn on_query_progress(&self, p: &QueryProgress) {
        let _ = self
            .0
            .lock()
            .map(|tx| tx.send((p.num_input_rows, Instant::now())));
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> sluice::Result<()> {
    let files = arg("--files", 220);
    let warmup = 20.min(files / 2);
    let events = arg("--events-per-file", 1000);
    let gap = Duration::from_millis(arg("--gap-ms", 50));
    let dir = tempfile::tempdir().map_err(|e| sluice::EngineError::external(e.to_string()))?;
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).map_err(|e| sluice::EngineError::io(&input, e))?;

    let session = Session::builder().app_name("latency").build()?;
    let (tx, rx) = mpsc::channel();
    session.add_listener(Arc::new(Committed(Mutex::new(tx))));
    let windowed = std::env::args().any(|a| a == "--windowed");
    let events_df = session
        .read_stream()
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .json(input.to_str().unwrap_or_default())?;
    let query = if windowed {
        // Spark's probe query: 1-minute window count/sum/avg/max by action, 10-minute watermark,
        // update mode, each batch written as a Parquet file by foreach_batch
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).map_err(|e| sluice::EngineError::io(&out, e))?;
        events_df
            .with_watermark("event_time", "10 minutes")?
            .group_by([window(col("event_time"), "1 minute"), col("action")])
            .agg([
                count(lit(1)).alias("count"),
                sum(col("value")).alias("sum"),
                avg(col("value")).alias("avg"),
                max(col("value")).alias("max"),
            ])?
            .write_stream()
            .output_mode(OutputMode::Update)
            .checkpoint_location(dir.path().join("chk"))
            .foreach_batch(move |id, batches| {
                let Some(first) = batches.first() else {
                    return Ok(());
                };
                let path = out.join(format!("batch-{id}.parquet"));
                let file =
                    std::fs::File::create(&path).map_err(|e| sluice::EngineError::io(&path, e))?;
                let mut w = parquet::arrow::ArrowWriter::try_new(file, first.schema(), None)
                    .map_err(|e| sluice::EngineError::external(e.to_string()))?;
                for b in batches {
                    w.write(b)
                        .map_err(|e| sluice::EngineError::external(e.to_string()))?;
                }
                w.close()
                    .map_err(|e| sluice::EngineError::external(e.to_string()))?;
                Ok(())
            })
            .start()?
    } else {
        events_df
            .filter(col("value").gt(lit(10.0)))?
            .select([col("event_time"), col("action"), col("value")])?
            .write_stream()
            .format("csv")
            .option("path", dir.path().join("out").to_str().unwrap_or_default())
            .checkpoint_location(dir.path().join("chk"))
            .start()?
    };

    let mut latencies = Vec::new();
    for f in 0..files {
        let body: String = (0..events)
            .map(|i| {
                let ms = (f * events + i) * 60;
                format!(
                    "{{\"event_time\":\"{}\",\"action\":\"a{}\",\"user_id\":{i},\"value\":{}.25,\"country\":\"DE\"}}\n",
                    chrono::DateTime::from_timestamp_millis(1_735_689_600_000 + ms as i64)
                        .unwrap_or_default()
                        .format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                    i % 20,
                    i % 200
                )
            })
            .collect();
        let tmp = input.join(format!(".f{f:05}.json.tmp"));
        std::fs::write(&tmp, body).map_err(|e| sluice::EngineError::io(&tmp, e))?;
        let arrived = Instant::now();
        std::fs::rename(&tmp, input.join(format!("f{f:05}.json")))
            .map_err(|e| sluice::EngineError::io(&tmp, e))?;
        // (a windowed query may run a no-data batch when the watermark moves: not this file's)
        let (rows, committed) = loop {
            let (rows, at) = rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| sluice::EngineError::external("no batch within 60 s"))?;
            if rows > 0 {
                break (rows, at);
            }
        };
        assert_eq!(rows, events, "one file per batch");
        if f >= warmup {
            latencies.push(committed.duration_since(arrived).as_secs_f64() * 1000.0);
        }
        std::thread::sleep(gap);
    }
    query.stop();
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "sluice file-arrival latency ({}) over {} files of {events} events (rename -> batch committed): \
         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if windowed { "windowed aggregation, update, foreach_batch parquet" } else { "filter+project, csv sink" },
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    Ok(())
}
