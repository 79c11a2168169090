//! # sluice-engine
//!
//! The engine of Sluice: the Spark-style API, the SQL front end, the streaming plan and the
//! micro-batch executor. It defines the [`Source`] and [`Sink`] contracts and knows no concrete
//! connector (they live in `sluice-connectors`); checkpoints come from `sluice-state`.
//!
//! | module          | what it holds |
//! |-----------------|---------------|
//! | [`session`]     | [`Session`] (as `SparkSession`): `read_stream()`, `sql()`, `table()`, listeners |
//! | [`reader`]      | [`DataStreamReader`]: `format`, `option(s)`, `schema`, `load`, `json`/`csv`/... |
//! | [`dataframe`]   | [`DataFrame`]: `select`, `filter`/`where_`, `with_column`, ... over DataFusion plans |
//! | [`writer`]      | [`DataStreamWriter`], [`Trigger`]: `format`, `output_mode`, `trigger`, `start` |
//! | [`query`]       | [`StreamingQuery`], the handle of a running query; [`StreamingQueryListener`] |
//! | [`plan`]        | [`StreamPlan`]: the DataFusion logical plan translated once into streaming operators (scans, filters, projections, UNION ALL of streams, one stateful operator) |
//! | [`execution`]   | the micro-batch loop: offsets log → read → plan → sink → commit log → progress |
//! | [`retry`]       | [`RetryPolicy`]: the one backoff policy of source, sink and query restarts |
//! | [`connector`]   | [`Source`], [`Sink`], their factories, [`ConnectorRegistry`], [`Notifier`] |
//! | [`aggregate`]   | the streaming aggregation operator (windows, watermark, output modes, state) |
//! | [`dedup`]       | `drop_duplicates` / `drop_duplicates_within_watermark` |
//! | [`json_fn`]     | `from_json` / `to_json` (Spark's), for the DataFrame API and SQL; the one JSON decoding loop |
//! | `json_epoch`    | JSON numbers in timestamp columns read as epoch seconds (Spark) |
//! | [`window`]      | `window` / `session_window`: the window functions and their shapes |
//! | [`watermark`]   | `with_watermark`: the event-time watermark node; the multiple-watermark policy (min/max) as a pure function |
//! | [`sql`]         | Spark's `window.start` syntax rewritten in the parsed statement |
//! | [`clock`]       | the batch clock behind `now()`/`current_timestamp()` in streaming queries |
//! | [`progress`]    | [`QueryProgress`] with Spark's field names, [`QueryStatus`] |
//! | [`ddl`]         | Spark DDL schema strings → Arrow schemas |
//! | [`options`]     | case-insensitive [`Options`], durations and sizes |
//! | [`fault`]       | `SLUICE_CRASH_AT` crash points for exactly-once tests |
//! | [`guarantee`]   | [`Guarantee`]: exactly-once or at-least-once, the weakest of sources and sink |
//! | `fingerprint`   | what a checkpoint's state means; a changed aggregation is refused |
//! | [`error`]       | [`EngineError`]: every error says whether the user, an external system or a bug must act |

pub mod aggregate;
pub mod clock;
pub mod connector;
pub mod dataframe;
pub mod ddl;
pub mod dedup;
pub mod error;
pub mod execution;
pub mod fault;
mod fingerprint;
pub mod guarantee;
mod json_epoch;
pub mod json_fn;
pub mod options;
pub mod plan;
pub mod progress;
pub mod query;
pub mod reader;
pub mod retry;
pub mod session;
pub mod sql;
pub mod watermark;
pub mod window;
pub mod writer;

pub use connector::{
    ConnectorRegistry, Notifier, Offset, OutputMode, ReadLimit, Sink, SinkContext, SinkFactory,
    SinkSpec, Source, SourceContext, SourceFactory, SourceSpec,
};
pub use dataframe::{DataFrame, GroupedData};
pub use ddl::{parse_ddl_schema, timestamp_type};
pub use error::{EngineError, ErrorKind, Result};
pub use guarantee::Guarantee;
pub use options::{parse_duration, Options};
pub use plan::StreamPlan;
pub use progress::{QueryProgress, QueryStatus};
pub use query::{QueryError, StreamingQuery, StreamingQueryListener};
pub use reader::{DataStreamReader, IntoSchema};
pub use retry::RetryPolicy;
pub use session::{Session, SessionBuilder};
pub use writer::{DataStreamWriter, PreparedQuery, Trigger};

/// Expressions (DataFusion's) for the DataFrame API: `col`, `lit`, and the usual functions.
pub mod functions {
    pub use crate::json_fn::{from_json, to_json};
    pub use crate::window::{session_window, sliding_window, window};
    pub use datafusion::functions::expr_fn::*;
    pub use datafusion::functions_aggregate::expr_fn::{
        approx_distinct, approx_percentile_cont, avg, count, count_distinct, first_value,
        last_value, max, min, sum,
    };
    pub use datafusion::logical_expr::{cast, col, lit, when, Expr};
    pub use datafusion::prelude::{abs, coalesce, concat, lower, upper};
}
