//! Delta soak: a small stream of many micro-batches (default 10,000 batches of 10 rows) through
//! the Delta sink, once without compaction (the baseline, same run) and once with
//! `optimizeEvery = 100` and log checkpoints every 100 commits. Reports the table's active data
//! files, the Parquet files on disk, the log files, and batches per second.
//!
//! `cargo bench --bench delta_soak -- [--batches N] [--baseline-batches N] [--rows N] [--every N]`

use std::sync::Arc;
use std::time::Instant;

use sluice::arrow::array::{Int64Array, RecordBatch, StringArray};
use sluice::arrow::datatypes::{DataType, Field, Schema};
use sluice::connectors::delta::DeltaSinkFactory;
use sluice::connectors::deltalake;
use sluice_engine::{Options, OutputMode, SinkContext, SinkFactory, SinkSpec};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Outcome {
    active_files: usize,
    parquet_on_disk: usize,
    log_files: usize,
    batches_per_s: f64,
}

fn count(dir: &std::path::Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(ext))
                .count()
        })
        .unwrap_or(0)
}

fn soak(batches: u64, rows: u64, every: Option<u64>) -> sluice::Result<Outcome> {
    let dir = tempfile::tempdir().map_err(|e| sluice::EngineError::external(e.to_string()))?;
    let table = dir.path().join("t");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("action", DataType::Utf8, true),
    ]));
    let mut options = Options::new();
    options.set("path", table.to_string_lossy());
    if let Some(n) = every {
        options.set("optimizeEvery", n.to_string());
        options.set("checkpointInterval", "100");
    }
    let spec = SinkSpec {
        format: "delta".into(),
        options,
        output_mode: OutputMode::Append,
    };
    let ctx = SinkContext {
        query_id: "soak".into(),
        query_name: None,
        schema: Arc::clone(&schema),
        key_columns: None,
        checkpoint_dir: dir.path().join("chk"),
        session: sluice::datafusion::prelude::SessionContext::new(),
        task: None,
    };
    let mut sink = DeltaSinkFactory.create(&spec, &ctx)?;
    let start = Instant::now();
    for b in 0..batches {
        let ids: Vec<i64> = (0..rows).map(|r| (b * rows + r) as i64).collect();
        let actions: Vec<&str> = (0..rows)
            .map(|r| ["click", "view"][(r % 2) as usize])
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(actions)),
            ],
        )?;
        sink.add_batch(b, &[batch])?;
    }
    let secs = start.elapsed().as_secs_f64();
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| sluice::EngineError::external(e.to_string()))?;
    let active = rt.block_on(async {
        let url = deltalake::ensure_table_uri(table.to_string_lossy())?;
        let t = deltalake::open_table(url).await?;
        let n = t.get_file_uris()?.count();
        Ok::<_, deltalake::DeltaTableError>(n)
    });
    let active = active.map_err(|e| sluice::EngineError::external(e.to_string()))?;
    Ok(Outcome {
        active_files: active,
        parquet_on_disk: count(&table, ".parquet"),
        log_files: count(&table.join("_delta_log"), ".json"),
        batches_per_s: batches as f64 / secs,
    })
}

fn main() -> sluice::Result<()> {
    let batches = arg("--batches", 10_000);
    let rows = arg("--rows", 10);
    let every = arg("--every", 100);
    // the baseline grows one file per batch by construction; a shorter run shows it
    let base_batches = arg("--baseline-batches", batches);
    println!("delta soak: {batches} batches of {rows} rows (baseline: {base_batches} batches)");
    let base = soak(base_batches, rows, None)?;
    println!(
        "no compaction, {base_batches:>5} batches: active data files {:>6}, parquet on disk {:>6}, commits {:>6}, {:>7.1} batches/s",
        base.active_files, base.parquet_on_disk, base.log_files, base.batches_per_s
    );
    let opt = soak(batches, rows, Some(every))?;
    println!(
        "optimizeEvery = {every:<4}, {batches:>5} batches: active data files {:>6}, parquet on disk {:>6}, commits {:>6}, {:>7.1} batches/s",
        opt.active_files, opt.parquet_on_disk, opt.log_files, opt.batches_per_s
    );
    println!(
        "active files per batch with compaction / without: {:.5}; throughput ratio {:.2}",
        (opt.active_files as f64 / batches as f64)
            / (base.active_files.max(1) as f64 / base_batches as f64),
        opt.batches_per_s / base.batches_per_s.max(f64::EPSILON)
    );
    Ok(())
}
