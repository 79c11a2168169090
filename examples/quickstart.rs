//! Quickstart: generates sample click events as JSON files, then runs a streaming query over
//! them — written in two statements with the DataFrame API, and again in SQL — and shows the
//! results on the console. Run it with `scripts/quickstart` (or `cargo run --example quickstart`).
//!
//! Then a windowed aggregation: events per minute and action, with a 10-minute watermark, in
//! append mode: each window is printed once, when the watermark has passed its end.

use std::path::PathBuf;

use sluice::prelude::*;

const SCHEMA: &str =
    "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING";

fn generate(dir: &std::path::Path, files: u64, per_file: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let actions = ["click", "view", "buy", "scroll"];
    let countries = ["DE", "FR", "US", "JP"];
    let mut x: u64 = 42;
    for f in 0..files {
        let mut body = String::new();
        for i in 0..per_file {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let ms = 1_735_689_600_000 + ((f * per_file + i) * 250) as i64;
            let ts = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ");
            body.push_str(&format!(
                "{{\"event_time\":\"{ts}\",\"action\":\"{}\",\"user_id\":{},\"value\":{},\"country\":\"{}\"}}\n",
                actions[(x >> 33) as usize % 4],
                (x >> 40) % 1000,
                ((x >> 20) % 20000) as f64 / 64.0,
                countries[(x >> 50) as usize % 4]
            ));
        }
        // write under a hidden name, then rename: the source never sees a partial file
        let tmp = dir.join(format!(".events-{f:03}.json.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(format!("events-{f:03}.json")))?;
    }
    Ok(())
}

fn main() -> sluice::Result<()> {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-quickstart"));
    let _ = std::fs::remove_dir_all(&base);
    let input = base.join("events");
    generate(&input, 3, 2000).map_err(|e| sluice::EngineError::io(&input, e))?;
    println!("Generated 3 files of 2000 events in {}\n", input.display());

    let session = Session::builder().app_name("quickstart").build()?;

    // The two-line pipeline: read a stream, describe the query, write it.
    let events = session
        .read_stream()
        .schema(SCHEMA)
        .option("maxFilesPerTrigger", 1)
        .json(input.to_str().unwrap_or_default())?;
    events
        .clone()
        .filter(
            col("action")
                .eq(lit("click"))
                .and(col("value").gt(lit(250.0))),
        )?
        .select([
            col("event_time"),
            col("user_id"),
            col("value"),
            col("country"),
        ])?
        .write_stream()
        .format("console")
        .option("numRows", 5)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(base.join("chk/clicks"))
        .start()?
        .await_termination()
        .map_err(|e| sluice::EngineError::User(e.message))?;

    // The same stream in SQL.
    events.create_or_replace_temp_view("events")?;
    let big = session.sql(
        "SELECT country, upper(action) AS action, CAST(value AS BIGINT) AS value, \
                CASE WHEN value > 300 THEN 'huge' ELSE 'big' END AS size \
         FROM events WHERE value > 280",
    )?;
    let query = big
        .write_stream()
        .format("console")
        .option("numRows", 5)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(base.join("chk/sql"))
        .start()?;
    query
        .await_termination()
        .map_err(|e| sluice::EngineError::User(e.message))?;
    // Windowed, with a watermark: state in RocksDB under the checkpoint.
    events
        .with_watermark("event_time", "10 minutes")?
        .create_or_replace_temp_view("timed")?;
    let per_minute = session.sql(
        "SELECT window.start AS minute, action, count(*) AS events, round(avg(value), 2) AS avg_value \
         FROM timed GROUP BY window(event_time, '1 minute'), action",
    )?;
    per_minute
        .write_stream()
        .format("console")
        .option("numRows", 8)
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(base.join("chk/windows"))
        .start()?
        .await_termination()
        .map_err(|e| sluice::EngineError::User(e.message))?;
    if let Some(p) = query.last_progress() {
        println!(
            "Last progress of the SQL query:\n{}",
            serde_json::to_string_pretty(&p).unwrap_or_default()
        );
    }
    Ok(())
}
