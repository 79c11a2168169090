//! The JDBC sink's tables: the marker table and the output table are created when missing, and
//! an existing output table is checked against the stream (every column with a type that can
//! hold it; in update mode a PRIMARY KEY or UNIQUE key on exactly the upsert keys, without which
//! PostgreSQL refuses `ON CONFLICT` and MariaDB's `ON DUPLICATE KEY` would add rows).
//! [`JdbcSink::check_existing`] runs the same checks without creating anything, for
//! `sluice validate`.

use sluice_engine::{EngineError, OutputMode, Result};

use super::config::Dialect;

/// The generated column MySQL/MariaDB tables made by Sluice upsert on (see `create_table_sql`).
pub(super) const MYSQL_KEY_COLUMN: &str = "_sluice_key";
use super::{safe, types, Db, JdbcSink};

/// What the database says about the output table: its columns (name, type) and its PRIMARY
/// KEY / UNIQUE constraints (constraint name, column), empty when the table does not exist.
pub(super) struct TableInfo {
    pub(super) columns: Vec<(String, String)>,
    uniques: Vec<(String, String)>,
    /// MySQL/MariaDB: the generation expression of `_sluice_key`, if the table has that column.
    generated_key: Option<String>,
}

impl JdbcSink {
    /// A database error of `what`, classified (transient: external; else the user's).
    pub(super) fn err(&self, what: &str, e: sqlx::Error) -> EngineError {
        super::classify(
            self.cfg.target.dialect,
            &format!("{what} ({})", sluice_engine::Sink::description(self)),
            e,
        )
    }

