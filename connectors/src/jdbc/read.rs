//! Static tables from PostgreSQL and MySQL/MariaDB (`session.read().format("jdbc")`, a
//! pipeline's `[table.NAME] format = "jdbc"`): the whole table read at every refresh of a
//! stream-static join, with Spark's option names (`url`, `dbtable`, `user`, `password`).
//!
//! Without a schema, the table's own column types give it (see [`arrow_type`]). Each column is
//! selected as text (timestamps as epoch microseconds) and cast to its Arrow type by Arrow's
//! kernels, so every type the cast supports reads the same way from both databases.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::{EngineError, OutputMode, Result, SourceSpec, TableFactory};
use sqlx::{Column, Connection, Executor, Row, SqlSafeStr, Statement, TypeInfo};

use super::config::{Dialect, JdbcConfig};
use super::connect::{connect_options, describe, ConnectOptions};

/// The options a jdbc table takes.
const KNOWN: &[&str] = &[
    "url",
    "dbtable",
    "user",
    "password",
    "driver",
    "connectTimeout",
];

/// Reads jdbc static tables.
#[derive(Debug, Default)]
pub struct JdbcTableFactory;

fn config(spec: &SourceSpec) -> Result<JdbcConfig> {
    spec.options.check_known("a jdbc table", KNOWN, &[])?;
    JdbcConfig::from_options(&spec.options, OutputMode::Append)
}

/// The Arrow type of a database column type (sqlx's name for it); `None`: give a schema.
pub fn arrow_type(db_type: &str) -> Option<DataType> {
    let t = db_type.to_ascii_uppercase();
    Some(match t.as_str() {
        "INT2" | "SMALLINT" | "TINYINT" => DataType::Int16,
        "INT4" | "INT" | "INTEGER" | "MEDIUMINT" => DataType::Int32,
        "INT8" | "BIGINT" => DataType::Int64,
        "FLOAT4" | "REAL" | "FLOAT" => DataType::Float32,
        "FLOAT8" | "DOUBLE" | "NUMERIC" | "DECIMAL" => DataType::Float64,
        "BOOL" | "BOOLEAN" => DataType::Boolean,
        "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" | "TINYTEXT" | "MEDIUMTEXT"
        | "LONGTEXT" | "UUID" | "JSON" | "JSONB" => DataType::Utf8,
        "TIMESTAMP" | "TIMESTAMPTZ" | "DATETIME" => sluice_engine::timestamp_type(),
        "DATE" => DataType::Date32,
        _ => return None,
    })
}

/// Runs `f` on a thread of its own with a runtime of its own (reads happen on a query's
/// thread, or inside a DataFusion scan already on a runtime).
fn on_runtime<T: Send>(f: impl FnOnce(&tokio::runtime::Runtime) -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| EngineError::external(format!("cannot start a runtime: {e}")))?;
            f(&rt)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn db_error(cfg: &JdbcConfig, e: sqlx::Error) -> EngineError {
    let msg = format!(
        "reading table {} from {}: {}",
        cfg.table.display(),
        cfg.target.display(),
        describe(&e)
    );
    match e {
        sqlx::Error::Database(_) => EngineError::user(msg),
        _ => EngineError::external(msg),
    }
}

/// Runs `$body` with `$c`, a new connection to the configured database (PostgreSQL or
/// MySQL/MariaDB: the same statements serve both).
macro_rules! on_connection {
    ($cfg:expr, $c:ident => $body:expr) => {
        match connect_options($cfg)? {
            ConnectOptions::Pg(o) => {
                let mut $c = sqlx::PgConnection::connect_with(&o)
                    .await
                    .map_err(|e| db_error($cfg, e))?;
                $body
            }
            ConnectOptions::My(o) => {
                let mut $c = sqlx::MySqlConnection::connect_with(&o)
                    .await
                    .map_err(|e| db_error($cfg, e))?;
                $body
            }
        }
    };
}

