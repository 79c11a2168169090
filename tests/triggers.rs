//! Paths the other suites did not reach: a trigger interval, the listener's events (Spark's
//! started / progress / idle / terminated), the retry waits of a failing sink (the whole
//! announced wait, even while new files keep waking the query), inotify as the way file arrival
//! is learnt of, `cleanSource = delete`, and `fileNameOnly`.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use common::*;
use sluice::prelude::*;
use sluice::{QueryError, QueryProgress, StreamingQueryListener};

const SCHEMA: &str = "event_time TIMESTAMP, action STRING, user_id BIGINT";

fn event(user: i64) -> String {
    format!("{{\"event_time\":\"2025-01-01T00:00:00Z\",\"action\":\"a\",\"user_id\":{user}}}\n")
}

fn session() -> Session {
    Session::builder().build().expect("session")
}

fn stream(s: &Session, dir: &std::path::Path, opts: &[(&str, &str)]) -> DataFrame {
    let mut r = s.read_stream().schema(SCHEMA);
    for (k, v) in opts {
        r = r.option(k, *v);
    }
    r.json(dir.to_str().expect("path")).expect("load")
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

fn batch_ms(p: &QueryProgress) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&p.timestamp)
        .expect("timestamp")
        .timestamp_millis()
}

#[test]
fn a_processing_time_interval_spaces_the_batches() {
    let w = workdir();
    let input = w.path().join("in");
    for i in 0..4 {
        put_file(&input, &format!("{i}.json"), &event(i), i as u64);
    }
    let s = session();
    let seen = Arc::new(Mutex::new(0usize));
    let seen2 = Arc::clone(&seen);
    let q = stream(&s, &input, &[("maxFilesPerTrigger", "1")])
        .write_stream()
        .foreach_batch(move |_, b| {
            *seen2.lock().expect("lock") += rows(b);
            Ok(())
        })
        .trigger(Trigger::ProcessingTime(Duration::from_millis(700)))
        .start()
        .expect("start");
    wait_until("four batches", Duration::from_secs(30), || {
        *seen.lock().expect("lock") == 4
    });
    q.stop();
    let p = q.recent_progress();
    assert_eq!(p.len(), 4, "one file per batch");
    // Spark's rates: input rows over the time since the previous trigger started (none before
    // batch 0), processed rows over the batch's own duration
    assert_eq!(p[0].input_rows_per_second, 0.0);
    for b in &p[1..] {
        assert!(
            b.input_rows_per_second <= 1000.0 / 695.0,
            "one row per >= 0.7 s: {}",
            b.json()
        );
        assert!(
            b.input_rows_per_second < b.processed_rows_per_second,
            "{}",
            b.json()
        );
    }
    for pair in p.windows(2) {
        // batch timestamps are wall-clock ms; the interval is kept on the monotonic clock
        let gap = batch_ms(&pair[1]) - batch_ms(&pair[0]);
        assert!(
            gap >= 695,
            "batches {} and {} only {gap} ms apart (interval 700 ms)",
            pair[0].batch_id,
            pair[1].batch_id
        );
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl StreamingQueryListener for Recorder {
    fn on_query_started(&self, _id: &str, _run_id: &str, name: Option<&str>) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("started {}", name.unwrap_or("")));
    }
    fn on_query_progress(&self, p: &QueryProgress) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("progress {} rows {}", p.batch_id, p.num_input_rows));
    }
    fn on_query_idle(&self, _id: &str, _run_id: &str, timestamp: &str) {
        assert!(timestamp.ends_with('Z'), "{timestamp}");
        self.0.lock().expect("lock").push("idle".into());
    }
    fn on_query_terminated(&self, _id: &str, _run_id: &str, error: Option<&QueryError>) {
        self.0
            .lock()
            .expect("lock")
            .push(format!("terminated {}", error.is_some()));
    }
}

