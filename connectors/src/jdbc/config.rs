//! The JDBC sink's options: URL forms, credentials, table name, column types. Pure parsing, no
//! I/O, unit-tested.

use std::collections::BTreeMap;

use sluice_engine::{EngineError, Options, OutputMode, Result};

/// The database family a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
}

impl Dialect {
    /// The product name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL/MariaDB",
        }
    }

    /// Quotes an identifier (`"a""b"` / `` `a``b` ``).
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::Postgres => format!("\"{}\"", ident.replace('"', "\"\"")),
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
        }
    }
}

/// Where to connect, without secrets in anything printable.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Database family.
    pub dialect: Dialect,
    /// Host name or address.
    pub host: String,
    /// Port (5432 / 3306 by default).
    pub port: u16,
    /// Database name.
    pub database: String,
    /// User, if any.
    pub user: Option<String>,
    /// Password, if any: never printed.
    pub password: Option<String>,
    /// Other URL parameters, passed to the driver (e.g. `sslmode`).
    pub params: Vec<(String, String)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Target {
    /// `postgresql://host:port/db`, with the user but never the password.
    pub fn display(&self) -> String {
        let scheme = match self.dialect {
            Dialect::Postgres => "postgresql",
            Dialect::MySql => "mysql",
        };
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!(
            "{scheme}://{user}{}:{}/{}",
            self.host, self.port, self.database
        )
    }
}

/// Parses `url` in any accepted form (`jdbc:postgresql://`, `postgres://`, `postgresql://`,
/// `jdbc:mysql://`, `mysql://`, `jdbc:mariadb://`, `mariadb://`); `user`/`password` options
/// override the URL's.
pub fn parse_target(url: &str, user: Option<&str>, password: Option<&str>) -> Result<Target> {
    let bare = url.strip_prefix("jdbc:").unwrap_or(url);
    let (scheme, rest) = bare.split_once("://").ok_or_else(|| {
        EngineError::user(format!(
            "option 'url' of the jdbc sink must look like jdbc:postgresql://host:port/db or \
             jdbc:mysql://host:port/db, got '{}'",
            redact_url(url)
        ))
    })?;
    let dialect = match scheme.to_ascii_lowercase().as_str() {
        "postgresql" | "postgres" => Dialect::Postgres,
        "mysql" | "mariadb" => Dialect::MySql,
        other => {
            return Err(EngineError::user(format!(
                "the jdbc sink supports PostgreSQL and MySQL/MariaDB URLs; '{other}' is neither"
            )))
        }
    };
    let parsed = url::Url::parse(&format!("db://{rest}")).map_err(|e| {
        EngineError::user(format!(
            "option 'url' of the jdbc sink is not a valid URL ({e}): '{}'",
            redact_url(url)
        ))
    })?;
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().unwrap_or(match dialect {
        Dialect::Postgres => 5432,
        Dialect::MySql => 3306,
    });
    let database = percent(parsed.path().trim_start_matches('/'));
    if database.is_empty() {
        return Err(EngineError::user(format!(
            "option 'url' of the jdbc sink names no database: '{}' (add /DBNAME)",
            redact_url(url)
        )));
    }
    let mut t = Target {
        dialect,
        host,
        port,
        database,
        user: (!parsed.username().is_empty()).then(|| percent(parsed.username())),
        password: parsed.password().map(percent),
        params: Vec::new(),
    };
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "user" => t.user = Some(v.into_owned()),
            "password" => t.password = Some(v.into_owned()),
            _ => t.params.push((k.into_owned(), v.into_owned())),
        }
    }
    if let Some(u) = user {
        t.user = Some(u.to_string());
    }
    if let Some(p) = password {
        t.password = Some(p.to_string());
    }
    Ok(t)
}

fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// `url` with any password (in the authority or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(start) = out.find("://") {
        let auth_start = start + 3;
        // the last '@' ends the credentials, even when the password holds '/' or '?'
        if let Some(at) = out[auth_start..].rfind('@') {
            let auth = &out[auth_start..auth_start + at];
            if let Some(colon) = auth.find(':') {
                out.replace_range(auth_start + colon + 1..auth_start + at, "***");
            }
        }
    }
    let lower = out.to_ascii_lowercase();
    if let Some(i) = lower.find("password=") {
        let from = i + "password=".len();
        let to = out[from..].find('&').map_or(out.len(), |j| from + j);
        out.replace_range(from..to, "***");
    }
    out
}

/// A table name, optionally schema-qualified (`schema.table`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// Schema (PostgreSQL) or database (MySQL), if given.
    pub schema: Option<String>,
    /// Table.
    pub name: String,
}