    /// The output table. Upsert keys may be NULL, as Spark's group keys may: on PostgreSQL
    /// 15+ they are one UNIQUE NULLS NOT DISTINCT constraint (older servers: a PRIMARY KEY,
    /// which refuses NULL keys); on MySQL/MariaDB, whose unique keys never treat NULLs as
    /// equal, a generated column `_sluice_key` (a SHA-256 of the keys, NULL told apart from
    /// every value) carries the UNIQUE key `ON DUPLICATE KEY UPDATE` upserts on.
    fn create_table_sql(&self, pg_version: u32) -> Result<String> {
        let d = self.cfg.target.dialect;
        let keyed = !self.keys.is_empty() && self.cfg.mode != OutputMode::Append;
        let nulls_not_distinct = d == Dialect::Postgres && pg_version >= 150_000;
        let mut cols = Vec::new();
        for f in self.schema.fields() {
            let ty = match self.cfg.column_types.get(f.name()) {
                Some(t) => t.clone(),
                None => types::sql_type(
                    d,
                    f.data_type(),
                    self.keys.contains(f.name()),
                    self.cfg.string_key_length,
                )?,
            };
            let not_null = if keyed
                && self.keys.contains(f.name())
                && d == Dialect::Postgres
                && !nulls_not_distinct
            {
                " NOT NULL"
            } else {
                ""
            };
            cols.push(format!("{} {ty}{not_null}", self.q(f.name())));
        }
        let key_list = self
            .keys
            .iter()
            .map(|k| self.q(k))
            .collect::<Vec<_>>()
            .join(", ");
        if keyed {
            match d {
                Dialect::Postgres if nulls_not_distinct => {
                    cols.push(format!("UNIQUE NULLS NOT DISTINCT ({key_list})"))
                }
                Dialect::Postgres => cols.push(format!("PRIMARY KEY ({key_list})")),
                Dialect::MySql => {
                    let parts = self
                        .keys
                        .iter()
                        .map(|k| {
                            // length-prefixed, so that no two key tuples give the same text
                            let v = format!("CAST({} AS CHAR)", self.q(k));
                            format!("IFNULL(CONCAT(CHAR_LENGTH({v}), ':', {v}), 'n')")
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    cols.push(format!(
                        "{} BINARY(32) AS (UNHEX(SHA2(CONCAT_WS(',', {parts}), 256))) STORED",
                        self.q(MYSQL_KEY_COLUMN)
                    ));
                    cols.push(format!("UNIQUE KEY ({})", self.q(MYSQL_KEY_COLUMN)));
                }
            }
        }
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}) {}",
            self.table_sql(),
            cols.join(", "),
            self.cfg.create_table_options
        ))
    }

    fn marker_sql(&self) -> String {
        let ts = match self.cfg.target.dialect {
            Dialect::Postgres => "TIMESTAMPTZ NOT NULL DEFAULT now()",
            Dialect::MySql => "DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} (query_id VARCHAR(64) NOT NULL, table_name VARCHAR(255) NOT NULL, \
             batch_id BIGINT NOT NULL, committed_at {ts}, PRIMARY KEY (query_id, table_name))",
            self.cfg.marker_table.sql(self.cfg.target.dialect)
        )
    }

    /// Runs one statement (DDL or a seed row) with optional text binds.
    pub(super) fn execute(&self, what: &str, sql: String, binds: &[&str]) -> Result<()> {
        match &self.db {
            Db::Pg(pool) => self.rt.block_on(async {
                let mut q = sqlx::query(safe(sql));
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(pool).await.map(|_| ())
            }),
            Db::My(pool) => self.rt.block_on(async {
                let mut q = sqlx::query(safe(sql));
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(pool).await.map(|_| ())
            }),
        }
        .map_err(|e| self.err(what, e))
    }

    /// The columns and keys of table `schema.name` (empty when it does not exist).
    pub(super) fn table_info(&self, schema: &Option<String>, name: &str) -> Result<TableInfo> {
        const PG_COLUMNS: &str = "SELECT column_name::text, data_type::text \
            FROM information_schema.columns \
            WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2 \
            ORDER BY ordinal_position";
        // unique indexes as ON CONFLICT can use them: PRIMARY KEY, UNIQUE constraints and
        // CREATE UNIQUE INDEX alike, but not partial, expression or deferrable ones
        const PG_UNIQUES: &str = "SELECT i.indexrelid::regclass::text, a.attname::text \
            FROM pg_index i \
            JOIN pg_class c ON c.oid = i.indrelid \
            JOIN pg_namespace n ON n.oid = c.relnamespace \
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
            WHERE i.indisunique AND i.indimmediate AND i.indpred IS NULL \
            AND i.indexprs IS NULL \
            AND n.nspname = COALESCE($1, current_schema()) AND c.relname = $2";
        const MY_COLUMNS: &str = "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) \
            FROM information_schema.COLUMNS \
            WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
            ORDER BY ORDINAL_POSITION";
        const MY_UNIQUES: &str =
            "SELECT CAST(tc.CONSTRAINT_NAME AS CHAR), CAST(k.COLUMN_NAME AS CHAR) \
            FROM information_schema.TABLE_CONSTRAINTS tc \
            JOIN information_schema.KEY_COLUMN_USAGE k \
            ON tc.CONSTRAINT_NAME = k.CONSTRAINT_NAME AND tc.TABLE_SCHEMA = k.TABLE_SCHEMA \
            AND tc.TABLE_NAME = k.TABLE_NAME \
            WHERE tc.CONSTRAINT_TYPE IN ('PRIMARY KEY', 'UNIQUE') \
            AND tc.TABLE_SCHEMA = COALESCE(?, DATABASE()) AND tc.TABLE_NAME = ?";
        const MY_GENERATED: &str =
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COALESCE(GENERATION_EXPRESSION, '') AS CHAR) \
            FROM information_schema.COLUMNS \
            WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
            AND COLUMN_NAME = '_sluice_key'";
        let pairs = |sql: &'static str| -> Result<Vec<(String, String)>> {
            match &self.db {
                Db::Pg(pool) => self
                    .rt
                    .block_on(sqlx::query_as(sql).bind(schema).bind(name).fetch_all(pool)),
                Db::My(pool) => self
                    .rt
                    .block_on(sqlx::query_as(sql).bind(schema).bind(name).fetch_all(pool)),
            }
            .map_err(|e| self.err(&format!("reading the layout of table {name}"), e))
        };
        let (columns, uniques, generated_key) = match self.cfg.target.dialect {
            Dialect::Postgres => (pairs(PG_COLUMNS)?, pairs(PG_UNIQUES)?, None),
            Dialect::MySql => (
                pairs(MY_COLUMNS)?,
                pairs(MY_UNIQUES)?,
                pairs(MY_GENERATED)?.into_iter().next().map(|(_, e)| e),
            ),
        };
        Ok(TableInfo {
            columns,
            uniques,
            generated_key,
        })
    }

    /// Creates the marker table and the output table if missing (each only after checking it is
    /// missing, so that PostgreSQL's "already exists, skipping" notice is not logged on every
    /// start); checks an existing one fits.
    pub(super) fn prepare(&mut self) -> Result<()> {
        if self.prepared {
            return Ok(());
        }
        let marker = self.cfg.marker_table.clone();
        if self
            .table_info(&marker.schema, &marker.name)?
            .columns
            .is_empty()
        {
            let created = self.execute("creating the marker table", self.marker_sql(), &[]);
            // another writer (a task of the same query) may have created it meanwhile:
            // PostgreSQL's CREATE TABLE IF NOT EXISTS can fail on that race
            if created.is_err()
                && self
                    .table_info(&marker.schema, &marker.name)?
                    .columns
                    .is_empty()
            {
                created?;
            }
        }
        // a marker row exists before the first batch, so that its `SELECT ... FOR UPDATE`
        // serialises a zombie and a restarted instance even for batch 0
        let marker_table = marker.sql(self.cfg.target.dialect);
        let seed = match self.cfg.target.dialect {
            Dialect::Postgres => format!(
                "INSERT INTO {marker_table} (query_id, table_name, batch_id) VALUES ($1, $2, -1) \
                 ON CONFLICT (query_id, table_name) DO NOTHING"
            ),
            Dialect::MySql => format!(
                "INSERT IGNORE INTO {marker_table} (query_id, table_name, batch_id) VALUES (?, ?, -1)"
            ),
        };
        let table_display = self.cfg.table.display();
        self.execute(
            "writing the first batch marker",
            seed,
            &[&self.query_id, &table_display],
        )?;
        let info = self.table_info(&self.cfg.table.schema, &self.cfg.table.name)?;
        if info.columns.is_empty() {
            let create = self.create_table_sql(self.pg_version()?)?;
            tracing::info!("jdbc sink: creating table {table_display}: {create}");
            let created = self.execute("creating the table", create, &[]);
            // created meanwhile by another writer (see above): it must fit as any existing one
            match created {
                Ok(()) => {}
                Err(e) => {
                    let info = self.table_info(&self.cfg.table.schema, &self.cfg.table.name)?;
                    if info.columns.is_empty() {
                        return Err(e);
                    }
                    self.check_fit(&info)?;
                }
            }
        } else {
            self.check_fit(&info)?;
        }
        self.prepared = true;
        Ok(())
    }

    /// PostgreSQL's `server_version_num` (0 for MySQL/MariaDB).
    fn pg_version(&self) -> Result<u32> {
        let Db::Pg(pool) = &self.db else {
            return Ok(0);
        };
        let v: (String,) = self
            .rt
            .block_on(sqlx::query_as("SHOW server_version_num").fetch_one(pool))
            .map_err(|e| self.err("reading the server version", e))?;
        Ok(v.0.trim().parse().unwrap_or(0))
    }

    /// For `sluice validate`: connects and, when the output table exists, checks that it fits;
    /// creates and writes nothing.
    pub(super) fn check_existing(&self) -> Result<()> {
        self.ping()?;
        let info = self.table_info(&self.cfg.table.schema, &self.cfg.table.name)?;
        if info.columns.is_empty() {
            return Ok(());
        }
        self.check_fit(&info)
    }

    /// Opens one connection (not through the pool, whose timeout hides why a connection
    /// failed), within the connect timeout.
    fn ping(&self) -> Result<()> {
        use sqlx::Connection as _;
        let what = format!("connecting to {}", self.cfg.target.display());
        let d = self.cfg.target.dialect;
        let timeout = self.cfg.connect_timeout;
        let r = self.rt.block_on(async {
            let connect = async {
                match super::connect_options(&self.cfg)? {
                    super::ConnectOptions::Pg(o) => {
                        let c = sqlx::PgConnection::connect_with(&o)
                            .await
                            .map_err(|e| super::classify(d, &what, e))?;
                        c.close().await.map_err(|e| super::classify(d, &what, e))
                    }
                    super::ConnectOptions::My(o) => {
                        let c = sqlx::MySqlConnection::connect_with(&o)
                            .await
                            .map_err(|e| super::classify(d, &what, e))?;
                        c.close().await.map_err(|e| super::classify(d, &what, e))
                    }
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(r) => r,
                Err(_) => Err(EngineError::external(format!(
                    "{} failed {what}: no answer within {timeout:?}",
                    d.name()
                ))),
            }
        });
        r
    }

    fn check_fit(&self, info: &TableInfo) -> Result<()> {
        let table = self.cfg.table.display();
        let columns = &info.columns;
        for f in self.schema.fields() {
            let Some((_, ty)) = columns
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(f.name()))
            else {
                return Err(EngineError::user(format!(
                    "table {table} has no column '{}' (the stream's column {} of type {}); its columns are {}. \
                     Add the column, or write to a new table",
                    f.name(),
                    f.name(),
                    f.data_type(),
                    columns.iter().map(|(c, t)| format!("{c} {t}")).collect::<Vec<_>>().join(", ")
                )));
            };
            if !types::fits(f.data_type(), ty) {
                return Err(EngineError::user(format!(
                    "table {table}: column '{}' has type {ty}, which cannot hold the stream's {} values \
                     (a new table would use {})",
                    f.name(),
                    f.data_type(),
                    types::sql_type(self.cfg.target.dialect, f.data_type(), false, self.cfg.string_key_length)
                        .unwrap_or_else(|_| "?".into())
                )));
            }
        }
        if self.cfg.mode == OutputMode::Update {
            check_unique(&table, &self.keys, info, self.cfg.target.dialect)?;
        }
        Ok(())
    }
}

