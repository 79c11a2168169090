//! Scale-out: one query run as tasks by 1, 2 and 3 `sluice run` processes on this machine, and
//! the time from a member's death to its tasks running elsewhere.
//!
//! 1. Throughput: N keyed JSON events in a 6-partition topic (noida-db), the windowed
//!    aggregation of tests/scale_out.rs into PostgreSQL (exactly-once JDBC sink, update mode);
//!    the six tasks split over 1, 2 and 3 processes (`--tasks`); time from the processes' start
//!    to the table holding every event. The 1-process run is the baseline of the same run.
//! 2. Failover: three members of a consumer group (`--group`, tansu's coordinator, session
//!    timeout 6 s) with events flowing; K times a member holding tasks is SIGKILLed and the time
//!    until every task it held has been taken by another process (a newer epoch in the
//!    checkpoint) is measured; the member is then started again. p50/p99.
//!
//! `cargo bench --bench scale_out -- [--events N] [--kills K]` (needs PostgreSQL, noida-db and
//! tansu as `scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::connectors::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use sluice::connectors::rdkafka::client::DefaultClientContext;
use sluice::connectors::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice::connectors::rdkafka::ClientConfig;

mod common;

fn arg(name: &str, default: u64) -> u64 {
    common::arg(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn home(rel: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(rel)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker on a free port: tansu (groups) or noida-db.
fn broker(dir: &Path, groups: bool) -> (Killed, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut c = if groups {
        let mut c = Command::new(home(".cache/sluice-tools/bin/tansu"));
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
        let noida = std::env::var_os("SLUICE_TEST_NOIDA")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                home(".cache/sluice-venv/lib/python3.11/site-packages/noida_db/noida-db")
            });
        let mut c = Command::new(noida);
        c.args(["start", "--only", "kafka", "--host", "127.0.0.1"])
            .args(["--kafka-port", &port.to_string(), "--data-dir"])
            .arg(dir.join("kafka"));
        c
    };
    let child = c
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the broker (scripts/test installs noida-db and tansu)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let bs = format!("127.0.0.1:{port}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let t = NewTopic::new("events", 6, TopicReplication::Fixed(1));
    for r in rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .expect("create topic")
    {
        r.expect("topic");
    }
    std::thread::sleep(Duration::from_millis(500));
    (Killed(child), bs)
}

/// Produces `n` keyed events (key k → partition k % 6), event times spread over an hour.
fn produce(bs: &str, n: u64, from: u64, one_per_batch: bool) {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bs).set("linger.ms", "20");
    if one_per_batch {
        // tansu 0.6.0 answers ListOffsets with the last batch's base offset + 1
        cfg.set("batch.num.messages", "1");
    }
    let p: BaseProducer = cfg.create().expect("producer");
    for i in from..from + n {
        let k = i % 60;
        let key = format!("k{k:02}");
        let v = format!(
            "{{\"ts\":\"2025-01-01T00:{:02}:{:02}\",\"v\":{}}}",
            (i / 60) % 60,
            i % 60,
            i % 1000
        );
        let mut rec = BaseRecord::to("events")
            .partition((k % 6) as i32)
            .key(&key)
            .payload(&v);
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
    p.flush(Duration::from_secs(120)).expect("flush");
}

fn psql(db: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "sluice", "-d", db, "-tAc", sql])
        .env("PGPASSWORD", "sluice")
        .output()
        .expect("psql");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn pipeline(dir: &Path, bs: &str, db: &str, per_trigger: u64, extra: &str) -> PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[source.events]
format = "kafka"
schema = "ts TIMESTAMP, v BIGINT"
options = {{ subscribe = "events", "kafka.bootstrap.servers" = "{bs}", startingOffsets = "earliest", maxOffsetsPerTrigger = {per_trigger}{extra} }}

[query.agg]
sql = """SELECT CAST(key AS STRING) AS k, window(ts, '1 minute') AS w, count(*) AS n, sum(v) AS total
         FROM events GROUP BY CAST(key AS STRING), window(ts, '1 minute')"""
output_mode = "update"
checkpoint = "chk"
sink = {{ format = "jdbc", options = {{ url = "jdbc:postgresql://127.0.0.1:5432/{db}?user=sluice&password=sluice", dbtable = "agg" }} }}
"#
        ),
    )
    .expect("pipeline");
    p
}

fn sluice(p: &Path, dir: &Path, args: &[&str], log: &str) -> Killed {
    let f = std::fs::File::create(dir.join(log)).expect("log");
    Killed(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(p)
            .args(args)
            .env("SLUICE_LOG", "info")
            .env("SLUICE_LOCAL_DIR", dir.join("local"))
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("sluice"),
    )
}

