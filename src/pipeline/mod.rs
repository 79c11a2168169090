//! The pipeline file run by `sluice run`: named sources (registered as SQL views) and named
//! queries (SQL + sink + trigger + checkpoint). Relative paths are relative to the file.
//!
//! ```toml
//! shuffle_partitions = 4               # optional: state partitions of a new checkpoint
//!                                      # (spark.sql.shuffle.partitions; default: the cores)
//! state_worker_threads = 2             # optional: cap on the threads running them
//! min_deltas_for_snapshot = 10         # optional: a state snapshot every N batches
//! storage = { "fs.s3a.endpoint" = "http://127.0.0.1:9000" }   # optional: object storage
//!                                      # settings (spark.hadoop.*) for every path and checkpoint
//!
//! [source.events]
//! format = "json"                      # json | csv | parquet | text
//! path = "in"
//! schema = "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING"
//! watermark = { column = "event_time", delay = "10 minutes" }
//! options = { maxFilesPerTrigger = 1 }
//!
//! [table.campaigns]                   # a static table (not a stream), e.g. to join with
//! format = "csv"                       # csv | json | parquet | delta | jdbc
//! path = "campaigns.csv"
//! schema = "campaign STRING, advertiser STRING, region STRING"
//! options = { header = true }
//! refresh = "every-batch"              # default (Spark re-reads it every batch); "once" | "<duration>"
//!
//! [source.raw]                        # Auto Loader: schema inferred once, kept, evolved
//! format = "cloudFiles"
//! path = "raw"
//! options = { "cloudFiles.format" = "json" }   # schemaLocation defaults to the reading
//!                                      # query's checkpoint (<checkpoint>/_autoloader/raw)
//!
//! [query.clicks]
//! sql = "SELECT event_time, user_id, value FROM events WHERE action = 'click' AND value > 100"
//! output_mode = "append"               # append | update | complete
//! trigger = "available-now"            # once | available-now | file-arrival | "500 milliseconds"
//! checkpoint = "chk/clicks"
//! sink = { format = "csv", path = "out/clicks", options = { header = true } }
//! progress_log = "progress/clicks.jsonl"   # optional
//! late_data_sink = { format = "json", path = "late" }   # optional: rows dropped as late
//! watermark_policy = "min"             # optional: with several watermarked sources, min | max
//! expectations = [                     # optional: data-quality rules on the written rows
//!   { name = "valid_user", condition = "user_id IS NOT NULL", on_violation = "drop" },
//! ]                                    # on_violation: warn (default) | drop | fail
//! quarantine = { format = "json", path = "bad" }   # optional: the rows `drop` removed
//!
//! [query.by_user]                      # reads query clicks' output (a Delta table) as a
//! sql = "SELECT ... FROM clicks"       # stream, by its name: see `graph.rs`
//! read.clicks = { watermark = { column = "event_time", delay = "1 minute" }, options = {} }
//! ```
//!
//! A query reads another query by its name when that query writes a Delta table; `sluice run`
//! starts a query once the tables it reads exist, and with `--available-now` runs the queries
//! stage after stage (each stage reads everything the earlier ones wrote in the same run).

mod graph;
mod tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use sluice_engine::writer::QueryCheck;

use crate::{
    DataFrame, DataStreamWriter, EngineError, OutputMode, PreparedQuery, Result, Session, Trigger,
};
pub use graph::{Graph, Input};