#[test]
fn the_listener_hears_started_progress_idle_and_terminated() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "0.json", &(event(1) + &event(2)), 0);
    let s = session();
    let rec = Arc::new(Recorder::default());
    s.add_listener(rec.clone());
    let q = stream(&s, &input, &[])
        .write_stream()
        .format("memory")
        .query_name("heard")
        .start()
        .expect("start");
    let events = || rec.0.lock().expect("lock").clone();
    wait_until(
        "idle after the first batch",
        Duration::from_secs(30),
        || events().iter().filter(|e| *e == "idle").count() == 1,
    );
    put_file(&input, "1.json", &event(3), 1);
    wait_until(
        "idle again after the second batch",
        Duration::from_secs(30),
        || events().iter().filter(|e| *e == "idle").count() == 2,
    );
    q.stop();
    assert_eq!(
        events(),
        [
            "started heard",
            "progress 0 rows 2",
            "idle",
            "progress 1 rows 1",
            "idle",
            "terminated false"
        ]
    );
}

#[test]
fn a_sink_retry_waits_as_long_as_it_says_while_files_keep_arriving() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "0.json", &event(1), 0);
    let s = session();
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let calls2 = Arc::clone(&calls);
    let q = stream(&s, &input, &[("maxFilesPerTrigger", "1")])
        .write_stream()
        .foreach_batch(move |batch_id, _| {
            let mut c = calls2.lock().expect("lock");
            c.push(Instant::now());
            if batch_id == 0 && c.len() < 3 {
                Err(sluice::EngineError::external("the sink is down"))
            } else {
                Ok(())
            }
        })
        .option("sinkRetryBackoff", "600 milliseconds")
        .start()
        .expect("start");
    // new files wake the query all the time (each is a notification)
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let dir = input.clone();
    let writer = std::thread::spawn(move || {
        let mut i = 1u64;
        while !stop2.load(Ordering::SeqCst) {
            put_file(&dir, &format!("n{i}.json"), &event(i as i64), i);
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    wait_until(
        "batch 0 written after two retries",
        Duration::from_secs(30),
        || calls.lock().expect("lock").len() >= 3,
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    q.stop();
    let c = calls.lock().expect("lock").clone();
    let first = c[1] - c[0];
    let second = c[2] - c[1];
    assert!(
        first >= Duration::from_millis(600),
        "first retry after {first:?}, announced 600ms"
    );
    assert!(
        second >= Duration::from_millis(1200),
        "second retry after {second:?}, announced 1.2s"
    );
    assert_eq!(q.sink_retries(), 2);
}

/// A stop while the sink waits to retry ends the query at once, as a stop (no error); the
/// batch was not committed and runs again on restart.
#[test]
fn a_stop_during_a_sink_retry_is_a_stop_and_the_batch_runs_again() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "0.json", &event(1), 0);
    let s = session();
    let calls = Arc::new(Mutex::new(0u32));
    let calls2 = Arc::clone(&calls);
    let q = stream(&s, &input, &[])
        .write_stream()
        .foreach_batch(move |_, _| {
            *calls2.lock().expect("lock") += 1;
            Err(sluice::EngineError::external("the sink is down"))
        })
        .option("sinkRetryBackoff", "30 seconds")
        .checkpoint_location(w.path().join("chk"))
        .start()
        .expect("start");
    wait_until("the first failure", Duration::from_secs(30), || {
        *calls.lock().expect("lock") == 1 && q.is_retrying()
    });
    let t = Instant::now();
    q.stop();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopped within the 30 s wait"
    );
    assert!(q.exception().is_none(), "{:?}", q.exception());
    assert_eq!(q.status().message, "Stopped");
    // restarted with a working sink: batch 0 again, with its row
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let q = stream(&s, &input, &[])
        .write_stream()
        .foreach_batch(move |id, b| {
            seen2.lock().expect("lock").push((id, rows(b)));
            Ok(())
        })
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(w.path().join("chk"))
        .start()
        .expect("restart");
    q.await_termination().expect("done");
    assert_eq!(*seen.lock().expect("lock"), [(0, 1)]);
}

