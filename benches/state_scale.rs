//! State scale: 10M distinct live groups through the RocksDB state (non-windowed count/sum by
//! key, update mode, foreach_batch sink), 100 batches of 100k new keys each, then 20 batches
//! that update keys already in state. Reports the process's peak RSS and the share of batch
//! time spent committing state.
//!
//! `cargo bench --bench state_scale -- [--groups N] [--files N]`

use std::fmt::Write as _;
use std::time::Instant;

use sluice::prelude::*;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Keeps every progress report.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<sluice::QueryProgress>>);

impl sluice::StreamingQueryListener for Collect {
    fn on_query_progress(&self, p: &sluice::QueryProgress) {
        if let Ok(mut v) = self.0.lock() {
            v.push(p.clone());
        }
    }
}

fn main() -> sluice::Result<()> {
    let groups = arg("--groups", 10_000_000);
    let files = arg("--files", 100);
    let dir = tempfile::tempdir().map_err(|e| sluice::EngineError::external(e.to_string()))?;
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).map_err(|e| sluice::EngineError::io(&input, e))?;
    let per_file = groups / files;
    let write = |f: u64, from: u64, to: u64| -> sluice::Result<()> {
        let mut body = String::with_capacity(((to - from) * 14) as usize);
        for id in from..to {
            let _ = writeln!(body, "{id},{}", id % 13);
        }
        let tmp = input.join(format!(".f{f:05}.tmp"));
        std::fs::write(&tmp, body).map_err(|e| sluice::EngineError::io(&tmp, e))?;
        std::fs::rename(&tmp, input.join(format!("f{f:05}.csv")))
            .map_err(|e| sluice::EngineError::io(&tmp, e))?;
        // mtime order = file order
        std::thread::sleep(std::time::Duration::from_millis(5));
        Ok(())
    };
    for f in 0..files {
        write(f, f * per_file, (f + 1) * per_file)?;
    }
    for f in 0..files / 5 {
        let from = (f * 5 + 2) * per_file + per_file / 3;
        write(files + f, from, from + per_file)?;
    }
    let session = Session::builder().app_name("state-scale").build()?;
    // every batch's progress (the query keeps only the last 100)
    let all = std::sync::Arc::new(Collect::default());
    session.add_listener(all.clone());
    let t0 = Instant::now();
    let query = session
        .read_stream()
        .schema("id BIGINT, v BIGINT")
        .option("maxFilesPerTrigger", 1)
        .csv(input.to_str().unwrap_or_default())?
        .group_by([col("id")])
        .agg([count(lit(1)).alias("n"), sum(col("v")).alias("total")])?
        .write_stream()
        .option("minDeltasForSnapshot", arg("--snapshot-interval", 10))
        .output_mode(OutputMode::Update)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(dir.path().join("chk"))
        .foreach_batch(|_, _| Ok(()))
        .start()?;
    query.await_termination()?;
    let wall = t0.elapsed().as_secs_f64();
    let progress = all.0.lock().map(|p| p.clone()).unwrap_or_default();
    let trigger_ms: u64 = progress
        .iter()
        .map(|p| p.duration_ms.trigger_execution)
        .sum();
    let commit_ms: u64 = progress
        .iter()
        .flat_map(|p| p.state_operators.iter().map(|s| s.commit_time_ms))
        .sum();
    let total = progress
        .last()
        .and_then(|p| p.state_operators.first().map(|s| s.num_rows_total))
        .unwrap_or(0);
    let mut commits: Vec<u64> = progress
        .iter()
        .flat_map(|p| p.state_operators.iter().map(|s| s.commit_time_ms))
        .collect();
    commits.sort_unstable();
    if let (Some(max), false) = (commits.last(), commits.is_empty()) {
        println!(
            "state commit per batch: p50 {} ms, p90 {} ms, max {max} ms",
            commits[commits.len() / 2],
            commits[commits.len() * 9 / 10]
        );
    }
    let rss = peak_rss_mib();
    let commit_pct = 100.0 * commit_ms as f64 / trigger_ms.max(1) as f64;
    println!(
        "sluice state scale: {total} live groups in state after {} batches ({wall:.1} s, {:.0} ms per batch)",
        progress.len(),
        trigger_ms as f64 / progress.len().max(1) as f64
    );
    println!(
        "peak RSS {rss:.0} MiB (target < 1024 MiB: {}); state commit {commit_pct:.1}% of batch time \
         (target <= 10%: {})",
        if rss < 1024.0 { "met" } else { "NOT met" },
        if commit_pct <= 10.0 { "met" } else { "NOT met" }
    );
    Ok(())
}