/// The `storage` table of a pipeline file (its `Debug` form masks credentials).
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct StorageSettings(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let masked = sluice_engine::options::is_secret_option(k);
                (k, if masked { "***" } else { v.as_str() })
            }))
            .finish()
    }
}

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// `spark.sql.shuffle.partitions` of the pipeline's session: the state partitions of every
    /// stateful operator of a new checkpoint (an existing one keeps its own; a different value
    /// is refused).
    pub shuffle_partitions: Option<u32>,
    /// `sluice.state.workerThreads`: a cap on the threads that run the partitions.
    pub state_worker_threads: Option<u32>,
    /// `spark.sql.streaming.stateStore.minDeltasForSnapshot`: a state snapshot every this many
    /// batches.
    pub min_deltas_for_snapshot: Option<u32>,
    /// Object-storage settings for every location of the pipeline (`fs.s3a.endpoint`, ...:
    /// the session's `spark.hadoop.*`); credentials are better left in the environment.
    #[serde(default)]
    pub storage: StorageSettings,
    /// Sources by name (the SQL view name).
    #[serde(default)]
    pub source: BTreeMap<String, SourceDef>,
    /// Static tables by name (the SQL view name).
    #[serde(default)]
    pub table: BTreeMap<String, TableDef>,
    /// Queries by name.
    #[serde(default)]
    pub query: BTreeMap<String, QueryDef>,
}

/// `[table.NAME]`: a table that is not a stream, read whole (a stream-static join's dimension
/// table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    /// Format (csv, json, parquet, delta, jdbc).
    pub format: String,
    /// File, directory or glob (files); table path (delta).
    pub path: Option<String>,
    /// DDL schema.
    pub schema: Option<String>,
    /// Options, as for sources.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// When a stream-static join reads it again: `every-batch` (default), `once`, or a
    /// duration.
    pub refresh: Option<String>,
}

/// `[source.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// Format (json, csv, parquet, text).
    pub format: String,
    /// Directory or glob.
    pub path: Option<String>,
    /// DDL schema.
    pub schema: Option<String>,
    /// Event-time watermark (applied by the stateful operators).
    pub watermark: Option<WatermarkDef>,
    /// Source options; values may be strings, numbers or booleans.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
}

/// `watermark = { column = "...", delay = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkDef {
    /// Event-time column.
    pub column: String,
    /// Allowed lateness, e.g. "10 minutes".
    pub delay: String,
}

/// `[query.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryDef {
    /// The query.
    pub sql: String,
    /// append (default) | update | complete.
    pub output_mode: Option<String>,
    /// Trigger (default: as soon as data exists, event-driven).
    pub trigger: Option<String>,
    /// Checkpoint directory.
    pub checkpoint: Option<String>,
    /// The sink.
    pub sink: SinkDef,
    /// Progress JSON lines go here, if set.
    pub progress_log: Option<String>,
    /// Where input rows dropped as late go (a watermarked window aggregation), if set.
    pub late_data_sink: Option<SinkDef>,
    /// With several watermarked sources (a UNION): `min` (default) or `max`.
    pub watermark_policy: Option<String>,
    /// Data-quality rules on the rows written.
    #[serde(default)]
    pub expectations: Vec<ExpectationDef>,
    /// Where the rows `drop` expectations remove go, if set.
    pub quarantine: Option<SinkDef>,
    /// How this query reads other queries' output tables, by query name.
    #[serde(default)]
    pub read: BTreeMap<String, ReadDef>,
    /// The Kafka consumer group of `sluice run --group` when the flag gives no name.
    pub group: Option<String>,
}

/// `{ name = "...", condition = "...", on_violation = "warn" | "drop" | "fail" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectationDef {
    /// Its name, as reported in progress and metrics.
    pub name: String,
    /// A SQL boolean expression over the written columns (NULL passes).
    pub condition: String,
    /// `warn` (default), `drop` or `fail`.
    pub on_violation: Option<String>,
}

/// `read.<query> = { watermark = {...}, options = {...} }`: how a query reads another query's
/// output table as a stream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadDef {
    /// Event-time watermark on the rows read.
    pub watermark: Option<WatermarkDef>,
    /// Options of the stream source (the Delta source's: `maxFilesPerTrigger`, ...).
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
}

/// `sink = { format = "...", path = "...", options = {...} }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDef {
    /// Sink format.
    pub format: String,
    /// Output path (file sinks).
    pub path: Option<String>,
    /// Sink options.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
}