fn new_db(tag: &str) -> String {
    let db = format!("bench_{tag}_{}", std::process::id());
    psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    psql("postgres", &format!("CREATE DATABASE {db}"));
    db
}

/// Seconds for `splits` processes to aggregate `events` events.
fn throughput_run(events: u64, splits: &[&str]) -> f64 {
    let dir = tempfile::tempdir().expect("dir");
    let (_b, bs) = broker(dir.path(), false);
    produce(&bs, events, 0, false);
    let db = new_db(&format!("p{}", splits.len()));
    let p = pipeline(dir.path(), &bs, &db, 50_000, "");
    let start = Instant::now();
    let _procs: Vec<Killed> = splits
        .iter()
        .enumerate()
        .map(|(i, t)| sluice(&p, dir.path(), &["--tasks", t], &format!("p{i}.log")))
        .collect();
    loop {
        let n: u64 = psql(&db, "SELECT coalesce(sum(n), 0) FROM agg")
            .parse()
            .unwrap_or(0);
        if n == events {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(900), "stuck at {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = start.elapsed().as_secs_f64();
    psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    s
}

/// The tasks whose newest epoch `pid` took.
fn tasks_of(chk: &Path, pid: u32) -> Vec<u32> {
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["checkpoint", "inspect"])
        .arg(chk)
        .output()
        .expect("inspect");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (t, owner) = l.strip_prefix("task ")?.split_once(' ')?;
            owner
                .contains(&format!("/{pid} at "))
                .then(|| t.trim().parse().ok())
                .flatten()
        })
        .collect()
}

fn failover(kills: u64) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("dir");
    let (_b, bs) = broker(dir.path(), true);
    let db = new_db("failover");
    let extra = r#", "kafka.session.timeout.ms" = 6000, "kafka.heartbeat.interval.ms" = 1000"#;
    let p = pipeline(dir.path(), &bs, &db, 500, extra);
    let chk = dir.path().join("chk");
    let mut members: Vec<Killed> = (0..3)
        .map(|i| sluice(&p, dir.path(), &["--group"], &format!("m{i}.log")))
        .collect();
    let mut times = Vec::new();
    let mut produced = 0;
    for k in 0..kills {
        produce(&bs, 600, produced, true);
        produced += 600;
        // a member holding tasks
        let deadline = Instant::now() + Duration::from_secs(120);
        let (victim, held) = loop {
            if let Some(x) = members
                .iter()
                .enumerate()
                .map(|(i, m)| (i, tasks_of(&chk, m.0.id())))
                .find(|(_, t)| !t.is_empty())
            {
                break x;
            }
            assert!(Instant::now() < deadline, "no member holds a task");
            std::thread::sleep(Duration::from_millis(200));
        };
        let pid = members[victim].0.id();
        let t0 = Instant::now();
        let _ = members[victim].0.kill();
        let _ = members[victim].0.wait();
        loop {
            let still = tasks_of(&chk, pid);
            if held.iter().all(|t| !still.contains(t)) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "kill {k}: tasks never moved"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let s = t0.elapsed().as_secs_f64();
        println!("kill {k}: tasks {held:?} of member {pid} running elsewhere after {s:.2} s");
        times.push(s);
        members[victim] = sluice(&p, dir.path(), &["--group"], &format!("m{victim}-{k}.log"));
    }
    drop(members);
    psql("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
    times
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() {
    let events = arg("--events", 600_000);
    let kills = arg("--kills", 20);
    let one = throughput_run(events, &["0,1,2,3,4,5"]);
    let two = throughput_run(events, &["0,1,2", "3,4,5"]);
    let three = throughput_run(events, &["0,1", "2,3", "4,5"]);
    println!("events: {events} keyed events, 6 partitions, windowed count into PostgreSQL");
    for (n, s) in [(1, one), (2, two), (3, three)] {
        println!(
            "{n} process(es): {s:>7.2} s  {:>10.0} events/s  {:.2}x the 1-process run",
            events as f64 / s,
            one / s
        );
    }
    println!(
        "per added process: 2 vs 1: {:.2}x, 3 vs 2: {:.2}x (2 cores)",
        one / two,
        two / three
    );
    if kills > 0 {
        let t = failover(kills);
        println!(
            "failover over {} kills (session timeout 6 s): p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            t.len(),
            pct(&t, 50.0),
            pct(&t, 99.0),
            pct(&t, 100.0)
        );
    }
}
