//! # sluice-connectors
//!
//! The connectors of Sluice, one folder each, with formats kept apart from transports:
//!
//! | module            | what it holds |
//! |-------------------|---------------|
//! | [`file`]          | the file-directory source (json, csv, parquet, text), watched with inotify; a parser pool that parses the next batches' files ahead; Auto Loader (`cloudFiles`: schema kept in versions, evolution, rescued data) on top |
//! | [`formats`]       | json / csv / parquet / text decoding into Arrow, malformed-record modes |
//! | [`sinks::console`]| Spark's console output |
//! | [`sinks::memory`] | a named in-memory table, queryable with SQL |
//! | [`sinks::file`]   | csv / json / parquet files, exactly-once through a manifest log |
//! | `delta` (feature `delta`) | Delta Lake tables (delta-rs): exactly-once sink (app transactions, merge, compaction), streaming source |
//! | `kafka` (feature `kafka`) | Kafka source (offsets in the checkpoint) and transactional exactly-once sink |
//! | `aws` (feature `aws`)     | Auto Loader's file notifications from an SQS queue; the Kinesis source |
//! | `jdbc` (feature `jdbc`)   | PostgreSQL and MySQL/MariaDB tables, exactly-once (rows + batch marker in one transaction), upserts |
//!
//! The three heavy connectors sit behind Cargo features (all on by default), so a program that
//! embeds Sluice for files and SQL builds without librdkafka, delta-rs or sqlx.
//! [`builtin`] returns a registry with every connector compiled in; [`FORMATS`] names the
//! formats each feature brings.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "delta")]
pub mod delta;
pub mod file;
pub mod formats;
#[cfg(feature = "jdbc")]
pub mod jdbc;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod sinks;
pub mod util;

/// delta-rs, as the Delta connectors use it (to read tables back in tests and tools).
#[cfg(feature = "delta")]
pub use deltalake;
/// rdkafka, as the Kafka connectors use it (for tools and tests that produce or read records).
#[cfg(feature = "kafka")]
pub use rdkafka;

/// A connector format Sluice has.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    /// The name given to `format(..)` / `format = ".."`.
    pub name: &'static str,
    /// The Cargo feature it needs (`None`: always built).
    pub feature: Option<&'static str>,
    /// `source`, `sink`, or both.
    pub kinds: &'static str,
    /// What it reads or writes.
    pub description: &'static str,
}

const fn format(
    name: &'static str,
    feature: Option<&'static str>,
    kinds: &'static str,
    description: &'static str,
) -> Format {
    Format {
        name,
        feature,
        kinds,
        description,
    }
}

/// Every connector format Sluice has, whether or not this build has it: a format whose feature
/// is off is named in the error for an unknown format, so the user learns to turn it on, and
/// `sluice run --help` lists them all.
pub const FORMATS: &[Format] = &[
    format(
        "json",
        None,
        "source, sink",
        "JSON lines files in a directory",
    ),
    format("csv", None, "source, sink", "CSV files in a directory"),
    format(
        "cloudFiles",
        None,
        "source",
        "Auto Loader: json/csv/parquet files, schema inferred once and evolved, rescued data",
    ),
    format(
        "parquet",
        None,
        "source, sink",
        "Parquet files in a directory",
    ),
    format("text", None, "source", "text files, one row per line"),
    format("console", None, "sink", "rows printed to stdout"),
    format(
        "memory",
        None,
        "sink",
        "an in-memory table named after the query",
    ),
    format(
        "kafka",
        Some("kafka"),
        "source, sink",
        "Kafka topics (exactly-once sink)",
    ),
    format(
        "delta",
        Some("delta"),
        "source, sink",
        "Delta Lake tables (delta-rs)",
    ),
    format(
        "jdbc",
        Some("jdbc"),
        "sink",
        "PostgreSQL and MySQL/MariaDB tables (upserts)",
    ),
    format(
        "kinesis",
        Some("aws"),
        "source",
        "Amazon Kinesis data streams (shards split and merged while read)",
    ),
];

use std::sync::Arc;

use sluice_engine::ConnectorRegistry;

/// A registry with every built-in connector.
pub fn builtin() -> ConnectorRegistry {
    let mut r = ConnectorRegistry::new();
    r.add_source(Arc::new(file::FileSourceFactory));
    r.add_source(Arc::new(file::CloudFilesFactory));
    r.add_sink(Arc::new(sinks::console::ConsoleSinkFactory));
    r.add_sink(Arc::new(sinks::memory::MemorySinkFactory));
    r.add_sink(Arc::new(sinks::file::FileSinkFactory));
    #[cfg(feature = "delta")]
    {
        r.add_source(Arc::new(delta::source::DeltaSourceFactory));
        r.add_sink(Arc::new(delta::DeltaSinkFactory));
    }
    #[cfg(feature = "kafka")]
    {
        r.add_source(Arc::new(kafka::KafkaSourceFactory));
        r.add_sink(Arc::new(kafka::sink::KafkaSinkFactory));
    }
    #[cfg(feature = "aws")]
    r.add_source(Arc::new(aws::kinesis::KinesisSourceFactory));
    #[cfg(feature = "jdbc")]
    {
        r.add_sink(Arc::new(jdbc::JdbcSinkFactory));
        r.add_table(Arc::new(jdbc::read::JdbcTableFactory));
    }
    for f in FORMATS {
        if let Some(feature) = f.feature {
            r.add_missing_feature(f.name, feature);
        }
    }
    r
}
