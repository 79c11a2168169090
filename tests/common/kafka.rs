//! Kafka for the tests: a real broker process per test (noida-db's Kafka service: fresh
//! directory, own port), and a producer / reader built on rdkafka.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::connectors::rdkafka::consumer::{BaseConsumer, Consumer};
use sluice::connectors::rdkafka::error::KafkaError;
use sluice::connectors::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::connectors::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A Kafka-protocol broker process on 127.0.0.1: noida-db 0.2.3 (PyPI; `scripts/test` installs
/// it into `~/.cache/sluice-venv`) with only its Kafka service, in a fresh data directory on its
/// own port. It commits and aborts transactions, writes control records and hides aborted
/// records from read_committed consumers (tests/kafka.rs checks all of that first).
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// Tansu instead of noida-db: a broker whose consumer groups expire dead members.
    groups: bool,
}

/// The tansu binary (a Kafka-compatible broker from crates.io, `scripts/test` installs it):
/// SLUICE_TEST_TANSU, else `~/.cache/sluice-tools/bin/tansu`.
fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/sluice-tools/bin/tansu")
}

/// The noida-db binary: SLUICE_TEST_NOIDA, else the one in the venv scripts/test makes.
fn noida_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TEST_NOIDA") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let lib = PathBuf::from(home).join(".cache/sluice-venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("site-packages/noida_db/noida-db"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("noida-db"))
}

impl Broker {
    /// Starts a broker in a fresh directory.
    pub fn start() -> Self {
        Self::launch(false)
    }

    fn launch(groups: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-kafka-")
            .tempdir()
            .expect("tempdir");
        let port = super::db::free_port();
        let mut t = Self {
            dir,
            port,
            child: None,
            groups,
        };
        t.start_broker();
        t
    }

    /// Starts a broker whose consumer groups work as Kafka's do (members that stop
    /// heartbeating are removed after their session timeout, cooperative rebalances): tansu
    /// 0.6.0 with in-memory storage. noida-db's groups never expire a dead member.
    pub fn start_with_groups() -> Self {
        Self::launch(true)
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// What the broker process printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Produces records to this broker ([`produce`]). Into tansu, one record per record batch:
    /// tansu 0.6.0 answers ListOffsets(latest) with the last record batch's base offset + 1
    /// (not its last offset + 1), which is right only when that batch holds one record.
    pub fn produce(&self, topic: &str, records: &[(i32, String, String, i64)]) {
        produce_batched(&self.bootstrap(), topic, records, self.groups.then_some(1));
    }

    /// (Re)starts the broker process on the same port and storage.
    pub fn start_broker(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log");
        let mut cmd = if self.groups {
            let url = format!("tcp://127.0.0.1:{}", self.port);
            let mut c = Command::new(tansu_bin());
            c.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"]);
            c
        } else {
            let mut c = Command::new(noida_bin());
            c.args(["start", "--only", "kafka", "--host", "127.0.0.1"])
                .args(["--kafka-port", &self.port.to_string()])
                .arg("--data-dir")
                .arg(self.dir.path().join("data"));
            c
        };
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start the broker (scripts/test installs noida-db and tansu): {e}")
            });
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the broker did not start: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker process (SIGTERM, then waits).
    pub fn stop_broker(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates a topic with `partitions` partitions that keeps its records forever
    /// (`retention.ms = -1`: the tests' records carry 2025 timestamps, which the broker's
    /// default 7-day retention deletes, as Kafka's does), and waits until its metadata shows
    /// them.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        if self.groups {
            // tansu keeps records until deleted (in memory)
            self.create_topic_with(name, partitions, &[]);
        } else {
            self.create_topic_with(name, partitions, &[("retention.ms", "-1")]);
        }
    }

    /// Creates a topic with topic configs (CreateTopics through librdkafka's admin client).
    pub fn create_topic_with(&self, name: &str, partitions: u32, config: &[(&str, &str)]) {
        use sluice::connectors::rdkafka::admin::{
            AdminClient, AdminOptions, NewTopic, TopicReplication,
        };
        use sluice::connectors::rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let mut topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1));
        for (k, v) in config {
            topic = topic.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let r = rt
            .block_on(admin.create_topics([&topic], &AdminOptions::new()))
            .expect("create topics");
        for t in r {
            t.unwrap_or_else(|(n, e)| panic!("create topic {n}: {e}"));
        }
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("consumer");
        let start = Instant::now();
        loop {
            let n = c
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                .unwrap_or(0);
            if n == partitions as usize {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "topic {name}: {n} partitions"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Produces `(partition, key, value, timestamp ms)` records and waits until all are delivered.
pub fn produce(bootstrap: &str, topic: &str, records: &[(i32, String, String, i64)]) {
    produce_batched(bootstrap, topic, records, None);
}

/// [`produce`], with at most `per_batch` records in a record batch when given.
fn produce_batched(
    bootstrap: &str,
    topic: &str,
    records: &[(i32, String, String, i64)],
    per_batch: Option<usize>,
) {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("compression.type", "none");
    if let Some(n) = per_batch {
        cfg.set("batch.num.messages", n.to_string());
    }
    let p: BaseProducer = cfg.create().expect("producer");
    for (part, k, v, ts) in records {
        let mut rec = BaseRecord::to(topic)
            .partition(*part)
            .key(k.as_str())
            .payload(v.as_str())
            .timestamp(*ts);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// Every record of `topic` (all `partitions`), as (partition, offset, key, value), read with
/// `isolation.level` = `isolation`.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
) -> Vec<(i32, i64, Option<String>, Option<String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for p in 0..partitions {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("tpl");
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}: {ends:?}"
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                ));
                if ends
                    .get(&m.partition())
                    .is_some_and(|e| m.offset() + 1 >= *e)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            _ => {}
        }
    }
    out
}
