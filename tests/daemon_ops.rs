//! The daemon keeps going when one query fails: a query failing on an external error (its
//! database down) is restarted with backoff and catches up when the database is back, while
//! another query keeps writing and a query failing on a user error (FAILFAST on bad data) stops
//! alone; `--fail-fast` makes any failure fatal.

mod common;

use std::time::Duration;

use common::db::PrivatePg;
use common::*;

fn events(n: u64) -> String {
    (0..5)
        .map(|i| {
            format!(
                "{{\"event_time\":\"2025-01-01T00:00:{:02}Z\",\"action\":\"click\",\"user_id\":{},\"value\":1.5}}\n",
                i,
                n * 10 + i
            )
        })
        .collect()
}

#[test]
fn failing_queries_are_isolated_restarted_with_backoff_or_stopped_for_good() {
    let server = PrivatePg::start();
    let pg = server.client();
    let db = pg.new_db("ops");
    server.stop_server();
    let w = workdir();
    put_file(
        &w.path().join("bad"),
        "bad.json",
        "{\"user_id\": \"x\"}\n",
        0,
    );
    let p = w.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            r#"[source.events]
format = "json"
path = "in"
schema = "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE"

[source.bad]
format = "json"
path = "bad"
schema = "user_id BIGINT"
options = {{ mode = "FAILFAST" }}

[query.files]
sql = "SELECT user_id FROM events"
checkpoint = "chk/files"
sink = {{ format = "csv", path = "out" }}

[query.db]
sql = "SELECT user_id, value FROM events"
checkpoint = "chk/db"
sink = {{ format = "jdbc", options = {{ url = "jdbc:postgresql://127.0.0.1:{}/{db}?user=sluice", dbtable = "ids", sinkMaxRetries = "0", connectTimeout = "1 second" }} }}

[query.broken]
sql = "SELECT user_id FROM bad"
checkpoint = "chk/broken"
sink = {{ format = "console" }}
"#,
            server.port
        ),
    )
    .expect("pipeline");
    let mut child = spawn_pipeline(&p, &[]);
    // the daemon's messages, as they come
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = std::sync::Arc::clone(&log);
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(mut l) = log2.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let logged = |what: &str| log.lock().map(|l| l.contains(what)).unwrap_or(false);
    for n in 0..3 {
        put_file(&w.path().join("in"), &format!("{n}.json"), &events(n), n);
    }
    let out = w.path().join("out");
    let files_rows = || {
        std::fs::metadata(out.join("_sluice_metadata"))
            .map(|_| committed_lines(&out, false).len())
            .unwrap_or(0)
    };
    wait_until(
        "the file query's rows while the database is down",
        Duration::from_secs(60),
        || files_rows() == 15,
    );
    wait_until(
        "the database query to fail and be rescheduled",
        Duration::from_secs(60),
        || logged("query 'db' failed on an external error"),
    );
    server.start_server();
    let count = || {
        pg.try_query(&db, "SELECT count(*) FROM ids")
            .ok()
            .and_then(|r| r.first().and_then(|c| c.parse::<usize>().ok()))
    };
    wait_until(
        "the database query to restart and catch up",
        Duration::from_secs(120),
        || count() == Some(15),
    );
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let err = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "a query failed for good: {err}");
    assert!(
        err.contains("query 'db' failed on an external error"),
        "{err}"
    );
    assert!(err.contains("restarting in 1s (attempt 1)"), "{err}");
    assert!(
        err.contains("query 'broken' failed for good (User error)"),
        "{err}"
    );
    assert!(err.contains("bad.json line 1"), "{err}");
    assert_eq!(files_rows(), 15, "the file query was not disturbed");

    // --fail-fast: the user error stops everything
    let w2 = workdir();
    put_file(
        &w2.path().join("bad"),
        "bad.json",
        "{\"user_id\": \"x\"}\n",
        0,
    );
    std::fs::create_dir_all(w2.path().join("in")).expect("in");
    let p2 = w2.path().join("p.toml");
    let text = std::fs::read_to_string(&p).expect("read");
    std::fs::write(&p2, text).expect("write");
    let o = run_pipeline_args(&p2, &["--fail-fast"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--fail-fast"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
