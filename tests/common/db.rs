//! Databases for the JDBC tests: a fresh database per test on the PostgreSQL and MariaDB servers
//! that `scripts/services` starts, read back with the real command-line clients (psql, mariadb).
//! A private PostgreSQL cluster (own port, own data directory) for tests that stop the server.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

/// A unique database name for this test process.
pub fn unique_db(tag: &str) -> String {
    format!(
        "sl_{tag}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// (host, port, user, password) of a server URL from the environment, or the default.
fn server(var: &str, default: &str) -> (String, u16, String, String) {
    let u = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
    let (auth, hostpart) = rest.split_once('@').unwrap_or(("", rest));
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let hostport = hostpart.split('/').next().unwrap_or("127.0.0.1");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, ""));
    (
        host.to_string(),
        port.parse().unwrap_or(0),
        user.to_string(),
        pass.to_string(),
    )
}

/// The PostgreSQL server of the tests.
#[derive(Debug, Clone)]
pub struct Pg {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl Pg {
    /// The shared server (SLUICE_TEST_PG_URL, default postgres://sluice:sluice@127.0.0.1:5432).
    pub fn shared() -> Self {
        let (host, port, user, password) = server(
            "SLUICE_TEST_PG_URL",
            "postgres://sluice:sluice@127.0.0.1:5432/postgres",
        );
        Self {
            host,
            port: if port == 0 { 5432 } else { port },
            user,
            password,
        }
    }

    /// Runs `sql` in `db`; rows as `a|b|c` lines (timestamps in UTC). Panics with psql's message.
    pub fn query(&self, db: &str, sql: &str) -> Vec<String> {
        let o = self.try_query(db, sql);
        match o {
            Ok(v) => v,
            Err(e) => {
                panic!("psql failed on {sql}: {e} (is PostgreSQL started? run scripts/services)")
            }
        }
    }

    /// Like [`Pg::query`], returning psql's error text.
    pub fn try_query(&self, db: &str, sql: &str) -> Result<Vec<String>, String> {
        let o = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                db,
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", &self.password)
            .env("PGTZ", "UTC")
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// A new empty database.
    pub fn new_db(&self, tag: &str) -> String {
        let db = unique_db(tag);
        self.query("postgres", &format!("DROP DATABASE IF EXISTS {db}"));
        self.query("postgres", &format!("CREATE DATABASE {db}"));
        db
    }

    /// The JDBC URL of `db`, credentials in the query string.
    pub fn jdbc_url(&self, db: &str) -> String {
        format!(
            "jdbc:postgresql://{}:{}/{db}?user={}&password={}",
            self.host, self.port, self.user, self.password
        )
    }
}

/// The MariaDB server of the tests (SLUICE_TEST_MYSQL_URL, default mysql://sluice:sluice@127.0.0.1:3306).
#[derive(Debug, Clone)]
pub struct Maria {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl Maria {
    /// The shared server.
    pub fn shared() -> Self {
        let (host, port, user, password) = server(
            "SLUICE_TEST_MYSQL_URL",
            "mysql://sluice:sluice@127.0.0.1:3306/mysql",
        );
        Self {
            host,
            port: if port == 0 { 3306 } else { port },
            user,
            password,
        }
    }

    /// Runs `sql` in `db`; rows as `a|b|c` lines.
    pub fn query(&self, db: &str, sql: &str) -> Vec<String> {
        match self.try_query(db, sql) {
            Ok(v) => v,
            Err(e) => {
                panic!("mariadb failed on {sql}: {e} (is MariaDB started? run scripts/services)")
            }
        }
    }

    /// Like [`Maria::query`], returning the client's error text.
    pub fn try_query(&self, db: &str, sql: &str) -> Result<Vec<String>, String> {
        let o = Command::new("mariadb")
            .args([
                "-h",
                &self.host,
                "-P",
                &self.port.to_string(),
                "-u",
                &self.user,
            ])
            .arg(format!("-p{}", self.password))
            .args(["-N", "-B", "--connect-timeout=5", "-D", db, "-e", sql])
            .output()
            .map_err(|e| format!("cannot run mariadb: {e}"))?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.replace('\t', "|"))
            .collect())
    }

    /// A new empty database.
    pub fn new_db(&self, tag: &str) -> String {
        let db = unique_db(tag);
        self.query("mysql", &format!("DROP DATABASE IF EXISTS {db}"));
        self.query("mysql", &format!("CREATE DATABASE {db}"));
        db
    }

    /// The JDBC URL of `db`.
    pub fn jdbc_url(&self, db: &str) -> String {
        format!(
            "jdbc:mariadb://{}:{}/{db}?user={}&password={}",
            self.host, self.port, self.user, self.password
        )
    }
}

/// A PostgreSQL cluster of its own (initdb in a temp dir, own port), for tests that stop and
/// start the server. Stopped when dropped.
pub struct PrivatePg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

fn as_postgres(cmd: &Path) -> Command {
    // initdb and postgres refuse to run as root.
    if unsafe_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl PrivatePg {
    /// initdb + start, trust authentication on loopback, user `sluice`.
    pub fn start() -> Self {
        let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("tempdir");
        if unsafe_is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success());
        }
        let data = dir.path().join("data");
        let o = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "sluice", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            o.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let port = free_port();
        let pg = Self { dir, port, bin };
        pg.start_server();
        pg
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_server(&self) {
        let data = self.dir.path().join("data");
        let o = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(&data)
            .args(["-l"])
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .output()
            .expect("pg_ctl start");
        assert!(
            o.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop_server(&self) {
        let o = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .expect("pg_ctl stop");
        assert!(
            o.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A client for it.
    pub fn client(&self) -> Pg {
        Pg {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "sluice".into(),
            password: String::new(),
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
