//! The daemon's HTTP endpoint: status codes and JSON shapes of the status API, the Prometheus
//! text parsed by a real parser (prometheus-parse) with every named metric present and moving,
//! stop through the API, bearer-token auth, and the refusal of a non-loopback address.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::db::free_port;
use common::*;

fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // chunked bodies: keep the payload lines only
    let body = if resp
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n.min(tail.len())]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body
    };
    (status, body)
}

fn pipeline(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("p.toml");
    std::fs::write(
        &p,
        r#"[source.events]
format = "json"
path = "in"
schema = "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE"
watermark = { column = "event_time", delay = "1 minute" }

[query.counts]
sql = "SELECT window.start AS ws, action, count(*) AS n FROM events GROUP BY window(event_time, '1 minute'), action"
output_mode = "update"
checkpoint = "chk"
sink = { format = "console" }
"#,
    )
    .expect("pipeline");
    p
}

/// Ten click events in minute `minute`, as file `name`.
fn put_at(dir: &Path, name: &str, minute: u64, seq: u64) {
    let body: String = (0..10)
        .map(|i| {
            format!(
                "{{\"event_time\":\"2025-01-01T00:{:02}:{:02}Z\",\"action\":\"click\",\"user_id\":{i},\"value\":1.0}}\n",
                minute,
                i
            )
        })
        .collect();
    put_file(&dir.join("in"), name, &body, seq);
}

fn put(dir: &Path, n: u64) {
    put_at(dir, &format!("{n}.json"), n, n);
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus text parses");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn metric(text: &str, name: &str) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus text parses");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("query") == Some("counts"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
}

