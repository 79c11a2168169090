//! One query run as tasks by several `sluice run` processes (`--tasks`, `--group`): a real
//! broker on loopback, real processes started, killed (SIGKILL), paused (SIGSTOP) and resumed,
//! a windowed aggregation of keyed events into PostgreSQL (exactly-once JDBC sink) or a Delta
//! table read back by Python `deltalake`. The expected table is computed here from the events
//! produced, independently of Sluice.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::db::Pg;
use common::kafka::Broker;

/// The keys (k00..k29): key i is produced to partition i % 6, as a keyed producer would.
const KEYS: usize = 30;
const PARTITIONS: u32 = 6;
/// 2025-01-01T00:00:00Z, ms.
const BASE_MS: i64 = 1_735_689_600_000;

/// One wave of events: `per_key` events per key, event times 7 s apart from `start_s` seconds
/// after BASE_MS, values from the key and the event's number.
fn wave(start_s: i64, per_key: usize) -> Vec<(i32, String, String, i64)> {
    let mut out = Vec::new();
    for i in 0..per_key {
        for k in 0..KEYS {
            let t = BASE_MS + (start_s + 7 * i as i64 + k as i64) * 1000;
            let ts = chrono::DateTime::from_timestamp_millis(t)
                .expect("ts")
                .format("%Y-%m-%dT%H:%M:%S");
            let v = (k * 100 + i) as i64;
            out.push((
                (k % PARTITIONS as usize) as i32,
                format!("k{k:02}"),
                format!("{{\"ts\":\"{ts}\",\"v\":{v}}}"),
                t,
            ));
        }
    }
    out
}

/// The windowed aggregation of `events` (1-minute tumbling windows): `k|window start s|n|sum`.
fn expected(events: &[(i32, String, String, i64)]) -> Vec<String> {
    let mut m: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for (_, k, v, t) in events {
        let j: serde_json::Value = serde_json::from_str(v).expect("json");
        let start = t.div_euclid(60_000) * 60;
        let e = m.entry((k.clone(), start)).or_default();
        e.0 += 1;
        e.1 += j["v"].as_i64().expect("v");
    }
    m.into_iter()
        .map(|((k, s), (n, sum))| format!("{k}|{s}|{n}|{sum}"))
        .collect()
}

enum Target {
    Pg { pg: Pg, db: String },
    Delta(PathBuf),
}

impl Target {
    fn sink_toml(&self) -> String {
        match self {
            Target::Pg { pg, db } => format!(
                "sink = {{ format = \"jdbc\", options = {{ url = \"{}\", dbtable = \"agg\" }} }}",
                pg.jdbc_url(db)
            ),
            Target::Delta(p) => format!(
                "sink = {{ format = \"delta\", path = \"{}\" }}",
                p.display()
            ),
        }
    }

    /// The table's rows as `k|window start s|n|sum`, sorted (Delta: read by Python deltalake).
    fn rows(&self) -> Vec<String> {
        let mut v = match self {
            Target::Pg { pg, db } => pg
                .try_query(
                    db,
                    "SELECT k, extract(epoch FROM w_start)::bigint, n, total FROM agg",
                )
                .unwrap_or_default(),
            Target::Delta(p) => delta_rows(p),
        };
        v.sort();
        v
    }
}

