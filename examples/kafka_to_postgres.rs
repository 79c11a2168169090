//! Kafka → windowed count → PostgreSQL, exactly once: JSON events from a Kafka topic, counted per
//! 1-hour window and action (event time, 30-minute watermark), upserted into a PostgreSQL table
//! (update mode: each batch's changed windows in one transaction with the batch marker).
//!
//! ```text
//! cargo run --example kafka_to_postgres -- BOOTSTRAP TOPIC JDBC_URL
//! cargo run --example kafka_to_postgres -- 127.0.0.1:9092 events \
//!     "jdbc:postgresql://127.0.0.1:5432/shop?user=sluice&password=sluice"
//! ```
//! It runs until Ctrl-C; the checkpoint is in `$TMPDIR/sluice-kafka-to-postgres`, so a restart
//! resumes exactly where it stopped.

use sluice::prelude::*;

fn main() -> sluice::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (bootstrap, topic, url) = match args.as_slice() {
        [_, b, t, u] => (b.clone(), t.clone(), u.clone()),
        _ => {
            eprintln!("usage: kafka_to_postgres BOOTSTRAP TOPIC JDBC_URL");
            std::process::exit(2);
        }
    };
    let session = Session::builder().app_name("kafka-to-postgres").build()?;
    session
        .read_stream()
        .format("kafka")
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .option("kafka.bootstrap.servers", &bootstrap)
        .option("subscribe", &topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", 50_000)
        .load_default()?
        .with_watermark("event_time", "30 minutes")?
        .create_or_replace_temp_view("events")?;
    let query = session
        .sql(
            "SELECT window.start AS window_start, window.end AS window_end, action, \
             count(*) AS events, sum(value) AS total_value \
             FROM events GROUP BY window(event_time, '1 hour'), action",
        )?
        .write_stream()
        .format("jdbc")
        .option("url", &url)
        .option("dbtable", "hourly_actions")
        .output_mode(OutputMode::Update)
        .checkpoint_location(std::env::temp_dir().join("sluice-kafka-to-postgres"))
        .query_name("hourly_actions")
        .start()?;
    println!("running: {topic} on {bootstrap} → table hourly_actions (Ctrl-C to stop)");
    query
        .await_termination()
        .map_err(|e| sluice::EngineError::external(e.to_string()))?;
    Ok(())
}