#[test]
fn status_api_metrics_and_stop() {
    let w = workdir();
    put(w.path(), 0);
    let port = free_port();
    let p = pipeline(w.path());
    let mut c = std::process::Command::new(sluice_bin());
    c.arg("run")
        .arg(&p)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("SLUICE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("spawn");
    wait_until("the server", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(http(port, "GET", "/healthz", None), (200, "ok".to_string()));
    wait_until("a first batch", Duration::from_secs(30), || {
        let (_, b) = http(port, "GET", "/api/queries", None);
        b.contains("\"batchId\"")
    });
    let (code, body) = http(port, "GET", "/api/queries", None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let q = &v[0];
    assert_eq!(q["name"], "counts");
    assert_eq!(q["active"], true);
    assert!(
        q["id"].is_string() && q["status"]["message"].is_string(),
        "{q}"
    );
    assert!(q["lastProgress"]["numInputRows"].is_u64(), "{q}");
    assert!(q["exception"].is_null());
    assert_eq!(q["guarantee"], "at-least-once", "a console sink: {q}");

    let (code, body) = http(port, "GET", "/api/queries/counts/progress?limit=1", None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert!(v[0]["stateOperators"].is_array());
    assert_eq!(http(port, "GET", "/api/queries/nope/progress", None).0, 404);
    assert_eq!(
        http(port, "GET", "/api/queries/counts/progress?limit=x", None).0,
        400
    );

    // the watermark is set by the batch after the first (Spark's no-data batch): until then
    // there is no watermark to lag behind
    wait_until("a watermark", Duration::from_secs(30), || {
        metric(
            &http(port, "GET", "/metrics", None).1,
            "sluice_watermark_lag_seconds",
        )
        .is_some()
    });
    let (code, m1) = http(port, "GET", "/metrics", None);
    assert_eq!(code, 200);
    for name in [
        "sluice_input_rows_total",
        "sluice_processed_rows_per_second",
        "sluice_batch_duration_seconds",
        "sluice_watermark_lag_seconds",
        "sluice_state_rows",
        "sluice_state_bytes",
        "sluice_state_rows_dropped_by_watermark_total",
        "sluice_late_input_rows_total",
        "sluice_sink_retries_total",
        "sluice_source_backlog",
    ] {
        assert!(metric(&m1, name).is_some(), "{name} missing from\n{m1}");
    }
    assert_eq!(
        sample(
            &m1,
            "sluice_query_state",
            &[("query", "counts"), ("state", "running")]
        ),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        sample(
            &m1,
            "sluice_query_state",
            &[("query", "counts"), ("state", "failed")]
        ),
        Some(0.0),
        "{m1}"
    );
    assert!(m1.contains("# HELP sluice_state_rows_dropped_by_watermark_total Rows the stateful operator dropped as late, counted as Spark's numRowsDroppedByWatermark"), "{m1}");
    let rows1 = metric(&m1, "sluice_input_rows_total").expect("rows");
    let batches1 = metric(&m1, "sluice_batch_duration_seconds").expect("batches");
    put(w.path(), 1);
    wait_until("the metrics to move", Duration::from_secs(30), || {
        let (_, m) = http(port, "GET", "/metrics", None);
        metric(&m, "sluice_input_rows_total").is_some_and(|r| r >= rows1 + 10.0)
    });
    let (_, m2) = http(port, "GET", "/metrics", None);
    assert!(metric(&m2, "sluice_batch_duration_seconds").expect("b") > batches1);
    assert!(
        metric(&m2, "sluice_state_rows").expect("state") >= 2.0,
        "{m2}"
    );
    // each stateful operator on its own (this query has one: the window aggregation)
    assert_eq!(
        sample(
            &m2,
            "sluice_operator_state_rows",
            &[("query", "counts"), ("operator", "0 stateStoreSave")]
        ),
        metric(&m2, "sluice_state_rows"),
        "{m2}"
    );

    // late data: ten events of one window that closed: 10 late input rows, and 1 partially
    // aggregated row dropped by the watermark (Spark's count)
    put(w.path(), 5);
    put(w.path(), 6);
    wait_until(
        "the batches of minutes 5 and 6",
        Duration::from_secs(30),
        || {
            let (_, m) = http(port, "GET", "/metrics", None);
            metric(&m, "sluice_input_rows_total").is_some_and(|r| r >= rows1 + 30.0)
        },
    );
    put_at(w.path(), "late.json", 0, 7);
    wait_until("the late batch", Duration::from_secs(30), || {
        let (_, m) = http(port, "GET", "/metrics", None);
        metric(&m, "sluice_input_rows_total").is_some_and(|r| r >= rows1 + 40.0)
    });
    let (_, m3) = http(port, "GET", "/metrics", None);
    assert_eq!(
        metric(&m3, "sluice_late_input_rows_total"),
        Some(10.0),
        "{m3}"
    );
    assert_eq!(
        metric(&m3, "sluice_state_rows_dropped_by_watermark_total"),
        Some(1.0),
        "{m3}"
    );

    // stop through the API: 202, and the daemon (its only query stopped) exits cleanly
    let (code, body) = http(port, "POST", "/api/queries/counts/stop", None);
    assert_eq!(code, 202, "{body}");
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("query 'counts' stop requested through the HTTP API"),
        "{err}"
    );
    assert!(
        err.contains("query 'counts' stopped; no query left running"),
        "{err}"
    );
    assert!(err.contains("every query is done; exiting"), "{err}");
}

/// A query that failed for good makes /healthz answer 503 naming it, its state metric says
/// `failed` and the status API `"state": "failed"`, while the other query runs on.
#[test]
fn health_and_state_tell_a_failed_query() {
    let w = workdir();
    std::fs::create_dir_all(w.path().join("bad")).expect("bad");
    std::fs::write(w.path().join("bad/x.json"), "{\"a\": 1}\nnot json\n").expect("write");
    put(w.path(), 0);
    let p = w.path().join("p.toml");
    std::fs::write(
        &p,
        r#"[source.events]
format = "json"
path = "in"
schema = "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE"

[source.strict]
format = "json"
path = "bad"
schema = "a BIGINT"
options = { mode = "FAILFAST" }

[query.good]
sql = "SELECT action FROM events"
checkpoint = "chk/good"
sink = { format = "console" }

[query.bad]
sql = "SELECT a FROM strict"
checkpoint = "chk/bad"
sink = { format = "console" }
"#,
    )
    .expect("pipeline");
    let port = free_port();
    let child = std::process::Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until("the server", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    wait_until("the bad query to fail", Duration::from_secs(30), || {
        http(port, "GET", "/healthz", None).0 == 503
    });
    let (code, body) = http(port, "GET", "/healthz", None);
    assert_eq!((code, body.as_str()), (503, "failed: bad"));
    let (_, m) = http(port, "GET", "/metrics", None);
    assert_eq!(
        sample(
            &m,
            "sluice_query_state",
            &[("query", "bad"), ("state", "failed")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "sluice_query_state",
            &[("query", "good"), ("state", "running")]
        ),
        Some(1.0),
        "{m}"
    );
    let (_, body) = http(port, "GET", "/api/queries", None);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let state = |name: &str| {
        v.as_array()
            .expect("list")
            .iter()
            .find(|q| q["name"] == name)
            .map(|q| q["state"].clone())
    };
    assert_eq!(state("bad"), Some(serde_json::json!("failed")), "{v}");
    assert_eq!(state("good"), Some(serde_json::json!("running")), "{v}");
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(1), "a query failed for good");
}

#[test]
fn bearer_token_and_non_loopback_refusal() {
    let w = workdir();
    put(w.path(), 0);
    let p = pipeline(w.path());
    // 0.0.0.0 without a token: refused before anything runs
    let o = run_pipeline_args(&p, &["--http", "0.0.0.0:0"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--auth-token"));

    let port = free_port();
    let child = std::process::Command::new(sluice_bin())
        .arg("run")
        .arg(&p)
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--auth-token",
            "s3cret",
        ])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_until("the server", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(http(port, "GET", "/api/queries", None).0, 401);
    assert_eq!(http(port, "GET", "/metrics", Some("wrong")).0, 401);
    assert_eq!(http(port, "GET", "/api/queries", Some("s3cret")).0, 200);
    assert_eq!(http(port, "POST", "/api/queries/counts/stop", None).0, 401);
    assert_eq!(
        http(port, "POST", "/api/queries/counts/stop", Some("s3cret")).0,
        202
    );
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success());
}