/// The Delta table's rows by the independent reader (empty while there is no table).
fn delta_rows(path: &Path) -> Vec<String> {
    if !path.join("_delta_log").is_dir() {
        return Vec::new();
    }
    let script = r#"
import calendar, os, sys
from deltalake import DeltaTable
for r in DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist():
    s = calendar.timegm(r["w"]["start"].utctimetuple())
    print(f'{r["k"]}|{s}|{r["n"]}|{r["total"]}')
sys.stdout.flush()
os._exit(0)
"#;
    let o = Command::new(common::delta::python())
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python deltalake");
    if !o.status.success() {
        return Vec::new(); // a commit in progress: read again
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The scenarios run one at a time: each starts a broker and up to four daemons (2 cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Setup {
    dir: tempfile::TempDir,
    broker: Broker,
    target: Target,
    pipeline: PathBuf,
    events: Vec<(i32, String, String, i64)>,
}

impl Setup {
    fn new(target: impl FnOnce(&Path) -> Target, extra_source_options: &str) -> Self {
        Self::with_broker(Broker::start(), target, extra_source_options)
    }

    fn with_broker(
        broker: Broker,
        target: impl FnOnce(&Path) -> Target,
        extra_source_options: &str,
    ) -> Self {
        let dir = common::workdir();
        broker.create_topic("events", PARTITIONS);
        let target = target(dir.path());
        let pipeline = dir.path().join("p.toml");
        std::fs::write(
            &pipeline,
            format!(
                r#"
[source.events]
format = "kafka"
schema = "ts TIMESTAMP, v BIGINT"
options = {{ subscribe = "events", "kafka.bootstrap.servers" = "{bs}", startingOffsets = "earliest", maxOffsetsPerTrigger = 40{extra_source_options} }}

[query.agg]
sql = """SELECT CAST(key AS STRING) AS k, window(ts, '1 minute') AS w, count(*) AS n, sum(v) AS total
         FROM events GROUP BY CAST(key AS STRING), window(ts, '1 minute')"""
output_mode = "update"
checkpoint = "chk"
{sink}
"#,
                bs = broker.bootstrap(),
                sink = target.sink_toml()
            ),
        )
        .expect("pipeline");
        Self {
            dir,
            broker,
            target,
            pipeline,
            events: Vec::new(),
        }
    }

    fn produce(&mut self, events: Vec<(i32, String, String, i64)>) {
        self.broker.produce("events", &events);
        self.events.extend(events);
    }

    /// Starts `sluice run p.toml ARGS`, its log in `<name>.log`.
    fn start(&self, name: &str, args: &[&str]) -> Proc {
        let log = self.dir.path().join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log");
        let child = Command::new(common::sluice_bin())
            .arg("run")
            .arg(&self.pipeline)
            .args(args)
            .env("SLUICE_LOG", "info")
            .env("SLUICE_LOCAL_DIR", self.dir.path().join("local"))
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn sluice");
        Proc { child, log }
    }

    /// Waits until the table equals what the events produced so far aggregate to.
    fn wait_for_all(&self, procs: &[&Proc]) {
        let want = expected(&self.events);
        let mut last = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while std::time::Instant::now() < deadline {
            last = self.target.rows();
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
        panic!(
            "the table never equalled the aggregation of the {} events:\nmissing {:?}\nextra {:?}\nlogs:\n{}",
            self.events.len(),
            want.iter().filter(|r| !last.contains(r)).take(10).collect::<Vec<_>>(),
            last.iter().filter(|r| !want.contains(r)).take(10).collect::<Vec<_>>(),
            logs.join("\n----\n")
        );
    }
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, needle: &str) {
        common::wait_until(what, Duration::from_secs(120), || {
            self.log_text().contains(needle)
        });
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> Option<i32> {
        common::signal(&self.child, "TERM");
        self.child.wait().expect("wait").code()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_target(dir: &Path) -> Target {
    let _ = dir;
    let pg = Pg::shared();
    let db = pg.new_db("scale");
    Target::Pg { pg, db }
}

fn delta_target(dir: &Path) -> Target {
    Target::Delta(dir.join("out"))
}

/// Three processes with two tasks each; one is SIGKILLed and restarted; one is paused
/// (SIGSTOP) while another process takes its tasks, then resumed: its writes are refused (it
/// learns that its tasks were taken over and exits), and the table equals the aggregation.
fn fixed_tasks_scenario(target: fn(&Path) -> Target) {
    let _one = serial();
    let mut s = Setup::new(target, "");
    s.produce(wave(0, 8));
    let p1 = s.start("p1", &["--tasks", "0,1"]);
    let p2 = s.start("p2", &["--tasks", "2,3"]);
    let p3 = s.start("p3", &["--tasks", "4,5"]);
    for (p, ts) in [(&p1, [0, 1]), (&p2, [2, 3]), (&p3, [4, 5])] {
        for t in ts {
            p.wait_log("a task started", &format!("task {t}: taken at epoch 1"));
        }
    }
    s.wait_for_all(&[&p1, &p2, &p3]);

    // a crash: SIGKILL, more input, the same tasks started again (a new epoch)
    let mut p1 = p1;
    p1.child.kill().expect("kill");
    p1.child.wait().expect("wait");
    s.produce(wave(600, 4));
    let p1b = s.start("p1b", &["--tasks", "0,1"]);
    p1b.wait_log("task 0 taken again", "task 0: taken at epoch 2");

    // a zombie: p2 paused, its tasks taken by p4 (epoch 2), input that only p4 can read now
    common::signal(&p2.child, "STOP");
    let p4 = s.start("p4", &["--tasks", "2,3"]);
    p4.wait_log("task 2 taken over", "task 2: taken at epoch 2");
    p4.wait_log("task 3 taken over", "task 3: taken at epoch 2");
    s.produce(wave(1200, 4));
    s.wait_for_all(&[&p1b, &p3, &p4]);
    common::signal(&p2.child, "CONT");
    // resumed, p2 sees the new input, and every write it tries is refused
    p2.wait_log(
        "the zombie refused",
        "was taken over (epoch 2 exists; this process holds epoch 1)",
    );
    let mut p2 = p2;
    let code = p2.child.wait().expect("wait").code();
    assert_eq!(
        code,
        Some(1),
        "a process whose every task was taken over exits 1"
    );
    assert!(
        p2.log_text()
            .contains("every task of this process was taken over"),
        "{}",
        p2.log_text()
    );
    s.produce(wave(1800, 2));
    s.wait_for_all(&[&p1b, &p3, &p4]);
    for p in [p1b, p3, p4] {
        assert_eq!(p.stop(), Some(0));
    }
    assert_eq!(s.target.rows(), expected(&s.events));
    if let Target::Pg { pg, db } = &s.target {
        // each task's marker row carries the epoch of its last owner
        let mut epochs = pg.query(db, "SELECT epoch FROM _sluice_batches ORDER BY epoch");
        epochs.sort();
        assert_eq!(epochs, vec!["1", "1", "2", "2", "2", "2"], "{epochs:?}");
    }
    // the checkpoint says who owns what
    let o = Command::new(common::sluice_bin())
        .args(["checkpoint", "inspect"])
        .arg(s.dir.path().join("chk"))
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("tasks        6 (partition t of events is task t)"),
        "{text}"
    );
    assert!(text.contains("task 2       epoch 2, taken by"), "{text}");
    assert!(text.contains("task 5       epoch 1, taken by"), "{text}");
}

#[test]
fn fixed_tasks_fail_over_and_a_zombie_is_refused_jdbc() {
    fixed_tasks_scenario(pg_target);
}

#[test]
fn fixed_tasks_fail_over_and_a_zombie_is_refused_delta() {
    fixed_tasks_scenario(delta_target);
}

#[test]
fn what_cannot_run_as_tasks_is_refused_before_anything_runs() {
    let _one = serial();
    let s = Setup::new(pg_target, "");
    // grouping by something else than the message key
    let text = std::fs::read_to_string(&s.pipeline).expect("read");
    let other = text
        .replace(
            "GROUP BY CAST(key AS STRING), window(ts, '1 minute')",
            "GROUP BY CAST(v AS STRING), window(ts, '1 minute')",
        )
        .replace(
            "SELECT CAST(key AS STRING) AS k",
            "SELECT CAST(v AS STRING) AS k",
        );
    std::fs::write(&s.pipeline, other).expect("write");
    let p = s.start("refused", &["--tasks", "0"]);
    let mut p = p;
    let code = p.child.wait().expect("wait").code();
    assert_eq!(code, Some(2));
    assert!(
        p.log_text()
            .contains("groups by keys that do not include the input's `key` column"),
        "{}",
        p.log_text()
    );
    // a task that does not exist
    std::fs::write(&s.pipeline, text).expect("write");
    let mut p = s.start("bad-task", &["--tasks", "6"]);
    assert_eq!(p.child.wait().expect("wait").code(), Some(2));
    assert!(
        p.log_text()
            .contains("task 6 does not exist (the query has 6 tasks, 0 to 5)"),
        "{}",
        p.log_text()
    );
    // the partition count changed since the checkpoint was made
    let b = &s.broker;
    b.create_topic("events2", 4);
    let text2 = std::fs::read_to_string(&s.pipeline)
        .expect("read")
        .replace("subscribe = \"events\"", "subscribe = \"events2\"");
    std::fs::write(&s.pipeline, text2).expect("write");
    let mut p = s.start("changed", &["--tasks", "0"]);
    assert_eq!(p.child.wait().expect("wait").code(), Some(2));
    assert!(
        p.log_text()
            .contains("it was created for topics [\"events\"]"),
        "{}",
        p.log_text()
    );
}

/// Waits until `cond` holds; on timeout, fails with the logs of `procs`.
fn wait_or_dump(what: &str, procs: &[&Proc], mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !cond() {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
            panic!(
                "timed out waiting for {what}; logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tasks whose newest epoch `pid` took, from `sluice checkpoint inspect`.
fn tasks_of(s: &Setup, pid: u32) -> Vec<u32> {
    let o = Command::new(common::sluice_bin())
        .args(["checkpoint", "inspect"])
        .arg(s.dir.path().join("chk"))
        .output()
        .expect("inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("task ")?;
            let (t, owner) = rest.split_once(' ')?;
            owner
                .contains(&format!("/{pid} at "))
                .then(|| t.trim().parse().ok())
                .flatten()
        })
        .collect()
}

/// Three members of one consumer group (tansu's coordinator) share the six tasks; one leaves
/// (SIGTERM: it leaves the group) and its tasks move to the others; a fourth joins and gets
/// some. The table equals the aggregation of every event. (Failures — SIGKILL, SIGSTOP past the
/// session timeout — are covered with `--tasks` above: tansu 0.6.0's coordinator assigns a
/// partition to two members at once or keeps a dead member's partitions under failures, and
/// noida-db's never expires a dead member; see the README.)
fn group_scenario(target: fn(&Path) -> Target) {
    let _one = serial();
    let options = r#", "kafka.session.timeout.ms" = 6000, "kafka.heartbeat.interval.ms" = 1000"#;
    let mut s = Setup::with_broker(Broker::start_with_groups(), target, options);
    s.produce(wave(0, 8));
    let p1 = s.start("g1", &["--group"]);
    let p2 = s.start("g2", &["--group"]);
    let p3 = s.start("g3", &["--group"]);
    s.wait_for_all(&[&p1, &p2, &p3]);
    let p1_pid = p1.child.id();
    assert_eq!(p1.stop(), Some(0));
    s.produce(wave(600, 4));
    wait_or_dump("the leaving member's tasks to move", &[&p2, &p3], || {
        tasks_of(&s, p1_pid).is_empty()
    });
    s.wait_for_all(&[&p2, &p3]);
    let p4 = s.start("g4", &["--group"]);
    p4.wait_log("the joining member to get tasks", ": taken at epoch");
    s.produce(wave(1200, 4));
    s.wait_for_all(&[&p2, &p3, &p4]);
    for p in [p2, p3, p4] {
        assert_eq!(p.stop(), Some(0));
    }
    assert_eq!(s.target.rows(), expected(&s.events));
}

#[test]
fn group_members_share_the_tasks_as_they_leave_and_join_jdbc() {
    group_scenario(pg_target);
}

#[test]
fn group_members_share_the_tasks_as_they_leave_and_join_delta() {
    group_scenario(delta_target);
}

/// Three members of one consumer group; during the run one is SIGKILLed (its tasks move when
/// its session expires) and restarted, a fourth joins, and one is paused (SIGSTOP) past the
/// session timeout: its tasks move, and when it is resumed (SIGCONT) it writes nothing more.
/// The table equals the aggregation of every event, each counted once.
fn group_failure_scenario(target: fn(&Path) -> Target) {
    let _one = serial();
    let options = r#", "kafka.session.timeout.ms" = 6000, "kafka.heartbeat.interval.ms" = 1000"#;
    let mut s = Setup::with_broker(Broker::start_with_groups(), target, options);
    s.produce(wave(0, 8));
    let p1 = s.start("g1", &["--group"]);
    let p2 = s.start("g2", &["--group"]);
    let p3 = s.start("g3", &["--group"]);
    for p in [&p1, &p2, &p3] {
        p.wait_log("a member with tasks", ": taken at epoch");
    }
    s.wait_for_all(&[&p1, &p2, &p3]);

    // SIGKILL: its tasks run elsewhere once its session expires; then it comes back
    let mut p1 = p1;
    let p1_pid = p1.child.id();
    p1.child.kill().expect("kill");
    p1.child.wait().expect("wait");
    s.produce(wave(600, 4));
    wait_or_dump("the killed member's tasks to move", &[&p2, &p3], || {
        tasks_of(&s, p1_pid).is_empty()
    });
    s.wait_for_all(&[&p2, &p3]);
    let p1b = s.start("g1b", &["--group"]);
    // a fourth member joins
    let p4 = s.start("g4", &["--group"]);
    p1b.wait_log("the restarted member to get tasks", ": taken at epoch");
    p4.wait_log("the fourth member to get tasks", ": taken at epoch");

    // SIGSTOP past the session timeout: a zombie (a member that holds a task: the group may
    // leave one of four members without any)
    let mut members = vec![p1b, p2, p3, p4];
    let mut zombie = None;
    wait_or_dump(
        "a member to hold a task",
        &members.iter().collect::<Vec<_>>(),
        || {
            zombie = members
                .iter()
                .position(|p| !tasks_of(&s, p.child.id()).is_empty());
            zombie.is_some()
        },
    );
    let z = members.remove(zombie.unwrap_or_default());
    let z_pid = z.child.id();
    common::signal(&z.child, "STOP");
    wait_or_dump(
        "the paused member's tasks to move",
        &members.iter().collect::<Vec<_>>(),
        || tasks_of(&s, z_pid).is_empty(),
    );
    s.produce(wave(1200, 4));
    s.wait_for_all(&members.iter().collect::<Vec<_>>());
    common::signal(&z.child, "CONT");
    // resumed, it learns that it lost its tasks: the group revokes them, or a write is refused
    wait_or_dump("the zombie to give up its tasks", &[&z], || {
        let log = z.log_text();
        let after = log.rsplit("taken at epoch").next().unwrap_or("");
        after.contains("tasks revoked") || after.contains("was taken over")
    });
    s.produce(wave(1800, 2));
    members.push(z);
    s.wait_for_all(&members.iter().collect::<Vec<_>>());
    for p in members {
        assert_eq!(p.stop(), Some(0));
    }
    assert_eq!(s.target.rows(), expected(&s.events));
}

#[test]
fn group_members_survive_a_kill_a_join_and_a_zombie_jdbc() {
    group_failure_scenario(pg_target);
}

#[test]
fn group_members_survive_a_kill_a_join_and_a_zombie_delta() {
    group_failure_scenario(delta_target);
}

/// The sinks' own fences, without a checkpoint in the way: a sink created for an older epoch
/// of a task is refused once a newer epoch has claimed the target, and cannot claim it back.
fn sink_fence_scenario(format: &str, options: &[(&str, String)], read: &dyn Fn() -> Vec<String>) {
    use std::sync::Arc;

    use sluice::arrow::array::{Int64Array, RecordBatch, StringArray};
    use sluice::arrow::datatypes::{DataType, Field, Schema};
    use sluice::engine::{Options, SinkContext, SinkSpec, TaskInfo};

    let dir = common::workdir();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let rows = |k: &str, n: i64| {
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![k])),
                Arc::new(Int64Array::from(vec![n])),
            ],
        )
        .expect("batch")
    };
    let mut o = Options::new();
    for (k, v) in options {
        o.set(*k, v.as_str());
    }
    let spec = SinkSpec {
        format: format.to_string(),
        options: o,
        output_mode: sluice::OutputMode::Append,
    };
    let ctx = |epoch: u64| SinkContext {
        query_id: "task-query-0".into(),
        query_name: None,
        schema: Arc::clone(&schema),
        key_columns: None,
        checkpoint_dir: dir.path().join("chk"),
        session: sluice::datafusion::prelude::SessionContext::new(),
        task: Some(TaskInfo { index: 0, epoch }),
    };
    let session = sluice::Session::builder().build().expect("session");
    let factory = session.registry().sink(format).expect("factory");
    let mut old = factory.create(&spec, &ctx(1)).expect("epoch 1 claims");
    old.add_batch(0, &[rows("a", 1)]).expect("epoch 1 writes");
    let mut new = factory.create(&spec, &ctx(2)).expect("epoch 2 claims");
    let refused = old
        .add_batch(1, &[rows("zombie", 9)])
        .expect_err("epoch 1 refused");
    assert!(refused.is_fenced(), "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("task 0 was taken over (epoch 2 exists; this process holds epoch 1)"),
        "{text}"
    );
    new.add_batch(1, &[rows("b", 2)]).expect("epoch 2 writes");
    let again = factory
        .create(&spec, &ctx(1))
        .err()
        .expect("epoch 1 cannot claim back");
    assert!(again.is_fenced(), "{again}");
    assert_eq!(read(), vec!["a|1", "b|2"]);
}

#[test]
fn the_jdbc_sink_refuses_an_older_epoch() {
    let pg = Pg::shared();
    let db = pg.new_db("fence");
    let read = || {
        let mut v = pg.query(&db, "SELECT k, n FROM fenced");
        v.sort();
        v
    };
    sink_fence_scenario(
        "jdbc",
        &[("url", pg.jdbc_url(&db)), ("dbtable", "fenced".into())],
        &read,
    );
}

#[test]
fn the_delta_sink_refuses_an_older_epoch() {
    let dir = common::workdir();
    let path = dir.path().join("fenced");
    let read = || {
        let (_, rows) = common::delta::python_rows(&path);
        let mut v: Vec<String> = rows
            .iter()
            .map(|r| format!("{}|{}", r["k"].as_str().unwrap_or(""), r["n"]))
            .collect();
        v.sort();
        v
    };
    sink_fence_scenario("delta", &[("path", path.display().to_string())], &read);
}
