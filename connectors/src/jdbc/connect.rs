//! Connecting to PostgreSQL and MariaDB/MySQL, and their errors classified by cause (who must
//! act: a transient failure is retried, a refused statement is the user's).

use super::*;

/// Marks SQL built here as audited: identifiers are quoted with [`Dialect::quote`], values are
/// always bound, never spliced.
pub(super) fn safe(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

pub(super) fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How to connect, per dialect.
pub(super) enum ConnectOptions {
    Pg(PgConnectOptions),
    My(MySqlConnectOptions),
}

pub(super) fn open_pool(cfg: &JdbcConfig) -> Result<Db> {
    let acquire = cfg.connect_timeout;
    Ok(match connect_options(cfg)? {
        ConnectOptions::Pg(o) => Db::Pg(
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(acquire)
                .connect_lazy_with(o),
        ),
        ConnectOptions::My(o) => Db::My(
            MySqlPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(acquire)
                .connect_lazy_with(o),
        ),
    })
}

pub(super) fn connect_options(cfg: &JdbcConfig) -> Result<ConnectOptions> {
    let t = &cfg.target;
    match t.dialect {
        Dialect::Postgres => {
            let mut o = PgConnectOptions::new()
                .host(&t.host)
                .port(t.port)
                .database(&t.database)
                // UTC timestamps; notices (e.g. "... already exists, skipping") are not errors
                .options([("TimeZone", "UTC"), ("client_min_messages", "warning")]);
            if let Some(u) = &t.user {
                o = o.username(u);
            }
            if let Some(p) = &t.password {
                o = o.password(p);
            }
            for (k, v) in &t.params {
                match k.to_ascii_lowercase().as_str() {
                    "sslmode" => {
                        o = o.ssl_mode(v.parse::<PgSslMode>().map_err(|_| {
                            EngineError::user(format!("jdbc url: unknown sslmode '{v}'"))
                        })?)
                    }
                    "applicationname" | "application_name" => o = o.application_name(v),
                    "currentschema" => o = o.options([("search_path", v.as_str())]),
                    _ => tracing::warn!("jdbc url: parameter '{k}' is not used by Sluice"),
                }
            }
            Ok(ConnectOptions::Pg(o))
        }
        Dialect::MySql => {
            let mut o = MySqlConnectOptions::new()
                .host(&t.host)
                .port(t.port)
                .database(&t.database)
                .timezone(Some("+00:00".to_string()));
            if let Some(u) = &t.user {
                o = o.username(u);
            }
            if let Some(p) = &t.password {
                o = o.password(p);
            }
            for (k, _) in &t.params {
                tracing::warn!("jdbc url: parameter '{k}' is not used by Sluice");
            }
            Ok(ConnectOptions::My(o))
        }
    }
}

/// Whether a database error is worth retrying (the connection or the server, a deadlock, a
/// serialization failure) or needs the user (constraint, permission, SQL). Pure; unit-tested.
pub fn is_transient(d: Dialect, e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => true,
        E::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match d {
                Dialect::Postgres => {
                    ["08", "57P", "53", "40", "58"]
                        .iter()
                        .any(|p| code.starts_with(p))
                        || code == "55P03"
                        || code == "57014"
                }
                Dialect::MySql => {
                    let n = db
                        .try_downcast_ref::<MySqlDatabaseError>()
                        .map(|m| m.number());
                    matches!(
                        n,
                        Some(
                            1040 | 1053
                                | 1205
                                | 1213
                                | 1317
                                | 1927
                                | 2002
                                | 2003
                                | 2006
                                | 2013
                                | 4031
                        )
                    ) || code.starts_with("08")
                        || code == "40001"
                }
            }
        }
        _ => false,
    }
}

/// A database error as the user needs it: the server's message, its SQLSTATE (or MySQL error
/// number), and PostgreSQL's detail and hint — not sqlx's wrapping nor the server's own source
/// file and line. Other errors (I/O, pool, TLS) as sqlx says them.
pub fn describe(e: &sqlx::Error) -> String {
    use sqlx::postgres::PgDatabaseError;
    let sqlx::Error::Database(db) = e else {
        return e.to_string();
    };
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        let mut m = format!("{} (SQLSTATE {})", pg.message(), pg.code());
        if let Some(d) = pg.detail() {
            m.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = pg.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        // COPY names the line (= the row of the batch, from 1) and the column
        if let Some(w) = pg.r#where() {
            m.push_str(&format!("; where: {w}"));
        }
        return m;
    }
    if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
        return format!("{} (error {})", my.message(), my.number());
    }
    db.message().to_string()
}

pub(super) fn classify(d: Dialect, what: &str, e: sqlx::Error) -> EngineError {
    let msg = format!("{} failed {what}: {}", d.name(), describe(&e));
    if is_transient(d, &e) {
        EngineError::external(msg)
    } else {
        EngineError::user(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_transient_sql_errors_are_not() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "x",
        ));
        assert!(is_transient(Dialect::Postgres, &io));
        assert!(is_transient(Dialect::MySql, &sqlx::Error::PoolTimedOut));
        assert!(!is_transient(Dialect::Postgres, &sqlx::Error::RowNotFound));
    }
}
