//! Kafka: throughput of Kafka JSON → 1-minute windowed count (update mode) → a no-op
//! foreach_batch sink, against the baseline of the same run: librdkafka consuming the same
//! records without processing them. Then produce → batch-committed latency with the default
//! (event-driven) trigger, one record every 10 ms.
//!
//! Starts its own broker: noida-db's Kafka service (`scripts/test` installs noida-db into
//! `~/.cache/sluice-venv`; or set `SLUICE_TEST_NOIDA` to its binary).
//! `cargo bench --bench kafka_throughput -- [--events N] [--latency-records N]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice::connectors::rdkafka::consumer::{BaseConsumer, Consumer};
use sluice::connectors::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::connectors::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
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

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn main() -> sluice::Result<()> {
    let events = arg("--events", 1_000_000);
    let lat_n = arg("--latency-records", 500);
    let dir = tempfile::tempdir().map_err(err)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(err)?
        .port();
    let noida = std::env::var_os("SLUICE_TEST_NOIDA")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let lib = std::path::PathBuf::from(std::env::var("HOME").ok()?)
                .join(".cache/sluice-venv/lib");
            std::fs::read_dir(lib)
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("site-packages/noida_db/noida-db"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            err("noida-db not found: run scripts/test once, or set SLUICE_TEST_NOIDA")
        })?;
    let mut broker = std::process::Command::new(&noida)
        .current_dir(dir.path())
        .args(["start", "--only", "kafka", "--host", "127.0.0.1"])
        .args(["--kafka-port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| err(format!("start {}: {e}", noida.display())))?;
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if up.elapsed() > Duration::from_secs(30) {
            return Err(err("the broker did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let bs = format!("127.0.0.1:{port}");
    {
        use sluice::connectors::rdkafka::admin::{
            AdminClient, AdminOptions, NewTopic, TopicReplication,
        };
        let admin: AdminClient<sluice::connectors::rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", &bs)
                .create()
                .map_err(err)?;
        let topics = [
            NewTopic::new("events", 3, TopicReplication::Fixed(1)),
            NewTopic::new("lat", 1, TopicReplication::Fixed(1)),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)?;
        for r in rt
            .block_on(admin.create_topics(&topics, &AdminOptions::new()))
            .map_err(err)?
        {
            r.map_err(|(t, e)| err(format!("create topic {t}: {e}")))?;
        }
    }

    // produce the input
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .map_err(err)?;
    let actions = ["click", "view", "buy", "scroll"];
    let t0 = Instant::now();
    for i in 0..events {
        let ts = chrono::DateTime::from_timestamp(1_735_689_600 + (i / 100) as i64, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%SZ");
        let v = format!(
            "{{\"event_time\":\"{ts}\",\"action\":\"{}\",\"user_id\":{},\"value\":{}.5,\"country\":\"DE\"}}",
            actions[(i % 4) as usize],
            i % 1000,
            i % 100
        );
        let mut rec = BaseRecord::<(), str>::to("events")
            .payload(v.as_str())
            .partition((i % 3) as i32);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).map_err(err)?;
    println!(
        "produced {events} events in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // baseline: librdkafka consuming them, no processing
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition_offset("events", part, Offset::Beginning)
            .map_err(err)?;
    }
    c.assign(&tpl).map_err(err)?;
    let t0 = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < events {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            n += 1;
            bytes += m.payload().map_or(0, |p| p.len());
        }
        if t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let base_secs = t0.elapsed().as_secs_f64();
    drop(c);
    println!(
        "baseline  librdkafka consume only:          {:>10.0} events/s ({bytes} bytes)",
        n as f64 / base_secs
    );

    // Sluice: parse + windowed count, update mode, no-op sink
    let session = Session::builder().build()?;
    let rows = Arc::new(Mutex::new(0u64));
    let rows2 = Arc::clone(&rows);
    let q = session
        .read_stream()
        .format("kafka")
        .schema("event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING")
        .option("kafka.bootstrap.servers", &bs)
        .option("subscribe", "events")
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", 200_000)
        .load_default()?
        .with_watermark("event_time", "10 minutes")?
        .group_by(vec![window(col("event_time"), "1 minute"), col("action")])
        .agg(vec![count(lit(1)).alias("n")])?
        .write_stream()
        .output_mode(OutputMode::Update)
        .foreach_batch(move |_, b| {
            if let Ok(mut r) = rows2.lock() {
                *r += b.iter().map(|x| x.num_rows() as u64).sum::<u64>();
            }
            Ok(())
        })
        .checkpoint_location(dir.path().join("chk"))
        .trigger(Trigger::AvailableNow)
        .start()?;
    let t0 = Instant::now();
    q.await_termination().map_err(err)?;
    let secs = t0.elapsed().as_secs_f64();
    let input: u64 = q.recent_progress().iter().map(|p| p.num_input_rows).sum();
    println!(
        "sluice    parse + window count + sink:      {:>10.0} events/s ({input} events, {} result rows)",
        input as f64 / secs,
        rows.lock().map(|r| *r).unwrap_or(0)
    );
    println!(
        "ratio sluice / consume-only baseline: {:.2}",
        (input as f64 / secs) / (n as f64 / base_secs)
    );

    // latency: produce → batch committed (default trigger: a batch starts when records arrive)
    let lats = Arc::new(Mutex::new(Vec::<i64>::new()));
    let lats2 = Arc::clone(&lats);
    let q = session
        .read_stream()
        .format("kafka")
        .schema("sent_us BIGINT")
        .option("kafka.bootstrap.servers", &bs)
        .option("subscribe", "lat")
        .option("startingOffsets", "latest")
        .load_default()?
        .write_stream()
        .foreach_batch(move |_, b| {
            let now = now_us();
            if let Ok(mut l) = lats2.lock() {
                for batch in b {
                    if let Some(c) = batch.column_by_name("sent_us") {
                        let c = c
                            .as_any()
                            .downcast_ref::<sluice::arrow::array::Int64Array>();
                        if let Some(c) = c {
                            l.extend(c.iter().flatten().map(|s| now - s));
                        }
                    }
                }
            }
            Ok(())
        })
        .checkpoint_location(dir.path().join("chk-lat"))
        .start()?;
    std::thread::sleep(Duration::from_secs(2));
    let lp: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("linger.ms", "0")
        .create()
        .map_err(err)?;
    for _ in 0..lat_n {
        let v = format!("{{\"sent_us\": {}}}", now_us());
        let _ = lp.send(BaseRecord::<(), str>::to("lat").payload(v.as_str()));
        lp.flush(Duration::from_secs(5)).map_err(err)?;
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while lats
        .lock()
        .map(|l| (l.len() as u64) < lat_n)
        .unwrap_or(false)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    q.stop();
    let mut l = lats.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    if !l.is_empty() {
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0;
        println!(
            "latency produce → in the sink ({} records, one every 10 ms): p50 {:.1} ms, p99 {:.1} ms",
            l.len(),
            pct(0.50),
            pct(0.99)
        );
    }
    let _ = broker.kill();
    let _ = broker.wait();
    Ok(())
}
