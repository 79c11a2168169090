//! # sluice-connectors
//!
//! The connectors of Sluice, one folder each, with formats kept apart from transports:
//!
//! | module            | what it holds |
//! |-------------------|---------------|
//! | [`file`]          | the file-directory source (json, csv, parquet, text), watched with inotify |
//! | [`formats`]       | json / csv / parquet / text decoding into Arrow, malformed-record modes |
//! | [`sinks::console`]| Spark's console output |
//! | [`sinks::memory`] | a named in-memory table, queryable with SQL |
//! | [`sinks::file`]   | csv / json / parquet files, exactly-once through a manifest log |
//! | [`delta`]         | Delta Lake tables (delta-rs): exactly-once sink (app transactions, merge, compaction), streaming source |
//! | [`jdbc`]          | PostgreSQL and MySQL/MariaDB tables, exactly-once (rows + batch marker in one transaction), upserts |
//!
//! [`builtin`] returns a registry with all of them; Kafka comes next.

pub mod delta;
pub mod file;
pub mod formats;
pub mod jdbc;
pub mod sinks;
pub mod util;

/// delta-rs, as the Delta connectors use it (to read tables back in tests and tools).
pub use deltalake;

use std::sync::Arc;

use sluice_engine::ConnectorRegistry;

/// A registry with every built-in connector.
pub fn builtin() -> ConnectorRegistry {
    let mut r = ConnectorRegistry::new();
    r.add_source(Arc::new(file::FileSourceFactory));
    r.add_source(Arc::new(delta::source::DeltaSourceFactory));
    r.add_sink(Arc::new(sinks::console::ConsoleSinkFactory));
    r.add_sink(Arc::new(sinks::memory::MemorySinkFactory));
    r.add_sink(Arc::new(sinks::file::FileSinkFactory));
    r.add_sink(Arc::new(jdbc::JdbcSinkFactory));
    r.add_sink(Arc::new(delta::DeltaSinkFactory));
    r
}