impl TableName {
    /// Parses `dbtable` (`t`, `s.t`, with optional quotes around each part).
    pub fn parse(text: &str) -> Result<Self> {
        let unquote = |s: &str| {
            let s = s.trim();
            let q = s.len() >= 2
                && ((s.starts_with('"') && s.ends_with('"'))
                    || (s.starts_with('`') && s.ends_with('`')));
            if q {
                s[1..s.len() - 1].to_string()
            } else {
                s.to_string()
            }
        };
        let parts: Vec<&str> = text.split('.').collect();
        let (schema, name) = match parts.as_slice() {
            [t] => (None, unquote(t)),
            [s, t] => (Some(unquote(s)), unquote(t)),
            _ => {
                return Err(EngineError::user(format!(
                    "option 'dbtable' must be TABLE or SCHEMA.TABLE, got '{text}'"
                )))
            }
        };
        if name.is_empty() || schema.as_deref() == Some("") {
            return Err(EngineError::user(format!(
                "option 'dbtable' must be TABLE or SCHEMA.TABLE, got '{text}'"
            )));
        }
        Ok(Self { schema, name })
    }

    /// The quoted, qualified name for SQL.
    pub fn sql(&self, d: Dialect) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", d.quote(s), d.quote(&self.name)),
            None => d.quote(&self.name),
        }
    }

    /// As written by the user, for messages.
    pub fn display(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Parses `createTableColumnTypes` (`"name VARCHAR(64), comments VARCHAR(1024)"`): column → type.
pub fn parse_column_types(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let mut items = Vec::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    items.push(cur);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (name, ty) = item.split_once(char::is_whitespace).ok_or_else(|| {
            EngineError::user(format!(
                "option 'createTableColumnTypes' must list 'COLUMN TYPE' pairs, got '{item}'"
            ))
        })?;
        out.insert(
            name.trim_matches(['"', '`']).to_string(),
            ty.trim().to_string(),
        );
    }
    Ok(out)
}

/// `SET TRANSACTION ISOLATION LEVEL ...` text for Spark's `isolationLevel` names.
pub fn isolation_sql(level: &str) -> Result<&'static str> {
    match level.to_ascii_uppercase().replace(' ', "_").as_str() {
        "READ_UNCOMMITTED" => Ok("READ UNCOMMITTED"),
        "READ_COMMITTED" => Ok("READ COMMITTED"),
        "REPEATABLE_READ" => Ok("REPEATABLE READ"),
        "SERIALIZABLE" => Ok("SERIALIZABLE"),
        "NONE" => Err(EngineError::user(
            "isolationLevel NONE is not supported by the jdbc sink: exactly-once needs each batch in one transaction",
        )),
        _ => Err(EngineError::user(format!(
            "option 'isolationLevel' must be READ_UNCOMMITTED, READ_COMMITTED, REPEATABLE_READ or SERIALIZABLE, got '{level}'"
        ))),
    }
}

/// Every option the sink takes.
pub const KNOWN: &[&str] = &[
    "url",
    "user",
    "password",
    "dbtable",
    "batchsize",
    "isolationLevel",
    "createTableOptions",
    "createTableColumnTypes",
    "truncate",
    "keys",
    "stringKeyLength",
    "markerTable",
    "driver",
    "connectTimeout",
];

/// The sink's settings after validation.
#[derive(Debug, Clone)]
pub struct JdbcConfig {
    /// Where to connect.
    pub target: Target,
    /// The output table.
    pub table: TableName,
    /// Rows per INSERT statement / COPY chunk.
    pub batch_size: usize,
    /// `SET TRANSACTION ISOLATION LEVEL` text.
    pub isolation: Option<&'static str>,
    /// Appended to `CREATE TABLE (...)`.
    pub create_table_options: String,
    /// Column type overrides for `CREATE TABLE`.
    pub column_types: BTreeMap<String, String>,
    /// Complete mode empties the table with TRUNCATE (PostgreSQL) instead of DELETE.
    pub truncate: bool,
    /// Upsert keys given by the user.
    pub keys: Option<Vec<String>>,
    /// VARCHAR length of string key columns on MySQL/MariaDB.
    pub string_key_length: u64,
    /// The table recording each query's last committed batch.
    pub marker_table: TableName,
    /// The output mode.
    pub mode: OutputMode,
    /// How long to wait for a connection before the batch fails (and is retried).
    pub connect_timeout: std::time::Duration,
}

