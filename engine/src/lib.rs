//! # sluice-engine
//!
//! The engine of Sluice: the Spark-style API, the SQL front end, the streaming plan and the
//! micro-batch executor. It defines the [`Source`] and [`Sink`] contracts and knows no concrete
//! connector (they live in `sluice-connectors`); checkpoints come from `sluice-state`.
//!
//! One batch's path, and the folder each step lives in:
//!
//! ```text
//!  api/  Session ── read_stream() ─▶ DataFrame ── write_stream() ─▶ DataStreamWriter::start
//!                                                                          │ once per query
//!  plan/ SQL / DataFrame ─▶ DataFusion logical plan ─▶ StreamPlan (translate) ◀┘
//!        (stateless nodes + a chain of StatefulOperators)                  │ every batch
//!  exec/ offsets log ─▶ Source::get_batch ─▶ StreamPlan::execute ─▶ Sink ─▶ state commits
//!        ─▶ commit log ─▶ progress          │ (the execution owns the state: exec/state.rs)
//!                                          ▼
//!  operators/  scans, filters, projections, watermark, stream-static joins ─▶ operator 0 ─▶
//!              ... ─▶ operator k (a join reads two inputs)
//!              each StatefulOperator: rows split by key hash into N partitions, the
//!              partitions run on a worker pool (partitioned.rs), each with its own store
//! ```
//!
//! Imports follow the flow and never run back: `api` → `plan` → `operators`; `exec` →
//! `plan`, `operators`; the root modules (`connector`, `error`, `options`, `ddl`) are shared.
//!
//! | module               | what it holds |
//! |----------------------|---------------|
//! | `api/` [`session`]   | [`Session`] (as `SparkSession`): `read_stream()`, `sql()`, `table()`, listeners |
//! | `api/` [`reader`]    | [`DataStreamReader`]: `format`, `option(s)`, `schema`, `load`, `json`/`csv`/... |
//! | `api/` [`dataframe`] | [`DataFrame`]: `select`, `filter`/`where_`, `with_column`, ... over DataFusion plans |
//! | `api/` [`writer`]    | [`DataStreamWriter`], [`Trigger`]: `format`, `output_mode`, `trigger`, `start` |
//! | `api/` [`query`]     | [`StreamingQuery`], the handle of a running query; [`StreamingQueryListener`] |
//! | `plan/` [`plan`]     | [`StreamPlan`] (`plan/stream_plan.rs`): the DataFusion logical plan translated once (`plan/translate.rs`) into stateless nodes (`plan/node.rs`: scans, filters, projections, UNION ALL) and a chain of stateful operators |
//! | `plan/` [`sql`]      | Spark's `window.start` syntax rewritten in the parsed statement |
//! | `plan/` `fingerprint` | what a checkpoint's state means; a changed aggregation is refused |
//! | `operators/` [`stateful`] | [`StatefulOperator`]: the contract of a stateful operator (who calls what, in which order, what holds across a crash) |
//! | `operators/` [`partitioned`] | the one skeleton every stateful operator runs in: split by key hash, partitions on a worker pool, stage, commit |
//! | `operators/` [`aggregate`] | the streaming aggregation operator (windows, watermark, output modes; session windows in `session_agg.rs`) |
//! | `operators/` [`dedup`] | `drop_duplicates` / `drop_duplicates_within_watermark` |
//! | `operators/` [`join`] | the stream-stream join (`symmetricHashJoin`: state watermarks from the condition in `join/bounds.rs`, state layout in `join/keys.rs`) and the stream-static join (`join/static_join.rs`) |
//! | `plan/` `join`, [`static_table`](plan::static_table) | joins translated with Spark's rules and refusals; static tables (`session.read()`, `[table.*]`) read whole per refresh |
//! | `operators/` [`watermark`] | `with_watermark`: the event-time watermark node; the multiple-watermark policy (min/max) as a pure function |
//! | `operators/` [`window`] | `window` / `session_window`: the window functions and their shapes |
//! | `operators/` [`json_fn`] | `from_json` / `to_json` (Spark's), for the DataFrame API and SQL; the one JSON decoding loop |
//! | `operators/` `json_epoch` | JSON numbers in timestamp columns read as epoch seconds (Spark) |
//! | `exec/` [`execution`] | the micro-batch loop: offsets log → read → plan → sink → commit log → progress |
//! | `exec/` [`state`]    | the query's state, owned by the execution: partition stores from the session's provider, `spark.sql.shuffle.partitions`, commits, per-operator progress |
//! | `exec/` [`retry`]    | [`RetryPolicy`]: the one backoff policy of source, sink and query restarts |
//! | `exec/` [`progress`] | [`QueryProgress`] with Spark's field names, [`QueryStatus`] |
//! | `exec/` [`expectations`] | data-quality rules on the written rows (warn / drop / fail), the quarantine sink's rows, `dataQuality` counts |
//! | `operators/` [`clock`] | the batch clock behind `now()`/`current_timestamp()` in streaming queries |
//! | `exec/` [`fault`]    | `SLUICE_CRASH_AT` crash points for exactly-once tests |
//! | `exec/` [`guarantee`] | [`Guarantee`]: exactly-once or at-least-once, the weakest of sources and sink |
//! | [`connector`]        | [`Source`], [`Sink`], their factories, [`ConnectorRegistry`], [`Notifier`] |
//! | [`options`]          | case-insensitive [`Options`], durations and sizes |
//! | [`ddl`]              | Spark DDL schema strings → Arrow schemas |
//! | [`error`]            | [`EngineError`]: every error says whether the user, an external system or a bug must act |
//!
//! The modules keep their flat public paths (`sluice_engine::session`, ...) through re-exports
//! below, for programs; inside the engine imports name the folder.