#[test]
fn file_arrival_is_learnt_of_through_inotify() {
    let w = workdir();
    for (mode, want) in [(None, "inotify"), (Some("poll"), "poll")] {
        let input = w.path().join(format!("in-{want}"));
        fs::create_dir_all(&input).expect("mkdir");
        let s = session();
        let opts: Vec<(&str, &str)> = match mode {
            Some(m) => vec![("watchMode", m), ("pollInterval", "100 milliseconds")],
            None => vec![],
        };
        let q = stream(&s, &input, &opts)
            .write_stream()
            .format("memory")
            .query_name(&format!("arrivals_{want}"))
            .start()
            .expect("start");
        wait_until("waiting for data", Duration::from_secs(30), || {
            q.status().message == "Waiting for data to arrive"
        });
        put_file(&input, "a.json", &event(1), 0);
        wait_until("the file's batch", Duration::from_secs(30), || {
            q.last_progress().is_some()
        });
        q.stop();
        let p = q.last_progress().expect("progress");
        assert_eq!(
            p.sources[0].metrics.get("watch").map(String::as_str),
            Some(want),
            "{mode:?}: {}",
            p.json()
        );
    }
}

#[test]
fn clean_source_delete_removes_only_the_files_of_committed_batches() {
    let w = workdir();
    let input = w.path().join("in");
    for i in 0..3 {
        put_file(&input, &format!("{i}.json"), &event(i), i as u64);
    }
    let s = session();
    // batch 1 fails for good: batch 0 is committed, batch 1 is not
    let q = stream(
        &s,
        &input,
        &[("maxFilesPerTrigger", "1"), ("cleanSource", "delete")],
    )
    .write_stream()
    .foreach_batch(|batch_id, _| {
        if batch_id == 1 {
            Err(sluice::EngineError::user("stop here"))
        } else {
            Ok(())
        }
    })
    .trigger(Trigger::AvailableNow)
    .checkpoint_location(w.path().join("chk"))
    .start()
    .expect("start");
    assert!(q.await_termination().is_err());
    let mut left: Vec<String> = fs::read_dir(&input)
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["1.json", "2.json"], "only batch 0's file is deleted");

    // the rest, on restart: every file read once, then deleted
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let q = stream(
        &s,
        &input,
        &[("maxFilesPerTrigger", "1"), ("cleanSource", "delete")],
    )
    .write_stream()
    .foreach_batch(move |id, b| {
        seen2.lock().expect("lock").push((id, rows(b)));
        Ok(())
    })
    .trigger(Trigger::AvailableNow)
    .checkpoint_location(w.path().join("chk"))
    .start()
    .expect("start");
    q.await_termination().expect("done");
    assert_eq!(*seen.lock().expect("lock"), [(1, 1), (2, 1)]);
    assert_eq!(fs::read_dir(&input).expect("ls").count(), 0);
}

#[test]
fn file_name_only_takes_a_name_seen_in_another_folder_as_seen() {
    let w = workdir();
    put_file(&w.path().join("in/a"), "x.json", &event(1), 0);
    let run = |name_only: bool, chk: &str| -> usize {
        let s = session();
        let seen = Arc::new(Mutex::new(0usize));
        let seen2 = Arc::clone(&seen);
        let glob = w.path().join("in/*/*.json");
        let q = s
            .read_stream()
            .schema(SCHEMA)
            .option("fileNameOnly", name_only)
            .json(glob.to_str().expect("glob"))
            .expect("load")
            .write_stream()
            .foreach_batch(move |_, b| {
                *seen2.lock().expect("lock") += rows(b);
                Ok(())
            })
            .trigger(Trigger::AvailableNow)
            .checkpoint_location(w.path().join(chk))
            .start()
            .expect("start");
        q.await_termination().expect("done");
        let n = *seen.lock().expect("lock");
        n
    };
    assert_eq!(run(true, "chk-name"), 1);
    assert_eq!(run(false, "chk-path"), 1);
    // the same name in another folder
    put_file(&w.path().join("in/b"), "x.json", &event(2), 1);
    assert_eq!(
        run(true, "chk-name"),
        0,
        "fileNameOnly: b/x.json was seen as a/x.json"
    );
    assert_eq!(run(false, "chk-path"), 1, "by path: b/x.json is new");
}