impl TableFactory for JdbcTableFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["jdbc"]
    }

    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let cfg = config(spec)?;
        if let Some(s) = &spec.schema {
            return Ok(Arc::clone(s));
        }
        let sql = format!("SELECT * FROM {}", cfg.table.sql(cfg.target.dialect));
        let columns: Vec<(String, String)> = on_runtime(|rt| {
            rt.block_on(async {
                let cols = on_connection!(&cfg, c => {
                    let d = (&mut c)
                        .prepare(sqlx::AssertSqlSafe(sql.clone()).into_sql_str())
                        .await
                        .map_err(|e| db_error(&cfg, e))?;
                    names(d.columns())
                });
                Ok(cols)
            })
        })?;
        let fields = columns
            .into_iter()
            .map(|(name, ty)| {
                let t = arrow_type(&ty).ok_or_else(|| {
                    EngineError::user(format!(
                        "table {}: column '{name}' has type {ty}, which Sluice does not map to \
                         an Arrow type by itself; give the table a schema (\"{name} STRING, ...\")",
                        cfg.table.display()
                    ))
                })?;
                Ok(Field::new(name, t, true))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    fn read(&self, spec: &SourceSpec, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        let cfg = config(spec)?;
        let d = cfg.target.dialect;
        let select: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let c = d.quote(f.name());
                match (d, f.data_type()) {
                    (Dialect::Postgres, DataType::Timestamp(_, _)) => {
                        format!("(EXTRACT(EPOCH FROM {c}) * 1000000)::BIGINT::TEXT")
                    }
                    (Dialect::Postgres, _) => format!("{c}::TEXT"),
                    (Dialect::MySql, DataType::Timestamp(_, _)) => {
                        format!("CAST(ROUND(UNIX_TIMESTAMP({c}) * 1000000) AS CHAR)")
                    }
                    (Dialect::MySql, _) => format!("CAST({c} AS CHAR)"),
                }
            })
            .collect();
        let sql = format!("SELECT {} FROM {}", select.join(", "), cfg.table.sql(d));
        let n = schema.fields().len();
        let rows: Vec<Vec<Option<String>>> = on_runtime(|rt| {
            rt.block_on(async {
                let text =
                    |get: &dyn Fn(usize) -> std::result::Result<Option<String>, sqlx::Error>| {
                        (0..n).map(get).collect::<std::result::Result<Vec<_>, _>>()
                    };
                on_connection!(&cfg, c => {
                    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                        .fetch_all(&mut c)
                        .await
                        .map_err(|e| db_error(&cfg, e))?;
                    rows.iter()
                        .map(|r| text(&|i| r.try_get(i)).map_err(|e| db_error(&cfg, e)))
                        .collect()
                })
            })
        })?;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(n);
        for (i, f) in schema.fields().iter().enumerate() {
            let strings: ArrayRef =
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r[i].as_deref())));
            let via = match f.data_type() {
                DataType::Timestamp(_, _) => cast(&strings, &DataType::Int64)?,
                _ => strings,
            };
            let typed = cast(&via, f.data_type()).map_err(|e| {
                EngineError::user(format!(
                    "table {}: column '{}' does not read as {}: {e}",
                    cfg.table.display(),
                    f.name(),
                    f.data_type()
                ))
            })?;
            cols.push(typed);
        }
        Ok(vec![RecordBatch::try_new_with_options(
            Arc::clone(schema),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )?])
    }
}

fn names<C: Column>(cols: &[C]) -> Vec<(String, String)> {
    cols.iter()
        .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_types_map_to_arrow() {
        for (db, want) in [
            ("INT4", Some(DataType::Int32)),
            ("int8", Some(DataType::Int64)),
            ("BIGINT", Some(DataType::Int64)),
            ("TEXT", Some(DataType::Utf8)),
            ("VARCHAR", Some(DataType::Utf8)),
            ("TIMESTAMPTZ", Some(sluice_engine::timestamp_type())),
            ("DATETIME", Some(sluice_engine::timestamp_type())),
            ("FLOAT8", Some(DataType::Float64)),
            ("BOOL", Some(DataType::Boolean)),
            ("BYTEA", None),
        ] {
            assert_eq!(arrow_type(db), want, "{db}");
        }
    }
}
