//! # sluice-connectors
//!
//! The connectors of Sluice, one folder each, with formats kept apart from transports:
//!
//! | module            | what it holds |
//! |-------------------|---------------|
//! | [`file`]          | the file-directory source (json, csv, parquet, text), watched with inotify; a parser pool that parses the next batches' files ahead |
//! | [`formats`]       | json / csv / parquet / text decoding into Arrow, malformed-record modes |
//! | [`sinks::console`]| Spark's console output |
//! | [`sinks::memory`] | a named in-memory table, queryable with SQL |
//! | [`sinks::file`]   | csv / json / parquet files, exactly-once through a manifest log |
//! | [`delta`]         | Delta Lake tables (delta-rs): exactly-once sink (app transactions, merge, compaction), streaming source |
//! | [`kafka`]         | Kafka source (offsets in the checkpoint) and transactional exactly-once sink |
//! | [`jdbc`]          | PostgreSQL and MySQL/MariaDB tables, exactly-once (rows + batch marker in one transaction), upserts |
//!
//! [`builtin`] returns a registry with all of them.

pub mod delta;
pub mod file;
pub mod formats;
pub mod jdbc;
pub mod kafka;
pub mod sinks;
pub mod util;

/// delta-rs, as the Delta connectors use it (to read tables back in tests and tools).
pub use deltalake;
/// rdkafka, as the Kafka connectors use it (for tools and tests that produce or read records).
pub use rdkafka;

use std::sync::Arc;

use sluice_engine::ConnectorRegistry;

/// A registry with every built-in connector.
pub fn builtin() -> ConnectorRegistry {
    let mut r = ConnectorRegistry::new();
    r.add_source(Arc::new(file::FileSourceFactory));
    r.add_source(Arc::new(delta::source::DeltaSourceFactory));
    r.add_source(Arc::new(kafka::source::KafkaSourceFactory));
    r.add_sink(Arc::new(sinks::console::ConsoleSinkFactory));
    r.add_sink(Arc::new(sinks::memory::MemorySinkFactory));
    r.add_sink(Arc::new(sinks::file::FileSinkFactory));
    r.add_sink(Arc::new(jdbc::JdbcSinkFactory));
    r.add_sink(Arc::new(delta::DeltaSinkFactory));
    r.add_sink(Arc::new(kafka::sink::KafkaSinkFactory));
    r
}