pub mod api;
pub mod connector;
pub mod ddl;
pub mod error;
pub mod exec;
pub mod operators;
pub mod options;
pub mod plan;

// the modules' former flat paths (`sluice_engine::session`, `crate::aggregate`, ...) stay valid
pub use api::{dataframe, query, reader, session, writer};
pub use exec::{execution, expectations, fault, guarantee, progress, retry};
pub use operators::{
    aggregate, clock, dedup, join, json_fn, partitioned, stateful, watermark, window,
};
pub use plan::sql;

pub use api::dataframe::{DataFrame, GroupedData};
pub use api::query::{QueryError, StreamingQuery, StreamingQueryListener};
pub use api::reader::DataFrameReader;
pub use api::reader::{DataStreamReader, IntoSchema};
pub use api::session::{Session, SessionBuilder};
pub use api::writer::{DataStreamWriter, PreparedQuery, Trigger};
pub use connector::{
    ConnectorRegistry, Notifier, Offset, OutputMode, ReadLimit, Sink, SinkContext, SinkFactory,
    SinkSpec, Source, SourceContext, SourceFactory, SourceSpec, TableFactory, TaskInfo,
};
pub use ddl::{parse_ddl_schema, schema_to_ddl, timestamp_type};
pub use error::{EngineError, ErrorKind, Result};
pub use exec::guarantee::Guarantee;
pub use exec::progress::{QueryProgress, QueryStatus};
pub use exec::retry::RetryPolicy;
pub use operators::stateful::StatefulOperator;
pub use options::{parse_duration, Options};
pub use plan::StreamPlan;

/// Expressions (DataFusion's) for the DataFrame API: `col`, `lit`, and the usual functions.
pub mod functions {
    pub use crate::operators::json_fn::{from_json, to_json};
    pub use crate::operators::window::{session_window, sliding_window, window, window_time};
    pub use datafusion::functions::expr_fn::*;
    pub use datafusion::functions_aggregate::expr_fn::{
        approx_distinct, approx_percentile_cont, avg, count, count_distinct, first_value,
        last_value, max, min, sum,
    };
    pub use datafusion::logical_expr::{cast, col, lit, when, Expr};
    pub use datafusion::prelude::{abs, coalesce, concat, lower, upper};

    /// A fixed-length interval literal (Spark's `expr("INTERVAL 1 HOUR")`): `interval("1
    /// hour")`, `interval("90 seconds")`, for time conditions such as a join's
    /// `c.t <= i.t + interval("1 hour")`.
    pub fn interval(text: &str) -> crate::Result<Expr> {
        let d = crate::options::parse_duration(text).map_err(crate::EngineError::user)?;
        let nanos = i64::try_from(d.as_nanos())
            .map_err(|_| crate::EngineError::user(format!("interval '{text}' is too long")))?;
        Ok(lit(datafusion::scalar::ScalarValue::IntervalMonthDayNano(
            Some(arrow::datatypes::IntervalMonthDayNano::new(0, 0, nanos)),
        )))
    }
}
