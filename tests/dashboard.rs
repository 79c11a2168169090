//! The live dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/test) loads the page of a running pipeline, its script polls the status API and draws
//! the charts; the test asserts on the DOM that every chart has at least two points, and saves a
//! screenshot (`$CARGO_TARGET_TMPDIR/dashboard.png`).

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

#[test]
fn dashboard_charts_show_the_running_pipeline() {
    let w = workdir();
    let p = w.path().join("p.toml");
    std::fs::write(
        &p,
        r#"[source.events]
format = "json"
path = "in"
schema = "event_time TIMESTAMP, action STRING, value DOUBLE"
watermark = { column = "event_time", delay = "1 minute" }

[query.counts]
sql = "SELECT window.start AS ws, action, count(*) AS n FROM events GROUP BY window(event_time, '1 minute'), action"
output_mode = "update"
checkpoint = "chk"
sink = { format = "console" }
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
    for n in 0..3u64 {
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
    let mut dom = String::new();
    wait_until("charts with two points", Duration::from_secs(90), || {
        let o = chromium(&["--dump-dom", &url], &profile);
        dom = String::from_utf8_lossy(&o.stdout).into_owned();
        let points: Vec<u64> = dom
            .match_indices("data-points=\"")
            .filter_map(|(i, m)| {
                dom[i + m.len()..]
                    .split('"')
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        points.len() == 5 && points.iter().all(|n| *n >= 2)
    });
    assert!(dom.contains("<h2>counts</h2>"), "{dom}");
    assert!(dom.contains("Watermark lag"), "{dom}");
    assert!(dom.contains("uplot"), "uPlot drew the charts: {dom}");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let o = chromium(
        &[
            "--window-size=1300,900",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        &w.path().join("chromium2"),
    );
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&o.stderr));
    signal(&child, "TERM");
    let o = child.wait_with_output().expect("wait");
    assert!(o.status.success());
}
