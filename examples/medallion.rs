//! The medallion pipeline of `examples/medallion.toml`, written with the Rust API: raw JSON files
//! read by Auto Loader → bronze Delta (as-is + ingest time) → silver Delta (deduplicated,
//! checked by expectations, dropped rows in a quarantine table) → gold Delta
//! (events and value per hour and action, merged as windows change). Each stage is a streaming
//! query reading the table the previous stage writes; here they run one after the other in
//! available-now mode, then the gold table is printed.
//!
//! `cargo run --example medallion [DIR]` (default: a temp dir). Run it twice with the same DIR and
//! more raw files: each stage picks up where it stopped.

use std::path::{Path, PathBuf};

use sluice::prelude::*;

/// The types the later stages compute with (the other columns are inferred).
const HINTS: &str = "event_time TIMESTAMP, user_id BIGINT, value DOUBLE";

/// Sample raw events: some redelivered (same event_id), some dirty (no user, negative value,
/// odd spacing and case).
fn generate(dir: &Path, files: u64, per_file: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let actions = [" Click", "view", "BUY ", "scroll"];
    let countries = ["de", "FR", "us", "JP"];
    let mut x: u64 = 7;
    let mut last = String::new();
    for f in 0..files {
        let mut body = String::new();
        for i in 0..per_file {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = f * per_file + i;
            let ts = chrono::DateTime::from_timestamp(1_735_689_600 + (id as i64) * 20, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%SZ");
            let user = if x.is_multiple_of(50) {
                "null".to_string()
            } else {
                ((x >> 40) % 100).to_string()
            };
            let value =
                ((x >> 20) % 2000) as f64 / 8.0 - if x.is_multiple_of(37) { 500.0 } else { 0.0 };
            let line = format!(
                "{{\"event_id\":\"e{id}\",\"event_time\":\"{ts}\",\"action\":\"{}\",\"user_id\":{user},\"value\":{value},\"country\":\"{}\"}}\n",
                actions[(x >> 33) as usize % 4],
                countries[(x >> 50) as usize % 4]
            );
            // the producer redelivers the previous event now and then
            if x.is_multiple_of(11) && !last.is_empty() {
                body.push_str(&last);
            }
            body.push_str(&line);
            last = line;
        }
        let tmp = dir.join(format!(".raw-{f:03}.json.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(format!("raw-{f:03}.json")))?;
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn main() -> sluice::Result<()> {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-medallion"));
    let raw = base.join("raw");
    let n = std::fs::read_dir(&raw).map(|d| d.count()).unwrap_or(0) as u64;
    generate_more(&raw, n)?;
    let (bronze, silver, gold) = (base.join("bronze"), base.join("silver"), base.join("gold"));
    let chk = base.join("chk");
    let session = Session::builder().app_name("medallion").build()?;

    // bronze: Auto Loader (schema inferred once, kept under the schema location, new columns
    // added, values that do not fit rescued), as-is, plus the ingest time (the batch
    // timestamp: a re-run writes the same rows)
    session
        .read_stream()
        .format("cloudFiles")
        .option("cloudFiles.format", "json")
        .option(
            "cloudFiles.schemaLocation",
            path(&chk.join("bronze_schema")),
        )
        .option("cloudFiles.inferColumnTypes", true)
        .option("cloudFiles.schemaHints", HINTS)
        .option("cloudFiles.maxFilesPerTrigger", 1)
        .load(path(&raw))?
        .with_column("ingest_time", now())?
        .write_stream()
        .format("delta")
        .option("path", path(&bronze))
        .option("mergeSchema", true)
        .option("optimizeEvery", 10)
        .checkpoint_location(chk.join("bronze"))
        .trigger(Trigger::AvailableNow)
        .start()?
        .await_termination()?;

    // silver: deduplicated (redelivered events share event_id and event_time), normalised, and
    // checked: rows without an event time or user, or with a negative value, are dropped by
    // expectations (counted in each batch's progress) and kept in a quarantine table
    session
        .read_stream()
        .format("delta")
        .load(path(&bronze))?
        .with_watermark("event_time", "1 hour")?
        .drop_duplicates(&["event_id", "event_time"])?
        .select(vec![
            col("event_id"),
            col("event_time"),
            lower(btrim(vec![col("action")])).alias("action"),
            col("user_id"),
            col("value"),
            upper(col("country")).alias("country"),
        ])?
        .expect_or_drop("valid_event_time", "event_time IS NOT NULL")?
        .expect_or_drop("valid_user", "user_id IS NOT NULL")?
        .expect_or_drop("non_negative_value", "value >= 0")?
        .write_stream()
        .format("delta")
        .option("path", path(&silver))
        .quarantine_sink("delta", [("path", path(&base.join("quarantine")))])
        .checkpoint_location(chk.join("silver"))
        .trigger(Trigger::AvailableNow)
        .start()?
        .await_termination()?;

    // gold: per hour and action, merged into the table (update mode → MERGE on the keys)
    session
        .read_stream()
        .format("delta")
        .load(path(&silver))?
        .with_watermark("event_time", "10 minutes")?
        .create_or_replace_temp_view("silver")?;
    session
        .sql(
            "SELECT window.start AS window_start, window.end AS window_end, action, \
             count(*) AS events, sum(value) AS total_value, CAST(approx_distinct(user_id) AS BIGINT) AS users \
             FROM silver GROUP BY window(event_time, '1 hour'), action",
        )?
        .write_stream()
        .format("delta")
        .option("path", path(&gold))
        .output_mode(OutputMode::Update)
        .checkpoint_location(chk.join("gold"))
        .trigger(Trigger::AvailableNow)
        .start()?
        .await_termination()?;

    let rows = sluice::connectors::delta::read_table(&path(&gold))?;
    println!("gold table {}:", gold.display());
    println!(
        "{}",
        sluice::arrow::util::pretty::pretty_format_batches(&rows)
            .map_err(sluice::EngineError::from)?
    );
    Ok(())
}

fn generate_more(raw: &Path, existing: u64) -> sluice::Result<()> {
    if existing == 0 {
        generate(raw, 6, 500).map_err(|e| sluice::EngineError::io(raw, e))?;
        println!("generated 6 raw files in {}", raw.display());
    }
    Ok(())
}
