//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/test) loads the page of a running pipeline, its script polls the status API and draws
//! the charts; the test asserts on the DOM what a user sees — the y-axis labels whole (30,000),
//! the table of recent batches with its rows, the backlog figure, and the note a chart without a
//! watermark shows — and keeps a screenshot as a test artifact
//! (`$CARGO_TARGET_TMPDIR/dashboard.png`).

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::db::free_port;
use common::*;

fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    Command::new(std::env::var("SLUICE_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into()))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (scripts/test installs it)")
}

/// The `data-NAME="..."` attribute values in `dom`, in order.
fn attrs<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!("{name}=\"");
    dom.match_indices(&key)
        .filter_map(|(i, m)| dom[i + m.len()..].split('"').next())
        .collect()
}

/// The attributes of the chart box `id` (its opening tag).
fn chart_tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id} in {dom}"));
    let start = dom[..at].rfind('<').expect("tag start");
    let end = at + dom[at..].find('>').expect("tag end");
    &dom[start..end]
}

fn attr(tag: &str, name: &str) -> Option<String> {
    attrs(tag, name).first().map(|s| s.to_string())
}

#[test]
fn dashboard_shows_the_running_pipeline() {
    let w = workdir();
    let p = w.path().join("p.toml");
    std::fs::write(
        &p,
        r#"[source.events]
format = "json"
path = "in"
schema = "event_time TIMESTAMP, action STRING, value DOUBLE"
watermark = { column = "event_time", delay = "1 minute" }
options = { maxFilesPerTrigger = 1 }

[source.raw]
format = "json"
path = "in"
schema = "event_time TIMESTAMP, action STRING, value DOUBLE"
options = { maxFilesPerTrigger = 1 }

[query.counts]
sql = "SELECT window.start AS ws, action, count(*) AS n FROM events GROUP BY window(event_time, '1 minute'), action"
output_mode = "update"
checkpoint = "chk/counts"
sink = { format = "console" }

[query.plain]
sql = "SELECT action, value FROM raw WHERE value > 0"
checkpoint = "chk/plain"
sink = { format = "console" }
expectations = [{ name = "big", condition = "value > 5" }]
"#,
    )
    .expect("pipeline");
    std::fs::create_dir_all(w.path().join("in")).expect("in");
    let port = free_port();
    let child = Command::new(sluice_bin())
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
    // batch 0: 30,000 groups, so that the state chart's y-axis reads 30,000
    let first: String = (0..30_000)
        .map(|i| {
            format!("{{\"event_time\":\"2025-01-01T00:00:00Z\",\"action\":\"a{i}\",\"value\":1}}\n")
        })
        .collect();
    put_file(&w.path().join("in"), "0.json", &first, 0);
    for n in 1..3u64 {
        put_file(
            &w.path().join("in"),
            &format!("{n}.json"),
            &format!(
                "{{\"event_time\":\"2025-01-01T00:0{n}:00Z\",\"action\":\"click\",\"value\":1}}\n"
            ),
            n,
        );
    }
    let url = format!("http://127.0.0.1:{port}/");
    let profile = w.path().join("chromium");
    let start = std::time::Instant::now();
    let dom = loop {
        let o = chromium(&["--dump-dom", &url], &profile);
        let dom = String::from_utf8_lossy(&o.stdout).into_owned();
        let points: Vec<u64> = attrs(&dom, "data-points")
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        if points.len() == 10 && points.iter().all(|n| *n >= 3) {
            break dom;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "charts with three points: {points:?}\n{dom}"
        );
    };
    assert!(
        dom.contains("<h2>counts</h2>") && dom.contains("<h2>plain</h2>"),
        "{dom}"
    );
    assert!(dom.contains("uplot"), "uPlot drew the charts: {dom}");

    // the state chart's y labels are whole: the plot starts right of the widest label
    let state = chart_tag(&dom, "q-counts-state");
    let label = attr(state, "data-ylabel").expect("a y label");
    assert!(
        label.contains(",") && label.len() >= 6,
        "a label like 30,000: {label}"
    );
    let label_w: f64 = attr(state, "data-ylabel-width")
        .and_then(|v| v.parse().ok())
        .expect("label width");
    let plot_left: f64 = attr(state, "data-plot-left")
        .and_then(|v| v.parse().ok())
        .expect("plot left");
    assert!(
        plot_left >= label_w + 4.0,
        "the y axis ({plot_left}px) holds its label {label} ({label_w}px)"
    );

    // the table of recent batches: batch 0 of counts read 30,000 rows
    let counts = &dom[dom.find("id=\"q-counts\"").expect("counts section")..];
    let counts = &counts[..counts.find("id=\"q-plain\"").unwrap_or(counts.len())];
    assert!(
        counts.contains("<tr data-batch=\"0\"><td>0</td><td>30,000</td>"),
        "{counts}"
    );
    assert!(counts.contains("<tr data-batch=\"2\">"), "{counts}");
    // every stateful operator of the last batch, with Spark's name; none for a stateless query
    assert!(
        counts.contains("<tr data-operator=\"0\"><td>0 stateStoreSave</td>"),
        "{counts}"
    );
    assert!(
        counts.contains("backlog: <b class=\"backlog\">0</b>"),
        "{counts}"
    );
    // with a watermark the lag chart draws; without one it says why it is empty
    let plain = &dom[dom.find("id=\"q-plain\"").expect("plain section")..];
    assert!(
        plain.contains("<table class=\"operators\" hidden"),
        "no operator table for a stateless query: {plain}"
    );
    assert!(
        plain.contains("This query has no watermark, so there is no lag to show"),
        "{plain}"
    );
    let note_hidden = |section: &str| {
        let lag = &section[section.find("-lag\"").expect("lag chart")..];
        let lag = &lag[..lag.find("-state\"").unwrap_or(lag.len())];
        lag.contains("<div class=\"note\" hidden")
    };
    assert!(!note_hidden(plain), "the note shows for plain: {plain}");
    assert!(
        note_hidden(counts),
        "no note beside a drawn lag chart: {counts}"
    );

    // expectations: the counts over the batches shown, and the pipeline's graph
    assert!(
        plain.contains("<tr data-expectation=\"big\"><td>big</td><td>0</td><td>30,002</td></tr>"),
        "{plain}"
    );
    assert!(
        !counts.contains("<table class=\"quality\">"),
        "no expectations, no table: {counts}"
    );
    let graph = &dom[dom.find("id=\"graph\"").expect("graph")..];
    assert!(
        graph.contains("data-node=\"plain\"") && graph.contains("data-node=\"raw\""),
        "{graph}"
    );
    // and in Prometheus
    let metrics = http_get(port, "/metrics");
    let failed = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_expectation_records_total{")
                && l.contains("expectation=\"big\"")
                && l.contains("result=\"failed\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failed.ends_with(" 30002"), "{failed}");

    // a screenshot, kept as a test artifact
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let o = chromium(
        &[
            "--window-size=1300,1400",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        &w.path().join("chromium2"),
    );
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("dashboard screenshot: {}", shot.display());
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success());
}
