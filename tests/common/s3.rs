//! Object storage for the tests: a real S3/SQS/Kinesis-protocol server process per test
//! (moto in server mode, from PyPI; `scripts/test` installs it into `~/.cache/sluice-venv`;
//! started by `tests/servers/moto_server.py`, which corrects moto's Kinesis shard split), on
//! its own port, with its access log kept to count the requests it served. Setting up queues,
//! notifications and streams, and writing to them, goes through boto3 (moto's dependency).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::engine::connector::storage::{Location, StorageOptions};

/// The secret key the tests give Sluice: no log line, progress entry, status answer or
/// error message may contain it.
pub const SECRET: &str = "sluiceTestSecret-5f3c9d2e-DO-NOT-PRINT";
/// The access key id (printed by nobody either).
pub const ACCESS_KEY: &str = "AKIASLUICETESTKEY42";

/// A moto server on 127.0.0.1.
pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

/// The server's launcher (moto's server, with the split corrected).
fn moto_script() -> PathBuf {
    super::repo_dir().join("tests/servers/moto_server.py")
}

impl S3Server {
    /// Starts a server with an empty store.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sluice-s3-")
            .tempdir()
            .expect("tempdir");
        let port = super::db::free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = Command::new(super::delta::python())
            .arg(moto_script())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (scripts/test installs moto[server]): {e}",
                    moto_script().display()
                )
            });
        let s = Self { dir, port, child };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the S3 server did not start: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a Sluice process gets to reach the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }

    /// What the server logged: one line per request (`"GET /bucket?list-type=2 ..." 200`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Request lines of the log that contain `what` (e.g. `"GET /bkt?list-type=2`).
    pub fn requests(&self, what: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(what)).count()
    }

    /// Sends a raw HTTP request (moto takes unsigned ones) and returns the status and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.http("PUT", &format!("/{name}"), &[], "");
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// The location `url` names, as the tests reach it.
    pub fn location(&self, url: &str) -> Location {
        let mut o = StorageOptions::new();
        o.insert("fs.s3a.endpoint".into(), self.endpoint());
        o.insert("fs.s3a.access.key".into(), ACCESS_KEY.into());
        o.insert("fs.s3a.secret.key".into(), SECRET.into());
        Location::parse(url, &o).expect("location")
    }

    /// Uploads every file of `dir` (names sorted) below `url`.
    pub fn upload_dir(&self, dir: &Path, url: &str) -> usize {
        let loc = self.location(url);
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in &names {
            let bytes = std::fs::read(dir.join(n)).expect("read");
            loc.put(n, bytes.into()).expect("put");
        }
        names.len()
    }

    /// Every object below `url`: (path below it, bytes), sorted by path.
    pub fn objects(&self, url: &str) -> Vec<(String, Vec<u8>)> {
        let loc = self.location(url);
        let mut out: Vec<(String, Vec<u8>)> = loc
            .list_below(None)
            .expect("list")
            .into_iter()
            .filter_map(|m| {
                let rel = loc.rel_of(&m.location)?;
                let bytes = loc.get_key(&m.location).expect("get")?;
                Some((rel, bytes.to_vec()))
            })
            .collect();
        out.sort();
        out
    }

    /// The names below `url`.
    pub fn names(&self, url: &str) -> Vec<String> {
        self.objects(url).into_iter().map(|(n, _)| n).collect()
    }

    /// The committed rows of the file sink at `url` (its manifest's files), header lines
    /// dropped when `header`.
    pub fn committed_lines(&self, url: &str, header: bool) -> Vec<String> {
        let objects = self.objects(url);
        let mut lines = Vec::new();
        for (name, bytes) in &objects {
            let Some(_) = name.strip_prefix("_sluice_metadata/") else {
                continue;
            };
            let text = String::from_utf8_lossy(bytes);
            let json = text.split_once('\n').map(|(_, j)| j).unwrap_or_default();
            let entry: serde_json::Value = serde_json::from_str(json).expect("manifest entry");
            for f in entry["files"].as_array().expect("files") {
                let f = f.as_str().expect("file");
                let (_, data) = objects
                    .iter()
                    .find(|(n, _)| n == f)
                    .unwrap_or_else(|| panic!("{f} is in the manifest but not in the bucket"));
                let text = String::from_utf8_lossy(data);
                lines.extend(text.lines().skip(usize::from(header)).map(str::to_string));
            }
        }
        lines
    }

    /// Runs Python `code` with `s3`, `sqs` and `kinesis` boto3 clients of this server bound,
    /// and `args` as `sys.argv[1:]`; returns what it printed.
    pub fn boto(&self, code: &str, args: &[&str]) -> String {
        let script = format!(
            "import sys, json, time, boto3\n\
             kw = dict(endpoint_url={ep:?}, region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test')\n\
             s3 = boto3.client('s3', **kw)\n\
             sqs = boto3.client('sqs', **kw)\n\
             kinesis = boto3.client('kinesis', **kw)\n{code}\n",
            ep = self.endpoint()
        );
        let o = Command::new(super::delta::python())
            .arg("-c")
            .arg(&script)
            .args(args)
            .output()
            .expect("python boto3");
        assert!(
            o.status.success(),
            "boto3 script failed: {}\n{script}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Python `deltalake`'s rows of the Delta table at `url` (the independent reader), each a
    /// JSON array of its values in column order.
    pub fn delta_rows(&self, url: &str) -> Vec<serde_json::Value> {
        let script = r#"
import json, os, sys
from deltalake import DeltaTable
opts = {"AWS_ENDPOINT_URL": sys.argv[2], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": sys.argv[3], "AWS_SECRET_ACCESS_KEY": sys.argv[4]}
t = DeltaTable(sys.argv[1], storage_options=opts).to_pyarrow_table()
for r in t.to_pylist():
    print(json.dumps([(v.isoformat() if hasattr(v, "isoformat") else v) for v in r.values()]))
sys.stdout.flush()
os._exit(0)
"#;
        let o = Command::new(super::delta::python())
            .args(["-c", script, url, &self.endpoint(), ACCESS_KEY, SECRET])
            .output()
            .expect("python deltalake");
        assert!(
            o.status.success(),
            "python deltalake reading {url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("row"))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
