//! The JDBC sink: exactly-once into PostgreSQL and MySQL/MariaDB through sqlx (async, pooled;
//! no JVM, no ODBC). Spark's option names (`url`, `user`, `password`, `dbtable`, `batchsize`,
//! `isolationLevel`, `createTableOptions`, `createTableColumnTypes`, `truncate`) plus `keys`.
//!
//! Exactly-once: every batch is ONE database transaction that writes the rows and upserts the
//! marker row `(query_id, table_name) → batch_id` in a Sluice-owned table (`_sluice_batches`,
//! option `markerTable`). The transaction first reads that row `FOR UPDATE`; a batch id at or
//! below it was committed before (a re-run after a crash, or a zombie) and is skipped. So the
//! table always equals an uninterrupted run.
//!
//! | mode     | PostgreSQL                                      | MySQL / MariaDB                         |
//! |----------|-------------------------------------------------|-----------------------------------------|
//! | append   | `COPY ... FROM STDIN (FORMAT csv)`              | multi-row `INSERT`, `batchsize` rows    |
//! | update   | COPY into a temp table, `INSERT ... SELECT ... ON CONFLICT (keys) DO UPDATE` | `INSERT ... ON DUPLICATE KEY UPDATE` |
//! | complete | `DELETE` (or `TRUNCATE` with `truncate=true`) then COPY, same transaction | `DELETE` then `INSERT`, same transaction |
//!
//! Tables are created before the batch transaction (MariaDB commits DDL implicitly), with types
//! mapped from Arrow (see [`types`]), the window struct flattened to `window_start`/`window_end`,
//! and a primary key on the keys in update/complete mode. An existing table must have every
//! column with a compatible type, or the query fails naming the table, column and both types.
//!
//! Connection loss, server restarts, deadlocks and serialization failures are External errors:
//! the executor retries the batch with backoff (`sinkMaxRetries`, `sinkRetryBackoff`). Constraint
//! violations, permission errors and bad SQL are User errors carrying the database's message.
//! The password is kept out of descriptions, logs, progress and errors.

pub mod config;
pub mod encode;
mod fence;
pub mod read;
mod table;
pub mod types;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sluice_engine::fault::crash_point;
use sluice_engine::{EngineError, OutputMode, Result, Sink, SinkContext, SinkFactory, SinkSpec};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{Connection, QueryBuilder};

use config::{Dialect, JdbcConfig};
use encode::{Encoder, Val};

/// Creates JDBC sinks (`format("jdbc")`).
#[derive(Debug, Default)]
pub struct JdbcSinkFactory;

