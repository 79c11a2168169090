//! The windowed-aggregation query of `window_throughput` reading its files from an S3 server
//! against reading them from local disk, in the same run: (1) everything local; (2) the input
//! in a bucket; (3) input, Parquet sink and checkpoint in the bucket (every batch's offsets and
//! commit entries, source log and state changelogs uploaded, snapshots too).
//!
//! `cargo bench --bench object_storage -- [--input DIR] [--files N] [--runs N]`
//!
//! The S3 server is moto's (tests/servers/moto_server.py, run with `$SLUICE_BENCH_PYTHON`,
//! default `~/.cache/sluice-venv/bin/python`, where scripts/test installs moto[server]): a
//! single-threaded Python server, so the ratio is an upper bound of what a real object store
//! costs and says mostly how fast that server is. The input is the 10M-event set of the windowed
//! benches (`--files N` takes its first N files). Configurations alternate; the ratios use the
//! medians.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::engine::connector::storage::{Location, StorageOptions};
use sluice::prelude::*;

mod common;
use common::{arg, err, median};

const KEY: &str = "bench-access-key";
const SECRET: &str = "bench-secret-key";

struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> sluice::Result<Server> {
    let python = std::env::var("SLUICE_BENCH_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sluice-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(err)?
        .port();
    let child = Command::new(&python)
        .arg(common::repo().join("tests/servers/moto_server.py"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            err(format!(
                "{python} (scripts/test installs moto[server] there): {e}"
            ))
        })?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(err("the S3 server did not start"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    })
}

fn options(endpoint: &str) -> StorageOptions {
    let mut o = StorageOptions::new();
    o.insert("fs.s3a.endpoint".into(), endpoint.into());
    o.insert("fs.s3a.access.key".into(), KEY.into());
    o.insert("fs.s3a.secret.key".into(), SECRET.into());
    o
}

fn create_bucket(endpoint: &str, name: &str) -> sluice::Result<()> {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).map_err(err)?;
    write!(
        s,
        "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(err)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(err)?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(err(format!("create bucket {name}: {out}")));
    }
    Ok(())
}

/// One run of the query: events read and seconds.
fn run(input: &str, out: &str, checkpoint: &str, endpoint: &str) -> sluice::Result<(u64, f64)> {
    let mut b = Session::builder().app_name("object-storage-bench");
    for (k, v) in options(endpoint) {
        b = b.config(format!("spark.hadoop.{k}"), v);
    }
    let session = b.build()?;
    let t0 = Instant::now();
    let query = common::start_window_query(&session, input, "10", out, checkpoint)?;
    query.await_termination()?;
    let events = query
        .recent_progress()
        .iter()
        .map(|p| p.num_input_rows)
        .sum();
    Ok((events, t0.elapsed().as_secs_f64()))
}

fn main() -> sluice::Result<()> {
    let source = common::window_input()?;
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut files: Vec<_> = std::fs::read_dir(&source)
        .map_err(err)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    if let Some(n) = arg("--files").and_then(|v| v.parse::<usize>().ok()) {
        files.truncate(n);
    }
    // the same files on both sides
    let local = tempfile::tempdir().map_err(err)?;
    let local_in = local.path().join("in");
    std::fs::create_dir_all(&local_in).map_err(err)?;
    let mut bytes = 0u64;
    for f in &files {
        let name = f.file_name().ok_or_else(|| err("file name"))?;
        std::fs::copy(f, local_in.join(name)).map_err(err)?;
        bytes += std::fs::metadata(f).map_err(err)?.len();
    }
    let server = start_server()?;
    create_bucket(&server.endpoint, "bench")?;
    let bucket = Location::parse("s3://bench/in", &options(&server.endpoint))?;
    let t = Instant::now();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| err("file name"))?;
        bucket.put(&name, std::fs::read(f).map_err(err)?.into())?;
    }
    let upload_s = t.elapsed().as_secs_f64();
    eprintln!(
        "{} files, {:.0} MiB; uploaded to the S3 server at {:.0} MiB/s",
        files.len(),
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / upload_s
    );
    let (mut t_local, mut t_input, mut t_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut events = 0;
    for i in 0..runs {
        let work = tempfile::tempdir().map_err(err)?;
        let w = |p: &str| work.path().join(p).to_string_lossy().into_owned();
        let (n, s) = run(
            &local_in.to_string_lossy(),
            &w("out"),
            &w("chk"),
            &server.endpoint,
        )?;
        events = n;
        t_local.push(s);
        let (n2, s2) = run("s3://bench/in", &w("out2"), &w("chk2"), &server.endpoint)?;
        t_input.push(s2);
        let (n3, s3) = run(
            "s3://bench/in",
            &format!("s3://bench/run{i}/out"),
            &format!("s3://bench/run{i}/chk"),
            &server.endpoint,
        )?;
        t_all.push(s3);
        if n2 != n || n3 != n {
            return Err(err(format!(
                "events differ: local {n}, s3 input {n2}, all s3 {n3}"
            )));
        }
        eprintln!("run {i}: local {s:.2} s, input in S3 {s2:.2} s, all in S3 {s3:.2} s");
    }
    let (l, inp, all) = (median(t_local), median(t_input), median(t_all));
    println!(
        "object_storage: {events} events; local {l:.2} s ({:.2} M events/s); input in S3 {inp:.2} s \
         (ratio {:.2}); input, sink and checkpoint in S3 {all:.2} s (ratio {:.2})",
        events as f64 / l / 1e6,
        inp / l,
        all / l
    );
    Ok(())
}
