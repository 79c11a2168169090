//! Helpers shared by the end-to-end tests: temp workspaces, input files with controlled
//! modification times, running the `sluice` binary, reading a file sink's committed rows.

#![allow(dead_code)]

pub mod db;
#[cfg(feature = "delta")]
pub mod delta;
pub mod joins;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "delta")]
pub mod s3;
pub mod spark;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The daemon binary built by cargo for these tests.
/// The repository root, read when the test runs (cargo sets it): a test
/// binary built from another clone into the shared target directory would
/// otherwise point at that clone.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Writes `content` to `dir/name` through a hidden temporary name and a rename (as a
/// well-behaved producer does), with modification time `base + seq` seconds, so the source
/// orders files by `seq`.
pub fn put_file(dir: &Path, name: &str, content: &str, seq: u64) {
    fs::create_dir_all(dir).expect("mkdir");
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).expect("write input");
    let f = fs::File::options().write(true).open(&tmp).expect("open");
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seq);
    f.set_modified(t).expect("mtime");
    drop(f);
    fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// Copies every file of `from` into `to`, ordered by name (the n-th file gets mtime seq n).
pub fn stage_inputs(from: &Path, to: &Path) -> usize {
    let mut names: Vec<_> = fs::read_dir(from)
        .expect("read inputs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for (i, n) in names.iter().enumerate() {
        let content = fs::read_to_string(from.join(n)).expect("read input");
        put_file(to, n, &content, i as u64);
    }
    names.len()
}

/// Runs `sluice run <pipeline>` to its end, with extra environment.
pub fn run_pipeline(pipeline: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(sluice_bin());
    c.arg("run").arg(pipeline).env("SLUICE_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run sluice")
}

/// Runs `sluice validate <pipeline>`: its exit code and what it wrote to stderr.
pub fn validate_pipeline(pipeline: &Path) -> (Option<i32>, String) {
    let o = Command::new(sluice_bin())
        .arg("validate")
        .arg(pipeline)
        .output()
        .expect("run sluice validate");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Starts `sluice run <pipeline>` in the background.
pub fn spawn_pipeline(pipeline: &Path, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(sluice_bin());
    c.arg("run")
        .arg(pipeline)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("spawn sluice")
}

/// Whether the process died from SIGKILL.
pub fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Data lines of the files listed in the file sink's manifest at `dir` (csv headers dropped).
pub fn committed_lines(dir: &Path, header: bool) -> Vec<String> {
    let files = sluice::connectors::sinks::file::committed_files(dir).expect("manifest");
    let mut out = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).expect("read output");
        for (i, l) in text.lines().enumerate() {
            if header && i == 0 {
                continue;
            }
            out.push(l.to_string());
        }
    }
    out
}

/// Data lines of the visible files in `dir` (what a plain reader sees).
pub fn visible_lines(dir: &Path, header: bool) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("ls out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let text = fs::read_to_string(dir.join(n)).expect("read");
        for (i, l) in text.lines().enumerate() {
            if header && i == 0 {
                continue;
            }
            out.push(l.to_string());
        }
    }
    out
}

/// Sorted copy.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A temp dir that is removed at the end of the test.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sluice-test-")
        .tempdir()
        .expect("tempdir")
}

/// Runs `sluice run <pipeline> ARGS...` to its end, with extra environment.
pub fn run_pipeline_args(pipeline: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(sluice_bin());
    c.arg("run")
        .arg(pipeline)
        .args(args)
        .env("SLUICE_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run sluice")
}

/// A seed for random crash points: SLUICE_TEST_SEED, or the clock (printed, to replay a run).
pub fn test_seed() -> u64 {
    let s = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("crash points from SLUICE_TEST_SEED={s}");
    s
}

/// `n` crash points `point@batch` at distinct, increasing batches of `0..batches`, each at a
/// point drawn from `points`.
pub fn random_crash_points(n: usize, batches: u64, points: &[&str]) -> Vec<String> {
    let mut x = test_seed() | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ids: Vec<u64> = (0..batches).collect();
    while ids.len() > n {
        let i = (next() % ids.len() as u64) as usize;
        ids.remove(i);
    }
    ids.into_iter()
        .map(|b| format!("{}@{b}", points[(next() % points.len() as u64) as usize]))
        .collect()
}

/// Runs the pipeline killed at each crash point in turn (each run must die by SIGKILL), then
/// once more to its end.
pub fn run_killed(p: &Path, args: &[&str], points: &[String]) {
    for at in points {
        let o = run_pipeline_args(p, args, &[("SLUICE_CRASH_AT", at)]);
        if std::env::var("SLUICE_TEST_LOG").is_ok() {
            eprintln!(
                "--- run killed at {at}:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(
            killed(&o),
            "expected SIGKILL at {at}, got {:?}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = run_pipeline_args(p, args, &[]);
    if std::env::var("SLUICE_TEST_LOG").is_ok() {
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(
        o.status.success(),
        "after kills at {points:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Regenerates a Spark golden set's input into `into` with the command its
/// `main/gen_command.txt` records (`python3 <script> ... --out DIR ...`), and checks every
/// generated file against the sha256 recorded there.
pub fn generate_golden_input(golden: &Path, script: &str, into: &Path) {
    generate_golden_set_input(golden, "main", script, into)
}

/// [`generate_golden_input`] for the golden set in `golden/<set>`.
pub fn generate_golden_set_input(golden: &Path, set: &str, script: &str, into: &Path) {
    let cmd =
        fs::read_to_string(golden.join(set).join("gen_command.txt")).expect("gen_command.txt");
    let line = cmd
        .lines()
        .find(|l| l.starts_with(&format!("python3 {script}")))
        .expect("command line");
    let mut args: Vec<String> = line
        .split_whitespace()
        .skip(2)
        .map(str::to_string)
        .collect();
    let i = args.iter().position(|a| a == "--out").expect("--out");
    args[i + 1] = into.to_string_lossy().into_owned();
    let st = Command::new("python3")
        .arg(script)
        .args(&args)
        .current_dir(golden)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("python3");
    assert!(st.success());
    for l in cmd
        .lines()
        .filter(|l| l.len() > 66 && l.as_bytes()[64] == b' ')
    {
        let (hash, name) = l.split_at(64);
        let out = Command::new("sha256sum")
            .arg(into.join(name.trim()))
            .output()
            .expect("sha256sum");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(hash),
            "{name} differs from the golden input"
        );
    }
}

/// The body of a GET to the daemon's HTTP endpoint ("" while it does not answer).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