/// CPU time (user + system) the process has used, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // the fields after the command name (which may hold spaces) in parentheses
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the state field
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// A daemon with nothing to do uses no CPU: its event-driven watchers (a file directory, a
/// Delta log) wake on events that can mean new data, not on the query's own listing.
#[cfg(feature = "delta")]
#[test]
fn an_idle_daemon_uses_no_cpu() {
    let w = workdir();
    put_file(&w.path().join("in"), "0.json", &event(1), 0);
    let p = w.path().join("p.toml");
    fs::write(
        &p,
        format!(
            r#"[source.raw]
format = "json"
path = "in"
schema = "{SCHEMA}"

[source.bronze]
format = "delta"
path = "bronze"
schema = "{SCHEMA}"

[query.to_bronze]
sql = "SELECT * FROM raw"
checkpoint = "chk/bronze"
sink = {{ format = "delta", path = "bronze" }}

[query.from_bronze]
sql = "SELECT user_id FROM bronze"
checkpoint = "chk/silver"
sink = {{ format = "csv", path = "silver" }}
"#
        ),
    )
    .expect("pipeline");
    let child = spawn_pipeline(&p, &[]);
    let silver = w.path().join("silver");
    wait_until(
        "the row through both stages",
        Duration::from_secs(60),
        || {
            fs::metadata(silver.join("_sluice_metadata")).is_ok()
                && committed_lines(&silver, false).len() == 1
        },
    );
    // settle, then measure three idle seconds
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(child.id()) - before;
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // clock ticks are 10 ms: 3 idle seconds may cost a few (RocksDB, the HTTP-less runtime),
    // the busy loop this guards against cost ~200
    assert!(used <= 5, "{used} ticks of CPU in 3 idle seconds");
}

/// A pipeline file reading `in/` as JSON into a CSV sink, with `extra` source options.
fn csv_pipeline(dir: &std::path::Path, trigger: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("p.toml");
    fs::write(
        &p,
        format!(
            r#"[source.events]
format = "json"
path = "in"
schema = "{SCHEMA}"
options = {{ {extra} }}

[query.copy]
sql = "SELECT user_id FROM events"
trigger = "{trigger}"
checkpoint = "chk"
sink = {{ format = "csv", path = "out" }}
"#
        ),
    )
    .expect("pipeline");
    p
}

/// A file written in place, slowly (5 lines, a pause, 6 more), while the query waits for
/// arrivals: it is taken once it is complete (closed after writing), with all its lines.
#[test]
fn a_file_written_in_place_slowly_is_read_whole() {
    use std::io::Write;
    let w = workdir();
    fs::create_dir_all(w.path().join("in")).expect("in");
    let p = csv_pipeline(w.path(), "file-arrival", "");
    let port = common::db::free_port();
    let child = std::process::Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until(
        "the query to wait for files",
        Duration::from_secs(30),
        || http_get(port, "/api/queries").contains("Waiting for data to arrive"),
    );
    {
        let mut f = fs::File::create(w.path().join("in/slow.json")).expect("create");
        for i in 0..5 {
            f.write_all(event(i).as_bytes()).expect("write");
        }
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(400));
        for i in 5..11 {
            f.write_all(event(i).as_bytes()).expect("write");
        }
    } // closed: complete
    let out = w.path().join("out");
    wait_until("the file's rows", Duration::from_secs(30), || {
        fs::metadata(out.join("_sluice_metadata")).is_ok()
            && !committed_lines(&out, false).is_empty()
    });
    // one more file, then stop: the slow file was taken once, whole
    put_file(&w.path().join("in"), "next.json", &event(99), 100);
    wait_until("the next file", Duration::from_secs(30), || {
        committed_lines(&out, false).len() >= 12
    });
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut rows: Vec<i64> = committed_lines(&out, false)
        .iter()
        .map(|l| l.parse().expect("user_id"))
        .collect();
    rows.sort();
    let mut want: Vec<i64> = (0..11).collect();
    want.push(99);
    assert_eq!(rows, want);
}