fn option_text(key: &str, v: &toml::Value) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(EngineError::user(format!(
            "option '{key}' must be a string, number or boolean, not {}",
            other.type_str()
        ))),
    }
}

impl Pipeline {
    /// Reads and parses a pipeline file.
    pub fn load(path: &Path) -> Result<(Self, PathBuf)> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            EngineError::user(format!("cannot read pipeline file {}: {e}", path.display()))
        })?;
        let p: Pipeline = toml::from_str(&text)
            .map_err(|e| EngineError::user(format!("pipeline file {}: {e}", path.display())))?;
        if p.query.is_empty() {
            return Err(EngineError::user(format!(
                "pipeline file {} defines no [query.NAME]",
                path.display()
            )));
        }
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Ok((p, base))
    }

    /// The session the pipeline's queries run in, with the pipeline's settings.
    pub fn session(&self, app_name: &str) -> Result<Session> {
        self.session_builder(app_name).build()
    }

    /// The session `sluice validate` checks the pipeline in: as [`Pipeline::session`], and
    /// sources create and change nothing while their schemas are resolved.
    pub fn validate_session(&self, app_name: &str) -> Result<Session> {
        self.session_builder(app_name)
            .config(sluice_engine::api::session::VALIDATE_ONLY_CONF, "true")
            .build()
    }

    /// The pipeline's object-storage settings as the session's (`spark.hadoop.*`).
    pub(crate) fn storage_options(&self) -> sluice_state::remote::StorageOptions {
        self.storage
            .0
            .iter()
            .map(|(k, v)| {
                let k = k.strip_prefix("spark.hadoop.").unwrap_or(k);
                (format!("spark.hadoop.{k}"), v.clone())
            })
            .collect()
    }

    fn session_builder(&self, app_name: &str) -> crate::SessionBuilder {
        let mut b = Session::builder().app_name(app_name);
        if let Some(n) = self.shuffle_partitions {
            b = b.config("spark.sql.shuffle.partitions", n.to_string());
        }
        if let Some(n) = self.state_worker_threads {
            b = b.config("sluice.state.workerThreads", n.to_string());
        }
        if let Some(n) = self.min_deltas_for_snapshot {
            b = b.config(
                sluice_engine::api::session::MIN_DELTAS_FOR_SNAPSHOT_CONF,
                n.to_string(),
            );
        }
        for (k, v) in self.storage_options() {
            b = b.config(k, v);
        }
        b
    }

    /// Registers the sources and checks and opens every query, without starting any.
    pub fn prepare(&self, session: &Session, base: &Path) -> Result<Vec<(String, PreparedQuery)>> {
        self.prepare_with(session, base, &[], None)
    }

    /// Like [`Pipeline::prepare`], for the queries named in `only` (all when empty), with every
    /// trigger replaced by `trigger` when given (`sluice run --available-now`: a backfill).
    pub fn prepare_with(
        &self,
        session: &Session,
        base: &Path,
        only: &[String],
        trigger: Option<Trigger>,
    ) -> Result<Vec<(String, PreparedQuery)>> {
        self.writers(session, base, only, trigger)?
            .into_iter()
            .map(|(name, w)| {
                let p = w
                    .prepare()
                    .map_err(|e| e.context(&format!("query '{name}'")))?;
                Ok((name, p))
            })
            .collect()
    }

    /// The writer of query `name` (its sources registered in `session`), not yet prepared.
    pub(crate) fn writer_of(
        &self,
        session: &Session,
        base: &Path,
        name: &str,
    ) -> Result<DataStreamWriter> {
        self.writers(session, base, &[name.to_string()], None)?
            .pop()
            .map(|(_, w)| w)
            .ok_or_else(|| EngineError::user(format!("no [query.{name}] in the pipeline file")))
    }

    /// Checks that query `name` can run as tasks: it plans, and its state follows the Kafka
    /// partitioning (every stateful operator groups by the message `key`).
    pub(crate) fn check_task_query(&self, base: &Path, name: &str) -> Result<()> {
        let session = self.validate_session("sluice")?;
        self.writer_of(&session, base, name)?
            .check_state_follows("key")
            .map_err(|e| e.context(&format!("query '{name}'")))
    }

    /// Checks every query as [`Pipeline::prepare`] does, without creating or changing anything
    /// (no checkpoint, output directory or table); with `reachable`, also asks each source's
    /// and sink's system whether it answers and whether an existing target fits.
    pub fn validate(
        &self,
        session: &Session,
        base: &Path,
        reachable: bool,
    ) -> Result<Vec<(String, QueryCheck)>> {
        self.writers(session, base, &[], None)?
            .into_iter()
            .map(|(name, w)| {
                let c = w
                    .validate(reachable)
                    .map_err(|e| e.context(&format!("query '{name}'")))?;
                Ok((name, c))
            })
            .collect()
    }

    /// Registers the sources and tables (as SQL views), then plans the queries in the graph's
    /// order, each query's output registered as a stream view for the queries that read it,
    /// and describes the writers of the queries in `only` (all when empty).
    fn writers(
        &self,
        session: &Session,
        base: &Path,
        only: &[String],
        trigger: Option<Trigger>,
    ) -> Result<Vec<(String, DataStreamWriter)>> {
        for n in only {
            if !self.query.contains_key(n) {
                return Err(EngineError::user(format!(
                    "no [query.{n}] in the pipeline file; it defines {}",
                    self.query.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let graph = self.graph(session)?;
        let resolve = |p: &str| resolve_path(base, p).to_string_lossy().into_owned();
        for (name, s) in &self.source {
            let ctx = format!("source '{name}'");
            let mut r = session.read_stream().format(&s.format);
            for (k, v) in &s.options {
                r = r.option(k, option_text(k, v)?);
            }
            let validate_only = session
                .conf(sluice_engine::api::session::VALIDATE_ONLY_CONF)
                .is_some_and(|v| v == "true");
            if let Some(loc) = self.default_schema_location(name, s, &graph, base, validate_only)? {
                r = r.option("cloudFiles.schemaLocation", loc);
            }
            if let Some(schema) = &s.schema {
                r = r.schema(schema.as_str());
            }
            let df = match &s.path {
                Some(p) => r.load(resolve(p)),
                None => r.load_default(),
            }
            .map_err(|e| match e {
                EngineError::MissingSchema { what } => EngineError::user(format!(
                    "{ctx}: {what} needs a schema: add `schema = \"col TYPE, ...\"` to \
                     [source.{name}] (or `options = {{ inferSchema = true }}` to sample the files \
                     already there)"
                )),
                e => e.context(&ctx),
            })?;
            let df = match &s.watermark {
                Some(w) => df
                    .with_watermark(&w.column, &w.delay)
                    .map_err(|e| e.context(&ctx))?,
                None => df,
            };
            df.create_or_replace_temp_view(name)?;
        }
        for (name, t) in &self.table {
            let ctx = format!("table '{name}'");
            if self.source.contains_key(name) {
                return Err(EngineError::user(format!(
                    "{ctx}: [source.{name}] has the same name; name them differently"
                )));
            }
            let mut r = session.read().format(&t.format);
            for (k, v) in &t.options {
                r = r.option(k, option_text(k, v)?);
            }
            if let Some(refresh) = &t.refresh {
                r = r.option("refresh", refresh);
            }
            if let Some(schema) = &t.schema {
                r = r.schema(schema.as_str());
            }
            let df = match &t.path {
                Some(p) => r.load(resolve(p)),
                None => r.load_default(),
            }
            .map_err(|e| e.context(&ctx))?;
            df.create_or_replace_temp_view(name)?;
        }
        let mut outputs: BTreeMap<&str, arrow::datatypes::SchemaRef> = BTreeMap::new();
        let mut writers = Vec::new();
        for name in graph.order() {
            let q = &self.query[name];
            let ctx = format!("query '{name}'");
            for u in graph.upstream(name) {
                let schema = outputs.get(u).cloned().ok_or_else(|| {
                    EngineError::bug(format!("query '{u}' planned after '{name}'"))
                })?;
                self.upstream_view(session, base, u, schema, q.read.get(u))
                    .map_err(|e| e.context(&format!("{ctx} reading query '{u}'")))?
                    .create_or_replace_temp_view(u)?;
            }
            for r in q.read.keys() {
                if !graph.upstream(name).contains(&r.as_str()) {
                    return Err(EngineError::user(format!(
                        "{ctx}: read.{r} configures reading query '{r}', which this query does \
                         not read (it reads: {})",
                        graph.upstream(name).join(", ")
                    )));
                }
            }
            let mut df = session.sql(&q.sql).map_err(|e| e.context(&ctx))?;
            outputs.insert(name, df.schema());
            if !only.is_empty() && !only.iter().any(|o| o == name) {
                continue;
            }
            for e in &q.expectations {
                let on = match &e.on_violation {
                    Some(v) => v.parse().map_err(|e: EngineError| e.context(&ctx))?,
                    None => sluice_engine::exec::expectations::OnViolation::Warn,
                };
                df = df
                    .with_expectation(&e.name, &e.condition, on)
                    .map_err(|e| e.context(&ctx))?;
            }
            writers.push((
                name.to_string(),
                self.writer(name, q, df, trigger, &resolve)?,
            ));
        }
        Ok(writers)
    }

    /// A query's writer: sink, mode, trigger, side sinks, checkpoint, progress log.
    fn writer(
        &self,
        name: &str,
        q: &QueryDef,
        df: DataFrame,
        trigger: Option<Trigger>,
        resolve: &dyn Fn(&str) -> String,
    ) -> Result<DataStreamWriter> {
        let ctx = format!("query '{name}'");
        let mut w = df.write_stream().format(&q.sink.format).query_name(name);
        if let Some(p) = &q.sink.path {
            w = w.option("path", resolve(p));
        }
        for (k, v) in &q.sink.options {
            w = w.option(k, option_text(k, v)?);
        }
        let mode: OutputMode = q
            .output_mode
            .as_deref()
            .unwrap_or("append")
            .parse()
            .map_err(|e: EngineError| e.context(&ctx))?;
        w = w.output_mode(mode);
        if let Some(t) = trigger {
            w = w.trigger(t);
        } else if let Some(t) = &q.trigger {
            let t: Trigger = t.parse().map_err(|e: EngineError| e.context(&ctx))?;
            w = w.trigger(t);
        }
        if let Some(l) = &q.late_data_sink {
            w = w.late_data_sink(&l.format, side_options(l, resolve)?);
        }
        if let Some(l) = &q.quarantine {
            w = w.quarantine_sink(&l.format, side_options(l, resolve)?);
        }
        if let Some(c) = &q.checkpoint {
            w = w.checkpoint_location(resolve(c));
        }
        if let Some(p) = &q.watermark_policy {
            w = w.option("multipleWatermarkPolicy", p);
        }
        if let Some(p) = &q.progress_log {
            w = w.progress_log(resolve(p));
        }
        Ok(w)
    }
}

/// A location of the pipeline file as text: relative paths resolved against its directory,
/// URLs as written.
pub(crate) fn resolve_location(base: &Path, p: &str) -> String {
    resolve_path(base, p).to_string_lossy().into_owned()
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let pb = Path::new(p);
    if pb.is_absolute() || p.contains("://") {
        // absolute, or a URL (`s3://bucket/…`, `file:///…`): as written
        pb.to_path_buf()
    } else {
        base.join(pb)
    }
}

fn side_options(l: &SinkDef, resolve: &dyn Fn(&str) -> String) -> Result<Vec<(String, String)>> {
    let mut opts: Vec<(String, String)> = Vec::new();
    if let Some(p) = &l.path {
        opts.push(("path".into(), resolve(p)));
    }
    for (k, v) in &l.options {
        opts.push((k.clone(), option_text(k, v)?));
    }
    Ok(opts)
}