/// Whether some PRIMARY KEY or UNIQUE constraint of `uniques` (constraint name, column) covers
/// exactly `keys` (case-insensitive, any order). Pure; table-tested.
fn has_key_on(keys: &[String], uniques: &[(String, String)]) -> bool {
    let mut by_name: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (name, col) in uniques {
        by_name
            .entry(name)
            .or_default()
            .push(col.to_ascii_lowercase());
    }
    let mut want: Vec<String> = keys.iter().map(|k| k.to_ascii_lowercase()).collect();
    want.sort();
    by_name.values_mut().any(|cols| {
        cols.sort();
        *cols == want
    })
}

/// Whether `expr`, the generation expression of a `_sluice_key` column, hashes exactly the
/// upsert `keys` among the table's `columns`: a SHA-2 over each key column and no other column
/// (MariaDB and MySQL print column names back-quoted). Pure; table-tested.
fn generated_key_covers(expr: &str, keys: &[String], columns: &[(String, String)]) -> bool {
    let expr = expr.to_ascii_lowercase();
    let mentions = |c: &str| expr.contains(&format!("`{}`", c.to_ascii_lowercase()));
    expr.contains("sha2(")
        && keys.iter().all(|k| mentions(k))
        && columns
            .iter()
            .filter(|(c, _)| !keys.iter().any(|k| k.eq_ignore_ascii_case(c)))
            .all(|(c, _)| !mentions(c))
}