/// A batch re-run after a crash reads exactly the bytes its offsets recorded, even when the
/// file grew in between (with a warning naming it), on the event-driven watcher.
#[test]
fn a_rerun_batch_reads_the_bytes_it_recorded() {
    let w = workdir();
    let lines: String = (0..3).map(event).collect();
    put_file(&w.path().join("in"), "a.json", &lines, 0);
    let p = csv_pipeline(w.path(), "file-arrival", "");
    let o = run_pipeline_args(&p, &[], &[("SLUICE_CRASH_AT", "after-offsets@0")]);
    assert!(killed(&o), "{}", String::from_utf8_lossy(&o.stderr));
    // the file grows in place after batch 0 recorded it
    let grown: String = (0..5).map(event).collect();
    fs::write(w.path().join("in/a.json"), grown).expect("append");
    let child = spawn_pipeline(&p, &[("SLUICE_LOG", "warn")]);
    let out = w.path().join("out");
    wait_until("batch 0 re-run", Duration::from_secs(30), || {
        fs::metadata(out.join("_sluice_metadata")).is_ok()
            && !committed_lines(&out, false).is_empty()
    });
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(committed_lines(&out, false), ["0", "1", "2"], "{err}");
    assert!(
        err.contains("a.json grew after it was taken into a batch"),
        "{err}"
    );
}

/// A file appended to after it was taken (a logger writing to the same file): its new lines
/// are not read — a file is taken once — and the daemon says so, naming the file, once.
#[test]
fn a_file_modified_after_it_was_taken_is_named_in_a_warning() {
    let w = workdir();
    let input = w.path().join("in");
    put_file(&input, "a.json", &event(0), 0);
    let p = csv_pipeline(w.path(), "file-arrival", "");
    let child = spawn_pipeline(&p, &[("SLUICE_LOG", "warn")]);
    let out = w.path().join("out");
    let rows = || {
        fs::metadata(out.join("_sluice_metadata"))
            .map(|_| sorted(committed_lines(&out, false)))
            .unwrap_or_default()
    };
    wait_until("a.json's row", Duration::from_secs(30), || {
        rows().len() == 1
    });
    {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(input.join("a.json"))
            .expect("open");
        f.write_all(event(1).as_bytes()).expect("append");
    }
    put_file(&input, "b.json", &event(2), 1);
    wait_until("b.json's row", Duration::from_secs(30), || {
        rows().len() == 2
    });
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(rows(), ["0", "2"], "the appended line is not read");
    assert_eq!(
        err.matches("a.json was modified after it was taken into a batch")
            .count(),
        1,
        "{err}"
    );
}

/// A file deleted after its batch was planned: the re-run fails naming it and the way out;
/// with ignoreMissingFiles it is skipped with a warning and the query goes on.
#[test]
fn a_file_deleted_after_its_batch_was_planned() {
    let w = workdir();
    put_file(&w.path().join("in"), "gone.json", &event(1), 0);
    let p = csv_pipeline(w.path(), "available-now", "");
    let o = run_pipeline_args(&p, &[], &[("SLUICE_CRASH_AT", "after-offsets@0")]);
    assert!(killed(&o));
    fs::remove_file(w.path().join("in/gone.json")).expect("rm");
    let o = run_pipeline_args(&p, &[], &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gone.json was deleted after it was taken into a batch"),
        "{err}"
    );
    assert!(err.contains("ignoreMissingFiles=true"), "{err}");
    let p = csv_pipeline(w.path(), "available-now", "ignoreMissingFiles = true");
    put_file(&w.path().join("in"), "next.json", &event(2), 1);
    let o = run_pipeline_args(&p, &[], &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped (ignoreMissingFiles)"), "{err}");
    assert_eq!(committed_lines(&w.path().join("out"), false), ["2"]);
}
