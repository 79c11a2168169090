//! Kafka for the tests: a real `tansu` broker process per test (fresh directory, own port,
//! SQLite storage), librdkafka's mock cluster in a helper process (`sluice mock-kafka`, for
//! transactions), and a producer / reader built on rdkafka.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::connectors::rdkafka::consumer::{BaseConsumer, Consumer};
use sluice::connectors::rdkafka::error::KafkaError;
use sluice::connectors::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::connectors::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A tansu broker (Kafka protocol) on 127.0.0.1.
pub struct Tansu {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn tansu_bin() -> String {
    std::env::var("SLUICE_TEST_TANSU").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo_bin = format!("{home}/.cargo/bin/tansu");
        if std::path::Path::new(&cargo_bin).exists() {
            cargo_bin
        } else {
            "tansu".into()
        }
    })
}

impl Tansu {
    /// Starts a broker in a fresh directory.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-tansu-")
            .tempdir()
            .expect("tempdir");
        let port = super::db::free_port();
        let mut t = Self {
            dir,
            port,
            child: None,
        };
        t.start_broker();
        t
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// (Re)starts the broker process on the same port and storage.
    pub fn start_broker(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.log()).expect("log");
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (scripts/test installs it): {e}", tansu_bin()));
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.log()).unwrap_or_default();
            if text.contains("ready in") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "tansu did not start: {text}"
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

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let o = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .expect("tansu topic create");
        assert!(
            o.status.success(),
            "create topic: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// librdkafka's mock cluster in a helper process (`sluice mock-kafka`): it lives while this
/// handle does, independent of the query processes the test kills.
pub struct MockKafka {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub bootstrap: String,
}

impl MockKafka {
    pub fn start() -> Self {
        let mut child = Command::new(super::sluice_bin())
            .arg("mock-kafka")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("sluice mock-kafka");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("bootstrap line");
        Self {
            child,
            stdin,
            stdout,
            bootstrap: line.trim().to_string(),
        }
    }

    pub fn create_topic(&mut self, name: &str, partitions: u32) {
        writeln!(self.stdin, "create_topic {name} {partitions}").expect("command");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        assert_eq!(line.trim(), "ok", "create_topic {name}");
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces `(partition, key, value, timestamp ms)` records and waits until all are delivered.
pub fn produce(bootstrap: &str, topic: &str, records: &[(i32, String, String, i64)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "none")
        .create()
        .expect("producer");
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