fn check_unique(table: &str, keys: &[String], info: &TableInfo, dialect: Dialect) -> Result<()> {
    let uniques = &info.uniques;
    if has_key_on(keys, uniques) {
        return Ok(());
    }
    // the generated key column is Sluice's own on MySQL/MariaDB only, and must hash the keys
    if dialect == Dialect::MySql && has_key_on(&[MYSQL_KEY_COLUMN.to_string()], uniques) {
        let expr = info.generated_key.as_deref().unwrap_or_default();
        if generated_key_covers(expr, keys, &info.columns) {
            return Ok(());
        }
        return Err(EngineError::user(format!(
            "table {table} has a unique {MYSQL_KEY_COLUMN} column, but it is not generated from \
             exactly the upsert keys ({}): its expression is '{expr}'. Drop the column and its \
             key, or write to a new table (Sluice creates it with a key over ({}))",
            keys.join(", "),
            keys.join(", ")
        )));
    }
    Err(EngineError::user(format!(
        "table {table} has no PRIMARY KEY or UNIQUE key on exactly ({}), which update mode upserts \
         on; add one (e.g. ALTER TABLE {table} ADD PRIMARY KEY ({})), or set option 'keys' to the \
         columns of an existing key",
        keys.join(", "),
        keys.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::{generated_key_covers, has_key_on};

    #[test]
    fn a_generated_key_must_hash_exactly_the_upsert_keys() {
        let keys = vec!["action".to_string(), "window_start".to_string()];
        let columns = pairs(&[
            ("window_start", "datetime"),
            ("action", "varchar"),
            ("count", "bigint"),
            ("_sluice_key", "binary"),
        ]);
        // MariaDB's text of the expression Sluice creates, for the keys, one key, another column
        let ours = "unhex(sha2(concat_ws(',',ifnull(concat(char_length(cast(`window_start` as \
                    char charset utf8mb4)),':',cast(`window_start` as char charset utf8mb4)),'n'),\
                    ifnull(concat(char_length(cast(`Action` as char charset utf8mb4)),':',\
                    cast(`Action` as char charset utf8mb4)),'n')),256))";
        // (expression, expected)
        let table = [
            (ours, true),
            ("unhex(sha2(`action`,256))", false),
            (
                "unhex(sha2(concat_ws(',',`action`,`window_start`,`count`),256))",
                false,
            ),
            ("concat(`action`,`window_start`)", false),
            ("", false),
        ];
        for (expr, want) in table {
            assert_eq!(generated_key_covers(expr, &keys, &columns), want, "{expr}");
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_key_must_cover_exactly_the_upsert_keys() {
        let keys = vec!["action".to_string(), "window_start".to_string()];
        // (constraints, expected)
        let table = [
            (pairs(&[]), false),
            (pairs(&[("pk", "window_start"), ("pk", "ACTION")]), true),
            (pairs(&[("pk", "window_start")]), false),
            (
                pairs(&[("pk", "id"), ("u", "action"), ("u", "window_start")]),
                true,
            ),
            (
                pairs(&[("u", "action"), ("u", "window_start"), ("u", "x")]),
                false,
            ),
        ];
        for (uniques, want) in table {
            assert_eq!(has_key_on(&keys, &uniques), want, "{uniques:?}");
        }
    }
}