impl SinkFactory for JdbcSinkFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["jdbc"]
    }
    fn supported_modes(&self, _format: &str) -> Vec<OutputMode> {
        vec![OutputMode::Append, OutputMode::Update, OutputMode::Complete]
    }
    fn exactly_once(&self, _spec: &SinkSpec) -> bool {
        true // rows and the batch marker in one transaction
    }
    fn fences_tasks(&self, _spec: &SinkSpec) -> bool {
        true // the marker row carries the task's epoch (fence.rs)
    }
    fn validate(&self, spec: &SinkSpec) -> Result<()> {
        JdbcConfig::from_options(&spec.options, spec.output_mode).map(|_| ())
    }
    fn check(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<()> {
        // JdbcSink::new checks keys and column types and opens nothing (its pool is lazy)
        let cfg = JdbcConfig::from_options(&spec.options, spec.output_mode)?;
        JdbcSink::new(cfg, ctx).map(|_| ())
    }
    fn check_reachable(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<()> {
        let cfg = JdbcConfig::from_options(&spec.options, spec.output_mode)?;
        JdbcSink::new(cfg, ctx)?.check_existing()
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        let cfg = JdbcConfig::from_options(&spec.options, spec.output_mode)?;
        let mut sink = JdbcSink::new(cfg, ctx)?;
        if let Some(task) = ctx.task {
            sink.claim(task)?;
        }
        Ok(Box::new(sink))
    }
}

enum Db {
    Pg(PgPool),
    My(MySqlPool),
}

/// Writes each batch in one transaction with its marker row.
pub struct JdbcSink {
    cfg: JdbcConfig,
    rt: tokio::runtime::Runtime,
    db: Db,
    query_id: String,
    schema: SchemaRef,
    keys: Vec<String>,
    prepared: bool,
    /// The task and epoch, when the query runs as a task of a group (fence.rs).
    task: Option<sluice_engine::TaskInfo>,
}

/// The key columns after flattening: each struct key (the window) becomes its fields.
fn flat_keys(ctx: &SinkContext) -> Vec<String> {
    let Some(keys) = &ctx.key_columns else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for k in keys {
        if let Ok(f) = ctx.schema.field_with_name(k) {
            let one = arrow::datatypes::Schema::new(vec![f.clone()]);
            out.extend(
                types::flatten_schema(&one)
                    .fields()
                    .iter()
                    .map(|f| f.name().clone()),
            );
        }
    }
    out
}

impl JdbcSink {
    /// Opens the pool lazily (the first batch connects, and retries while the database is down).
    pub fn new(cfg: JdbcConfig, ctx: &SinkContext) -> Result<Self> {
        let schema = types::flatten_schema(&ctx.schema);
        let keys = match &cfg.keys {
            Some(k) => k.clone(),
            None if cfg.mode == OutputMode::Append => Vec::new(),
            None => flat_keys(ctx),
        };
        for k in &keys {
            if schema.field_with_name(k).is_err() {
                return Err(EngineError::user(format!(
                    "jdbc sink: key column '{k}' is not in the output; columns are {}",
                    column_list(&schema)
                )));
            }
        }
        if cfg.mode == OutputMode::Update && keys.is_empty() {
            return Err(EngineError::user(
                "jdbc sink in update mode needs upsert keys: set option 'keys' (comma-separated \
                 columns) or write an aggregation, whose grouping columns are the keys",
            ));
        }
        for f in schema.fields() {
            types::sql_type(
                cfg.target.dialect,
                f.data_type(),
                keys.contains(f.name()),
                cfg.string_key_length,
            )
            .map_err(|e| EngineError::user(format!("jdbc sink, column '{}': {e}", f.name())))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                EngineError::external(format!("cannot start the jdbc sink's runtime: {e}"))
            })?;
        let db = {
            let _guard = rt.enter();
            open_pool(&cfg)?
        };
        Ok(Self {
            cfg,
            rt,
            db,
            query_id: ctx.query_id.clone(),
            schema,
            keys,
            prepared: false,
            task: ctx.task,
        })
    }

    fn table_sql(&self) -> String {
        self.cfg.table.sql(self.cfg.target.dialect)
    }

    fn q(&self, ident: &str) -> String {
        self.cfg.target.dialect.quote(ident)
    }

    fn column_sql(&self) -> String {
        self.schema
            .fields()
            .iter()
            .map(|f| self.q(f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn value_columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !self.keys.contains(n))
            .collect()
    }

    /// Writes one batch in one transaction; `Ok(false)` when the marker says it is already in.
    fn write(&self, batch_id: u64, batches: &[RecordBatch]) -> Result<bool> {
        let mut flat = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| types::flatten_batch(b, &self.schema))
            .collect::<Result<Vec<_>>>()?;
        if self.cfg.mode == OutputMode::Update && !flat.is_empty() {
            flat = vec![crate::util::last_per_key(&self.schema, &flat, &self.keys)?];
        }
        match &self.db {
            Db::Pg(pool) => self.rt.block_on(self.write_pg(pool, batch_id, &flat)),
            Db::My(pool) => self.rt.block_on(self.write_mysql(pool, batch_id, &flat)),
        }
        .map_err(|e| e.context(&format!("batch {batch_id}")))
    }

    async fn write_pg(
        &self,
        pool: &PgPool,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<bool> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: sqlx::Error| self.err(&what, err)
        };
        let mut tx = pool.begin().await.map_err(e("starting a transaction"))?;
        if let Some(iso) = self.cfg.isolation {
            sqlx::query(safe(format!("SET TRANSACTION ISOLATION LEVEL {iso}")))
                .execute(&mut *tx)
                .await
                .map_err(e("setting the isolation level"))?;
        }
        let marker = self.cfg.marker_table.sql(Dialect::Postgres);
        let row: Option<(i64, i64)> = sqlx::query_as(safe(self.marker_read_sql(Dialect::Postgres)))
            .bind(&self.query_id)
            .bind(self.cfg.table.display())
            .fetch_optional(&mut *tx)
            .await
            .map_err(e("reading the batch marker"))?;
        if let Some(task) = self.task {
            if let Err(err) = self.check_epoch(task, row.map(|r| r.1)) {
                tx.rollback().await.map_err(e("rolling back"))?;
                return Err(err);
            }
        }
        let done = row.map(|r| r.0);
        if done.is_some_and(|d| d >= batch_id as i64) {
            tx.rollback().await.map_err(e("rolling back"))?;
            return Ok(false);
        }
        let table = self.table_sql();
        let cols = self.column_sql();
        if self.cfg.mode == OutputMode::Complete {
            let stmt = if self.cfg.truncate {
                format!("TRUNCATE TABLE {table}")
            } else {
                format!("DELETE FROM {table}")
            };
            sqlx::query(safe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(e("emptying the table for complete mode"))?;
        }
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > 0 {
            let into = if self.cfg.mode == OutputMode::Update {
                sqlx::query(safe(format!(
                    "CREATE TEMP TABLE _sluice_stage ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA"
                )))
                .execute(&mut *tx)
                .await
                .map_err(e("creating the staging table"))?;
                "_sluice_stage".to_string()
            } else {
                table.clone()
            };
            let mut copy = tx
                .copy_in_raw(&format!(
                    "COPY {into} ({cols}) FROM STDIN WITH (FORMAT csv)"
                ))
                .await
                .map_err(e("starting COPY"))?;
            let opts = Encoder::options(Dialect::Postgres);
            let mut buf = Vec::with_capacity(1 << 20);
            let mut failed = None;
            'outer: for b in batches {
                let enc = match Encoder::new(b, &opts) {
                    Ok(enc) => enc,
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                };
                for r in 0..enc.rows() {
                    enc.write_csv_row(r, &mut buf);
                    if buf.len() >= 1 << 20 {
                        if let Err(err) = copy.send(std::mem::take(&mut buf)).await {
                            failed = Some(self.err("sending COPY data", err));
                            break 'outer;
                        }
                    }
                }
            }
            if let Some(err) = failed {
                let _ = copy.abort("sluice: batch failed").await;
                return Err(err);
            }
            if !buf.is_empty() {
                copy.send(buf).await.map_err(e("sending COPY data"))?;
            }
            copy.finish().await.map_err(e("writing rows with COPY"))?;
            if self.cfg.mode == OutputMode::Update {
                let keys = self
                    .keys
                    .iter()
                    .map(|k| self.q(k))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sets = self
                    .value_columns()
                    .iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", self.q(c)))
                    .collect::<Vec<_>>();
                let action = if sets.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    format!("DO UPDATE SET {}", sets.join(", "))
                };
                sqlx::query(safe(format!(
                    "INSERT INTO {table} ({cols}) SELECT {cols} FROM _sluice_stage ON CONFLICT ({keys}) {action}"
                )))
                .execute(&mut *tx)
                .await
                .map_err(e("upserting rows"))?;
            }
        }
        crash_point("mid-sink", batch_id);
        if let Some(task) = self.task {
            let n = sqlx::query(safe(self.task_marker_update_sql(Dialect::Postgres)))
                .bind(&self.query_id)
                .bind(self.cfg.table.display())
                .bind(batch_id as i64)
                .bind(task.epoch as i64)
                .execute(&mut *tx)
                .await
                .map_err(e("writing the batch marker"))?
                .rows_affected();
            if n != 1 {
                tx.rollback().await.map_err(e("rolling back"))?;
                return Err(self.fenced_by_update(task));
            }
            tx.commit().await.map_err(e("committing the batch"))?;
            return Ok(true);
        }
        sqlx::query(safe(format!(
            "INSERT INTO {marker} (query_id, table_name, batch_id) VALUES ($1, $2, $3) \
             ON CONFLICT (query_id, table_name) DO UPDATE SET batch_id = EXCLUDED.batch_id, committed_at = now()"
        )))
        .bind(&self.query_id)
        .bind(self.cfg.table.display())
        .bind(batch_id as i64)
        .execute(&mut *tx)
        .await
        .map_err(e("writing the batch marker"))?;
        tx.commit().await.map_err(e("committing the batch"))?;
        Ok(true)
    }

    async fn write_mysql(
        &self,
        pool: &MySqlPool,
        batch_id: u64,
        batches: &[RecordBatch],
    ) -> Result<bool> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: sqlx::Error| self.err(&what, err)
        };
        let mut conn = pool.acquire().await.map_err(e("connecting"))?;
        if let Some(iso) = self.cfg.isolation {
            // Applies to the next transaction on this connection.
            sqlx::query(safe(format!("SET TRANSACTION ISOLATION LEVEL {iso}")))
                .execute(&mut *conn)
                .await
                .map_err(e("setting the isolation level"))?;
        }
        let mut tx = conn.begin().await.map_err(e("starting a transaction"))?;
        let marker = self.cfg.marker_table.sql(Dialect::MySql);
        let row: Option<(i64, i64)> = sqlx::query_as(safe(self.marker_read_sql(Dialect::MySql)))
            .bind(&self.query_id)
            .bind(self.cfg.table.display())
            .fetch_optional(&mut *tx)
            .await
            .map_err(e("reading the batch marker"))?;
        if let Some(task) = self.task {
            if let Err(err) = self.check_epoch(task, row.map(|r| r.1)) {
                tx.rollback().await.map_err(e("rolling back"))?;
                return Err(err);
            }
        }
        let done = row.map(|r| r.0);
        if done.is_some_and(|d| d >= batch_id as i64) {
            tx.rollback().await.map_err(e("rolling back"))?;
            return Ok(false);
        }
        let table = self.table_sql();
        let cols = self.column_sql();
        if self.cfg.mode == OutputMode::Complete {
            sqlx::query(safe(format!("DELETE FROM {table}")))
                .execute(&mut *tx)
                .await
                .map_err(e("emptying the table for complete mode"))?;
        }
        let ncols = self.schema.fields().len().max(1);
        let per_stmt = self.cfg.batch_size.min(60_000 / ncols).max(1);
        let suffix = if self.cfg.mode == OutputMode::Update {
            let mut sets: Vec<String> = self
                .value_columns()
                .iter()
                .map(|c| format!("{0} = VALUES({0})", self.q(c)))
                .collect();
            if sets.is_empty() {
                let k = self.q(&self.keys[0]);
                sets.push(format!("{k} = {k}"));
            }
            format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
        } else {
            String::new()
        };
        let opts = Encoder::options(Dialect::MySql);
        // rows are numbered from 1 across the batch, as a user reads them
        let mut base = 0;
        for b in batches {
            let enc = Encoder::new(b, &opts)?;
            let mut start = 0;
            while start < enc.rows() {
                let end = (start + per_stmt).min(enc.rows());
                let mut qb: QueryBuilder<sqlx::MySql> =
                    QueryBuilder::new(format!("INSERT INTO {table} ({cols}) "));
                qb.push_values(start..end, |mut row, r| {
                    for c in 0..ncols {
                        match enc.value(c, r) {
                            Val::Null => row.push_bind(None::<String>),
                            Val::Bool(v) => row.push_bind(v),
                            Val::Int(v) => row.push_bind(v),
                            Val::Float(v) => row.push_bind(v),
                            Val::Bytes(v) => row.push_bind(v),
                            Val::Text(v) => row.push_bind(v),
                        };
                    }
                });
                qb.push(&suffix);
                qb.build().execute(&mut *tx).await.map_err(|err| {
                    self.err(
                        &format!(
                            "inserting rows {}..={} of the batch (the server's 'row N' counts \
                             from {})",
                            base + start + 1,
                            base + end,
                            base + start + 1
                        ),
                        err,
                    )
                })?;
                start = end;
            }
            base += enc.rows();
        }
        crash_point("mid-sink", batch_id);
        if let Some(task) = self.task {
            let n = sqlx::query(safe(self.task_marker_update_sql(Dialect::MySql)))
                .bind(batch_id as i64)
                .bind(&self.query_id)
                .bind(self.cfg.table.display())
                .bind(task.epoch as i64)
                .execute(&mut *tx)
                .await
                .map_err(e("writing the batch marker"))?
                .rows_affected();
            if n != 1 {
                tx.rollback().await.map_err(e("rolling back"))?;
                return Err(self.fenced_by_update(task));
            }
            tx.commit().await.map_err(e("committing the batch"))?;
            return Ok(true);
        }
        sqlx::query(safe(format!(
            "INSERT INTO {marker} (query_id, table_name, batch_id) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE batch_id = VALUES(batch_id), committed_at = CURRENT_TIMESTAMP(6)"
        )))
        .bind(&self.query_id)
        .bind(self.cfg.table.display())
        .bind(batch_id as i64)
        .execute(&mut *tx)
        .await
        .map_err(e("writing the batch marker"))?;
        tx.commit().await.map_err(e("committing the batch"))?;
        Ok(true)
    }
}

impl Sink for JdbcSink {
    fn description(&self) -> String {
        format!(
            "JdbcSink[{} table {}]",
            self.cfg.target.display(),
            self.cfg.table.display()
        )
    }

    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        self.prepare()?;
        if !self.write(batch_id, batches)? {
            tracing::info!(
                batch_id,
                "{}: batch already committed (marker found), skipped",
                self.description()
            );
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        match &self.db {
            Db::Pg(p) => self.rt.block_on(p.close()),
            Db::My(p) => self.rt.block_on(p.close()),
        }
        Ok(())
    }
}

mod connect;
use connect::{classify, column_list, connect_options, open_pool, safe, ConnectOptions};
pub use connect::{describe, is_transient};