impl JdbcConfig {
    /// Validates the options.
    pub fn from_options(o: &Options, mode: OutputMode) -> Result<Self> {
        o.check_known("the jdbc sink", KNOWN, &[])?;
        let url = o.get("url").ok_or_else(|| {
            EngineError::user(
                "the jdbc sink needs option 'url' (e.g. jdbc:postgresql://host:5432/db)",
            )
        })?;
        let target = parse_target(url, o.get("user"), o.get("password"))?;
        // Spark's `driver` names a JDBC class; here the URL picks the client, so the option
        // must agree with it
        if let Some(d) = o.get("driver") {
            let fits = match target.dialect {
                Dialect::Postgres => d == "org.postgresql.Driver",
                Dialect::MySql => matches!(
                    d,
                    "com.mysql.cj.jdbc.Driver"
                        | "com.mysql.jdbc.Driver"
                        | "org.mariadb.jdbc.Driver"
                ),
            };
            if !fits {
                return Err(EngineError::user(format!(
                    "option 'driver' = '{d}' does not fit the url (a {} database): Sluice \
                     picks its client from the url; leave 'driver' out",
                    target.dialect.name()
                )));
            }
        }
        let table = TableName::parse(o.get("dbtable").ok_or_else(|| {
            EngineError::user("the jdbc sink needs option 'dbtable' (the output table)")
        })?)?;
        let batch_size = o.get_u64("batchsize")?.unwrap_or(1000).max(1) as usize;
        let isolation = o.get("isolationLevel").map(isolation_sql).transpose()?;
        let keys = o.get("keys").map(|k| {
            k.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        });
        Ok(Self {
            target,
            table,
            batch_size,
            isolation,
            create_table_options: o.get("createTableOptions").unwrap_or_default().to_string(),
            column_types: parse_column_types(o.get("createTableColumnTypes").unwrap_or_default())?,
            truncate: o.get_bool("truncate", false)?,
            keys,
            string_key_length: o.get_u64("stringKeyLength")?.unwrap_or(255),
            marker_table: TableName::parse(o.get("markerTable").unwrap_or("_sluice_batches"))?,
            mode,
            connect_timeout: o
                .get_duration("connectTimeout")?
                .unwrap_or(std::time::Duration::from_secs(10)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let t = parse_target(
            "jdbc:postgresql://127.0.0.1:5432/db?user=postgres",
            None,
            None,
        )
        .expect("ok");
        assert_eq!(t.dialect, Dialect::Postgres);
        assert_eq!(
            (t.host.as_str(), t.port, t.database.as_str()),
            ("127.0.0.1", 5432, "db")
        );
        assert_eq!(t.user.as_deref(), Some("postgres"));
        assert_eq!(t.password, None);

        let t = parse_target("postgres://u:p%40ss@h/d?sslmode=disable", None, None).expect("ok");
        assert_eq!((t.port, t.password.as_deref()), (5432, Some("p@ss")));
        assert_eq!(t.params, vec![("sslmode".into(), "disable".into())]);

        let t = parse_target("jdbc:mariadb://h:3307/shop", Some("me"), Some("s3cret")).expect("ok");
        assert_eq!(t.dialect, Dialect::MySql);
        assert_eq!((t.port, t.user.as_deref()), (3307, Some("me")));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(t.display(), "mysql://me@h:3307/shop");

        assert_eq!(
            parse_target("mysql://h/x", None, None).expect("ok").port,
            3306
        );
        assert!(parse_target("jdbc:oracle://h/x", None, None).is_err());
        assert!(parse_target("postgres://h:5432", None, None).is_err());
        assert!(parse_target("h:5432/db", None, None).is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://u:secret@h:1/d?password=zz&x=1"),
            "postgres://u:***@h:1/d?password=***&x=1"
        );
        assert_eq!(redact_url("mysql://h/d"), "mysql://h/d");
        assert_eq!(redact_url("postgres://u:pa/ss@h/d"), "postgres://u:***@h/d");
        let e = parse_target("jdbc:postgresql://u:secret@h:1", None, None).expect_err("error");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn table_names_and_types() {
        assert_eq!(
            TableName::parse("public.counts")
                .expect("ok")
                .sql(Dialect::Postgres),
            "\"public\".\"counts\""
        );
        assert_eq!(
            TableName::parse("a`b").expect("ok").sql(Dialect::MySql),
            "`a``b`"
        );
        assert!(TableName::parse("a.b.c").is_err());
        let m = parse_column_types("name VARCHAR(64), price DECIMAL(10, 2)").expect("ok");
        assert_eq!(m["name"], "VARCHAR(64)");
        assert_eq!(m["price"], "DECIMAL(10, 2)");
        assert!(parse_column_types("oops").is_err());
        assert_eq!(
            isolation_sql("read_committed").expect("ok"),
            "READ COMMITTED"
        );
        assert!(isolation_sql("NONE").is_err());
    }
}
