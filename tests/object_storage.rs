//! Object storage, end to end against a real S3-protocol server process (moto in server mode,
//! started per test; see `common/s3.rs`): the golden pipelines with every path in a bucket
//! (input, file sink, Delta table, checkpoint), killed at every crash point and restarted, the
//! state restored from the bucket alone, two daemons on one checkpoint, and credentials that
//! never show.

#![cfg(feature = "delta")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::s3::{S3Server, ACCESS_KEY, SECRET};
use common::*;

fn golden_dir(name: &str) -> PathBuf {
    repo_dir().join("tests/golden").join(name)
}

fn expected(name: &str) -> Vec<String> {
    let text = fs::read_to_string(golden_dir(name).join("expected.csv")).expect("expected.csv");
    sorted(text.lines().map(str::to_string).collect())
}

fn cases() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(repo_dir().join("tests/golden"))
        .expect("golden dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| golden_dir(n).join("pipeline.toml").is_file())
        .collect();
    v.sort();
    v
}

/// A golden case with its input in a fresh bucket and every path of its pipeline rewritten to
/// that bucket: (work dir, pipeline, bucket URL, local-copy dir).
struct Staged {
    w: tempfile::TempDir,
    pipeline: PathBuf,
    bucket: String,
    delta: bool,
}

impl Staged {
    fn new(s3: &S3Server, name: &str, tag: &str, extra: &str) -> Self {
        let bucket = format!("{}-{tag}", name.replace('_', "-"));
        s3.create_bucket(&bucket);
        let url = format!("s3://{bucket}");
        s3.upload_dir(&golden_dir(name).join("input"), &format!("{url}/in"));
        let text = fs::read_to_string(golden_dir(name).join("pipeline.toml")).expect("pipeline");
        let mut out = String::from(extra);
        for line in text.lines() {
            let line = line
                .replace(r#"path = "in""#, &format!(r#"path = "{url}/in""#))
                .replace(r#"path = "out""#, &format!(r#"path = "{url}/out""#))
                .replace(
                    r#"checkpoint = "chk/"#,
                    &format!(r#"checkpoint = "{url}/chk/"#),
                );
            out.push_str(&line);
            out.push('\n');
        }
        assert!(
            !out.contains(r#""in""#) && !out.contains(r#""out""#),
            "{out}"
        );
        let w = workdir();
        let pipeline = w.path().join("pipeline.toml");
        fs::write(&pipeline, &out).expect("pipeline");
        Self {
            w,
            pipeline,
            bucket: url,
            delta: out.contains(r#"format = "delta""#),
        }
    }

    fn local_dir(&self) -> PathBuf {
        self.w.path().join("local")
    }

    fn run(&self, s3: &S3Server, extra_env: &[(&str, &str)]) -> Output {
        let local = self.local_dir();
        let mut env: Vec<(&str, String)> = s3.env();
        env.push(("SLUICE_LOCAL_DIR", local.to_string_lossy().into_owned()));
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra_env);
        run_pipeline(&self.pipeline, &all)
    }

    /// The sink's rows as the expected CSV lines: the manifest's files of a file sink, or
    /// what Python `deltalake` reads of a Delta table.
    fn output(&self, s3: &S3Server) -> Vec<String> {
        let out = format!("{}/out", self.bucket);
        if !self.delta {
            return sorted(s3.committed_lines(&out, true));
        }
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        sorted(
            s3.delta_rows(&out)
                .iter()
                .map(|r| {
                    r.as_array()
                        .expect("row")
                        .iter()
                        .map(text)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect(),
        )
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn golden_pipelines_run_with_every_path_in_a_bucket() {
    let s3 = S3Server::start();
    for name in cases() {
        let st = Staged::new(&s3, &name, "plain", "");
        let o = st.run(&s3, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(
            st.output(&s3),
            expected(&name),
            "{name}: rows in the bucket"
        );
        // the checkpoint is in the bucket: its logs, and nothing of the live RocksDB
        let chk = s3.names(&format!("{}/chk", st.bucket));
        assert!(
            chk.iter().any(|n| n.ends_with("/metadata")),
            "{name}: {chk:?}"
        );
        assert!(
            chk.iter().any(|n| n.contains("/commits/")),
            "{name}: {chk:?}"
        );
        assert!(
            !chk.iter()
                .any(|n| n.ends_with("/LOCK") || n.ends_with(".lock")),
            "{name}: a live database was uploaded: {chk:?}"
        );
    }
}

#[test]
fn golden_pipelines_killed_at_every_crash_point_with_the_checkpoint_in_a_bucket() {
    let s3 = S3Server::start();
    let points = [
        "before-offsets-upload",
        "after-offsets",
        "mid-sink",
        "mid-sink-renamed",
        "after-sink",
        "after-state",
        "before-commit-upload",
        "after-commit",
    ];
    for name in cases() {
        for (i, point) in points.iter().enumerate() {
            let st = Staged::new(&s3, &name, &format!("k{i}"), "");
            if point.starts_with("mid-sink") && st.delta {
                continue; // a Delta commit is one atomic log entry
            }
            let at = format!("{point}@1");
            let o = st.run(&s3, &[("SLUICE_CRASH_AT", &at)]);
            assert!(
                killed(&o),
                "{name}: expected SIGKILL at {at}: {}",
                stderr(&o)
            );
            // the restart has nothing local: everything comes from the bucket
            fs::remove_dir_all(st.local_dir()).expect("remove the local copy");
            let o = st.run(&s3, &[]);
            assert!(o.status.success(), "{name} after {at}: {}", stderr(&o));
            assert_eq!(st.output(&s3), expected(&name), "{name}: killed at {at}");
            let commits: Vec<String> = s3
                .names(&format!("{}/chk", st.bucket))
                .into_iter()
                .filter_map(|n| n.split_once("/commits/").map(|(_, b)| b.to_string()))
                .collect();
            let mut ids: Vec<u64> = commits.iter().map(|c| c.parse().expect("id")).collect();
            ids.sort_unstable();
            let want: Vec<u64> = (0..ids.len() as u64).collect();
            assert_eq!(ids, want, "{name} after {at}: commit entries");
        }
    }
}

#[test]
fn the_state_is_restored_from_the_bucket_when_the_local_copy_is_gone() {
    let s3 = S3Server::start();
    let name = "sliding_append";
    // a snapshot every 2 batches: the restore starts from one and applies the changelogs after
    let st = Staged::new(&s3, name, "restore", "min_deltas_for_snapshot = 2\n");
    let input = format!("{}/in", st.bucket);
    let all = s3.objects(&input);
    assert_eq!(all.len(), 4);
    // the first run sees only the first three files
    let last = &all[3];
    s3.location(&input)
        .delete(&last.0)
        .expect("hold back the last file");
    let o = st.run(&s3, &[]);
    assert!(o.status.success(), "first run: {}", stderr(&o));
    let chk = s3.names(&format!("{}/chk", st.bucket));
    assert!(
        chk.iter().any(|n| n.ends_with("_SLUICE_SNAPSHOT_COMPLETE")),
        "a state snapshot in the bucket: {chk:?}"
    );
    assert!(chk.iter().any(|n| n.contains(".changelog/")), "{chk:?}");
    // the local copy (live RocksDB included) is deleted, and so is the input read so far: the
    // state can only come from the bucket's snapshot and changelogs (replaying the batches
    // would need the deleted files)
    fs::remove_dir_all(st.local_dir()).expect("remove the local copy");
    let loc = s3.location(&input);
    for (n, _) in &all[..3] {
        loc.delete(n).expect("delete input");
    }
    loc.put(&last.0, last.1.clone().into())
        .expect("the last file arrives");
    let o = st.run(&s3, &[]);
    assert!(o.status.success(), "second run: {}", stderr(&o));
    assert_eq!(st.output(&s3), expected(name));
}

/// Two `sluice run` of one pipeline on one checkpoint in a bucket, the second started once the
/// first has committed batch 3 of 44 (one file each); with `lease_lost`, the first's lease is
/// deleted just before (as if it had expired): (first, second, the rows in the sink, the rows
/// an uninterrupted run writes).
fn two_daemons(tag: &str, lease_lost: bool) -> (Output, Output, Vec<String>, Vec<String>) {
    let s3 = S3Server::start();
    let name = "clicks";
    let st = Staged::new(&s3, name, tag, "");
    // forty more files (copies of the case's input under new names): a long run of batches
    let input = format!("{}/in", st.bucket);
    let loc = s3.location(&input);
    let originals = s3.objects(&input);
    for k in 0..10 {
        for (n, bytes) in &originals {
            loc.put(&format!("x{k:02}-{n}"), bytes.clone().into())
                .expect("put");
        }
    }
    let mut env: Vec<(&str, String)> = s3.env();
    env.push((
        "SLUICE_LOCAL_DIR",
        st.local_dir().to_string_lossy().into_owned(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = spawn_pipeline(&st.pipeline, &env);
    let chk = format!("{}/chk", st.bucket);
    wait_until(
        "the first daemon commits batch 3",
        Duration::from_secs(60),
        || s3.names(&chk).iter().any(|n| n.ends_with("/commits/3")),
    );
    if lease_lost {
        s3.location(&chk)
            .delete("clicks/_lease")
            .expect("delete the lease");
    }
    let second = spawn_pipeline(&st.pipeline, &env);
    let a = first.wait_with_output().expect("first");
    let b = second.wait_with_output().expect("second");
    // every row once: 11 copies of the case's rows
    let mut want = Vec::new();
    for _ in 0..11 {
        want.extend(expected(name));
    }
    (a, b, st.output(&s3), sorted(want))
}

#[test]
fn a_second_daemon_on_the_same_checkpoint_is_refused_and_nothing_is_written_twice() {
    let (a, b, rows, want) = two_daemons("two", false);
    // the first one holds the checkpoint's lease: the second is refused before it writes
    // anything; the first goes on to the end
    assert!(!b.status.success(), "the second daemon ran");
    let err = stderr(&b);
    assert!(
        err.contains("is in use by process")
            && err.contains("another query runs on this checkpoint"),
        "{err}"
    );
    assert!(a.status.success(), "first: {}", stderr(&a));
    assert_eq!(rows, want);
}

#[test]
fn two_daemons_past_the_lease_are_stopped_by_the_conditional_puts() {
    let (a, b, rows, want) = two_daemons("race", true);
    // both run; the first entry one of them writes that the other wrote already stops it
    let refused =
        |o: &Output| !o.status.success() && stderr(o).contains("written by another query");
    assert!(
        refused(&a) != refused(&b),
        "exactly one daemon is refused:\nfirst: {:?} {}\nsecond: {:?} {}",
        a.status,
        stderr(&a),
        b.status,
        stderr(&b)
    );
    let survivor = if refused(&a) { &b } else { &a };
    assert!(survivor.status.success(), "{}", stderr(survivor));
    assert_eq!(rows, want);
}

#[test]
fn credentials_never_appear_in_logs_progress_status_or_errors() {
    let s3 = S3Server::start();
    // the secret also given as an option, in the pipeline file
    let st = Staged::new(
        &s3,
        "sliding_append",
        "creds",
        &format!("storage = {{ \"fs.s3a.secret.key\" = \"{SECRET}\" }}\n"),
    );
    let port = db::free_port().to_string();
    let local = st.local_dir().to_string_lossy().into_owned();
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("SLUICE_LOCAL_DIR", local));
    env.push(("SLUICE_LOG", "debug".into()));
    let mut c = std::process::Command::new(sluice_bin());
    c.arg("run")
        .arg(&st.pipeline)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in &env {
        c.env(k, v);
    }
    // the trigger waits for more files, so the status API can be asked while it runs
    let text = fs::read_to_string(&st.pipeline).expect("pipeline");
    fs::write(
        &st.pipeline,
        text.replace(
            r#"trigger = "available-now""#,
            r#"trigger = "500 milliseconds""#,
        ),
    )
    .expect("pipeline");
    let child = c.spawn().expect("spawn");
    let port: u16 = port.parse().expect("port");
    wait_until(
        "the status API answers with progress",
        Duration::from_secs(60),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/api/queries").contains("numInputRows")
        },
    );
    let mut seen = String::new();
    for path in ["/api/queries", "/metrics", "/"] {
        seen.push_str(&http_get(port, path));
    }
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("daemon");
    seen.push_str(&String::from_utf8_lossy(&o.stdout));
    seen.push_str(&stderr(&o));
    seen.push_str(&fs::read_to_string(st.w.path().join("progress.jsonl")).unwrap_or_default());
    assert!(seen.contains("numInputRows"), "the outputs were read");
    // an error: a bucket that does not exist, and `sluice validate` of it
    let bad = st.w.path().join("bad.toml");
    fs::write(
        &bad,
        fs::read_to_string(&st.pipeline)
            .expect("pipeline")
            .replace(&st.bucket, "s3://no-such-bucket"),
    )
    .expect("bad pipeline");
    let mut env2: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env2.retain(|(k, _)| *k != "SLUICE_LOG");
    let o = run_pipeline(&bad, &env2);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no-such-bucket"),
        "the error names the bucket: {err}"
    );
    seen.push_str(&err);
    let mut v = std::process::Command::new(sluice_bin());
    v.arg("validate").arg(&bad);
    for (k, val) in &env2 {
        v.env(k, val);
    }
    let o = v.output().expect("validate");
    // a checkpoint that cannot be reached is exit status 1, as for `sluice run`
    assert_eq!(
        o.status.code(),
        Some(1),
        "validate checks the bucket answers"
    );
    let err = stderr(&o);
    assert!(err.contains("no-such-bucket"), "{err}");
    seen.push_str(&err);
    for secret in [SECRET, ACCESS_KEY] {
        assert!(
            !seen.contains(secret),
            "a credential was printed: {}",
            seen.lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Paths that are plain directories stay local: no bucket, no URL parsing.
#[test]
fn file_urls_are_local_directories() {
    let w = workdir();
    let dir: &Path = w.path();
    fs::create_dir_all(dir.join("in")).expect("in");
    put_file(&dir.join("in"), "a.json", "{\"a\":1}\n", 1);
    let p = dir.join("p.toml");
    fs::write(
        &p,
        format!(
            r#"[source.s]
format = "json"
path = "file://{d}/in"
schema = "a BIGINT"

[query.q]
sql = "SELECT a FROM s"
trigger = "available-now"
checkpoint = "file://{d}/chk"
sink = {{ format = "csv", path = "{d}/out" }}
"#,
            d = dir.display()
        ),
    )
    .expect("pipeline");
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        committed_lines(&dir.join("out"), false),
        vec!["1".to_string()]
    );
    assert!(dir.join("chk/metadata").is_file());
}

/// One JSON line per event `i` of `range`: `{"id": i, "k": "k<i % 7>"}`.
fn events(range: std::ops::Range<u64>) -> String {
    range
        .map(|i| format!("{{\"id\": {i}, \"k\": \"k{}\"}}\n", i % 7))
        .collect()
}

#[test]
fn file_notifications_start_batches_without_listing_and_the_modes_swap_on_restart() {
    let s3 = S3Server::start();
    s3.create_bucket("notes");
    // the ObjectCreated events of the input prefix go to a queue, as Auto Loader's setup makes
    // them
    let queue = s3
        .boto(
            "q = sqs.create_queue(QueueName='notes-events')['QueueUrl']\n\
             arn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=['QueueArn'])['Attributes']['QueueArn']\n\
             s3.put_bucket_notification_configuration(Bucket='notes', NotificationConfiguration=\
             {'QueueConfigurations': [{'QueueArn': arn, 'Events': ['s3:ObjectCreated:*'], \
             'Filter': {'Key': {'FilterRules': [{'Name': 'prefix', 'Value': 'in/'}]}}}]})\n\
             print(q)",
            &[],
        )
        .trim()
        .to_string();
    let w = workdir();
    let pipeline = |notifications: bool, trigger: &str| {
        let p = w.path().join(format!("p-{notifications}.toml"));
        fs::write(
            &p,
            format!(
                r#"[source.ev]
format = "cloudFiles"
path = "s3://notes/in"
schema = "id BIGINT, k STRING"
options = {{ "cloudFiles.format" = "json", "cloudFiles.useNotifications" = "{notifications}", "cloudFiles.queueUrl" = "{queue}" }}

[query.q]
sql = "SELECT id, k FROM ev"
trigger = "{trigger}"
checkpoint = "s3://notes/chk"
sink = {{ format = "csv", path = "s3://notes/out" }}
"#
            ),
        )
        .expect("pipeline");
        p
    };
    let mut env: Vec<(&str, String)> = s3.env();
    env.push((
        "SLUICE_LOCAL_DIR",
        w.path().join("local").to_string_lossy().into_owned(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let input = s3.location("s3://notes/in");
    let put = |name: &str, range: std::ops::Range<u64>| {
        input
            .put(name, events(range).into_bytes().into())
            .expect("put");
    };
    let rows = || -> Vec<u64> {
        let mut ids: Vec<u64> = s3
            .committed_lines("s3://notes/out", false)
            .iter()
            .map(|l| l.split(',').next().expect("id").parse().expect("id"))
            .collect();
        ids.sort_unstable();
        ids
    };
    // 1. listing mode
    put("a1.json", 0..10);
    put("a2.json", 10..20);
    let o = run_pipeline(&pipeline(false, "available-now"), &env);
    assert!(o.status.success(), "listing: {}", stderr(&o));
    assert_eq!(rows(), (0..20).collect::<Vec<_>>());
    // 2. notification mode: the queue also holds a1 and a2's events, already read
    let daemon = spawn_pipeline(&pipeline(true, "200 milliseconds"), &env);
    put("b1.json", 20..30);
    wait_until("b1 is committed", Duration::from_secs(60), || {
        rows().len() == 30
    });
    // (the test itself lists out/ to read the rows: only listings of in/ count)
    let listings = || s3.requests("\"GET /notes?list-type=2&prefix=in");
    let after_start = listings();
    assert!(
        after_start >= 1,
        "the server's log names the start-up listing"
    );
    put("b2.json", 30..40);
    wait_until("b2 is committed", Duration::from_secs(60), || {
        rows().len() == 40
    });
    put("sub/b3.json", 40..50); // below the prefix: Auto Loader reads sub-directories too
    wait_until("b3 is committed", Duration::from_secs(60), || {
        rows().len() == 50
    });
    assert_eq!(
        listings(),
        after_start,
        "objects put after start-up started batches without a listing"
    );
    signal(&daemon, "TERM");
    let o = daemon.wait_with_output().expect("daemon");
    assert!(o.status.success(), "notifications: {}", stderr(&o));
    // 3. listing mode again: what arrived since is read, nothing twice
    put("c1.json", 50..60);
    let o = run_pipeline(&pipeline(false, "available-now"), &env);
    assert!(o.status.success(), "listing again: {}", stderr(&o));
    assert_eq!(rows(), (0..60).collect::<Vec<_>>());
    // 4. and notifications again: an object that arrived while stopped is found by the
    // start-up listing, one announced while running by the queue
    put("d1.json", 60..70);
    let daemon = spawn_pipeline(&pipeline(true, "200 milliseconds"), &env);
    put("d2.json", 70..80);
    wait_until("d1 and d2 are committed", Duration::from_secs(60), || {
        rows().len() == 80
    });
    signal(&daemon, "TERM");
    let o = daemon.wait_with_output().expect("daemon");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows(), (0..80).collect::<Vec<_>>());
    // every announcement of a committed object was deleted from the queue (none left visible
    // or in flight)
    let left = s3.boto(
        "a = sqs.get_queue_attributes(QueueUrl=sys.argv[1], AttributeNames=['All'])['Attributes']\n\
         print(int(a['ApproximateNumberOfMessages']) + int(a['ApproximateNumberOfMessagesNotVisible']))",
        &[&queue],
    );
    let bodies = s3.boto(
        "m = sqs.receive_message(QueueUrl=sys.argv[1], MaxNumberOfMessages=10, VisibilityTimeout=0)\n\
         print([x['Body'][:300] for x in m.get('Messages', [])])",
        &[&queue],
    );
    assert_eq!(left.trim(), "0", "messages left in the queue: {bodies}");
}

#[test]
fn kinesis_records_are_read_once_across_a_shard_split_and_a_kill() {
    let s3 = S3Server::start();
    // three shards, 90 records
    let put = |range: std::ops::Range<u64>| {
        s3.boto(
            "for line in sys.argv[2].splitlines():\n\
             \x20   r = json.loads(line)\n\
             \x20   kinesis.put_record(StreamName=sys.argv[1], Data=line.encode(), PartitionKey='p%d' % r['id'])",
            &["events", &events(range)],
        );
    };
    s3.boto(
        "kinesis.create_stream(StreamName='events', ShardCount=3)",
        &[],
    );
    s3.create_bucket("kin");
    put(0..90);
    let w = workdir();
    let pipeline = |trigger: &str| {
        let p = w.path().join("p.toml");
        fs::write(
            &p,
            format!(
                r#"[source.ev]
format = "kinesis"
schema = "id BIGINT, k STRING"
options = {{ streamName = "events", initialPosition = "trim_horizon", maxRecordsPerFetch = 7, shardFetchInterval = "100 milliseconds" }}

[query.q]
sql = "SELECT id, k, \"shardId\" FROM ev"
trigger = "{trigger}"
checkpoint = "s3://kin/chk"
sink = {{ format = "csv", path = "out" }}
"#
            ),
        )
        .expect("pipeline");
        p
    };
    let mut env: Vec<(&str, String)> = s3.env();
    env.push((
        "SLUICE_LOCAL_DIR",
        w.path().join("local").to_string_lossy().into_owned(),
    ));
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // the query runs; the first shard is split while it does; it is killed after batch 8's
    // sink write and restarted
    env.push(("SLUICE_CRASH_AT", "after-sink@8"));
    let daemon = spawn_pipeline(&pipeline("100 milliseconds"), &env);
    let out = w.path().join("out");
    wait_until("two batches are committed", Duration::from_secs(60), || {
        s3.names("s3://kin/chk").iter().any(|n| n == "commits/1")
    });
    s3.boto(
        "s = kinesis.list_shards(StreamName='events')['Shards'][0]\n\
         r = s['HashKeyRange']\n\
         mid = (int(r['StartingHashKey']) + int(r['EndingHashKey'])) // 2\n\
         kinesis.split_shard(StreamName='events', ShardToSplit=s['ShardId'], NewStartingHashKey=str(mid))",
        &[],
    );
    put(90..180);
    let o = daemon.wait_with_output().expect("daemon");
    assert!(killed(&o), "killed at after-sink@8: {}", stderr(&o));
    env.pop();
    let o = run_pipeline(&pipeline("available-now"), &env);
    assert!(o.status.success(), "restart: {}", stderr(&o));
    let lines = committed_lines(&out, false);
    let mut ids: Vec<u64> = lines
        .iter()
        .map(|l| l.split(',').next().expect("id").parse().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..180).collect::<Vec<_>>(), "every record once");
    // the split closed shard 0 and made two children; each child was read only after its
    // parent was finished: its first batch comes after the parent's last
    let shards = s3.boto(
        "for s in kinesis.list_shards(StreamName='events')['Shards']:\n\
         \x20   print(s['ShardId'], s.get('ParentShardId', '-'))",
        &[],
    );
    let children: Vec<&str> = shards
        .lines()
        .filter(|l| l.ends_with("shardId-000000000000"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(children.len(), 2, "{shards}");
    let batches_of = |shard: &str| -> Vec<u64> {
        let mut v = Vec::new();
        for e in fs::read_dir(&out).expect("out") {
            let name = e.expect("e").file_name().to_string_lossy().into_owned();
            let Some(b) = name
                .strip_prefix("part-")
                .and_then(|r| r.split('-').next())
                .and_then(|b| b.parse().ok())
            else {
                continue;
            };
            if fs::read_to_string(out.join(&name))
                .expect("part")
                .lines()
                .any(|l| l.ends_with(shard))
            {
                v.push(b);
            }
        }
        v
    };
    let parent_last = batches_of("shardId-000000000000")
        .into_iter()
        .max()
        .expect("parent rows");
    for c in &children {
        let first = batches_of(c).into_iter().min().expect("child rows");
        assert!(
            first > parent_last,
            "{c} read in batch {first}, its parent until {parent_last}"
        );
    }
    // the same records read from files give the same rows
    let files = workdir();
    fs::create_dir_all(files.path().join("in")).expect("in");
    put_file(&files.path().join("in"), "all.json", &events(0..180), 1);
    let p = files.path().join("p.toml");
    fs::write(
        &p,
        r#"[source.ev]
format = "json"
path = "in"
schema = "id BIGINT, k STRING"

[query.q]
sql = "SELECT id, k FROM ev"
trigger = "available-now"
checkpoint = "chk"
sink = { format = "csv", path = "out" }
"#,
    )
    .expect("pipeline");
    let o = run_pipeline(&p, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let from_files = sorted(committed_lines(&files.path().join("out"), false));
    let from_kinesis = sorted(
        lines
            .iter()
            .map(|l| l.rsplit_once(',').expect("shard column").0.to_string())
            .collect(),
    );
    assert_eq!(from_kinesis, from_files);
}

#[test]
fn a_store_without_conditional_puts_is_refused_unless_the_user_accepts_the_risk() {
    let s3 = S3Server::start();
    // object_store's S3 client with conditional puts turned off stands for such a store
    let st = Staged::new(
        &s3,
        "clicks",
        "unsafe",
        "storage = { \"aws_conditional_put\" = \"disabled\" }\n",
    );
    let o = st.run(&s3, &[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("cannot create an object only if it is absent")
            && err.contains("sluice.allowUnsafeCreate"),
        "{err}"
    );
    assert!(
        !s3.names(&format!("{}/chk", st.bucket))
            .iter()
            .any(|n| n.contains("offsets/")),
        "no batch was planned"
    );
    let text = fs::read_to_string(&st.pipeline).expect("pipeline");
    fs::write(
        &st.pipeline,
        text.replace(
            "\"aws_conditional_put\" = \"disabled\" }",
            "\"aws_conditional_put\" = \"disabled\", \"sluice.allowUnsafeCreate\" = \"true\" }",
        ),
    )
    .expect("pipeline");
    let o = st.run(&s3, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(st.output(&s3), expected("clicks"));
}
