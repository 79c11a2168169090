//! [`DataStreamWriter`]: `df.write_stream().format(..).output_mode(..).trigger(..).start()`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;

use crate::api::query::{QueryShared, StreamingQuery};
use crate::api::session::{MIN_BATCHES_TO_RETAIN_CONF, MIN_DELTAS_FOR_SNAPSHOT_CONF};
use crate::connector::{OutputMode, Sink, SinkContext, SinkSpec, SourceContext};
use crate::error::{EngineError, Result};
use crate::exec::execution::{Execution, SideOutputs};
use crate::exec::expectations::Checks;
use crate::exec::guarantee::Guarantee;
use crate::exec::retry::{RetryPolicy, INITIAL_BACKOFF_CONF, MAX_BACKOFF_CONF, MAX_RETRIES_CONF};
use crate::operators::clock::BatchClock;
use crate::operators::watermark::{WatermarkPolicy, POLICY_CONF};
use crate::options::Options;
use crate::plan::fingerprint::check_state_fingerprint;
use crate::plan::StreamPlan;
use crate::DataFrame;
use sluice_state::{CheckpointDir, StoreOptions};

use crate::exec::state::{QueryState, SHUFFLE_PARTITIONS_CONF, STATE_THREADS_CONF};

pub use crate::exec::trigger::Trigger;

#[path = "side_sinks.rs"]
mod side_sinks;
#[path = "writer_validate.rs"]
mod validate;
pub use validate::QueryCheck;

type ForeachBatchFn = Box<dyn FnMut(u64, &[RecordBatch]) -> Result<()> + Send>;

/// Writer options the engine itself reads (not passed to the sink).
const ENGINE_OPTIONS: &[&str] = &[
    "checkpointLocation",
    "queryName",
    "sinkMaxRetries",
    "sinkRetryBackoff",
    "multipleWatermarkPolicy",
    "minBatchesToRetain",
    "minDeltasForSnapshot",
];

/// Describes where and how a stream is written; `start()` runs it.
pub struct DataStreamWriter {
    df: DataFrame,
    format: Option<String>,
    options: Options,
    output_mode: OutputMode,
    trigger: Trigger,
    checkpoint: Option<PathBuf>,
    query_name: Option<String>,
    foreach: Option<ForeachBatchFn>,
    progress_log: Option<PathBuf>,
    late_data: Option<(String, Options)>,
    quarantine: Option<(String, Options)>,
    task: Option<sluice_state::remote::TaskFence>,
}

impl DataStreamWriter {
    pub(crate) fn new(df: DataFrame) -> Self {
        Self {
            df,
            format: None,
            options: Options::new(),
            output_mode: OutputMode::Append,
            trigger: Trigger::default(),
            checkpoint: None,
            query_name: None,
            foreach: None,
            progress_log: None,
            late_data: None,
            quarantine: None,
            task: None,
        }
    }

    /// Refuses a query whose state would not follow its input partitioning: every stateful
    /// operator must group by the stream column `column` (see
    /// [`crate::plan::partitioning`]).
    pub fn check_state_follows(&self, column: &str) -> Result<()> {
        crate::plan::partitioning::check_state_follows(self.df.logical_plan(), column)
    }

    /// Runs the query as one task of a group (`sluice run --group`): its checkpoint is the
    /// task's (worked on through a local copy, guarded by the epoch `fence` holds), and its
    /// sink must fence tasks ([`crate::connector::SinkFactory::fences_tasks`]).
    pub fn task(mut self, fence: sluice_state::remote::TaskFence) -> Self {
        self.task = Some(fence);
        self
    }

    /// The sink format: `console`, `memory`, `csv`, `json`, `parquet` (more with connectors).
    pub fn format(mut self, format: &str) -> Self {
        self.format = Some(format.to_ascii_lowercase());
        self
    }

    /// Sets a sink option (also `checkpointLocation` and `queryName`, as in Spark).
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// Sets several options.
    pub fn options<K: AsRef<str>, V: ToString>(
        mut self,
        opts: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in opts {
            self.options.set(k.as_ref(), v.to_string());
        }
        self
    }

    /// The output mode (default append).
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = mode;
        self
    }

    /// The trigger (default: event-driven, a batch as soon as data exists).
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Where the query keeps its offsets and commits (required for durable sinks).
    pub fn checkpoint_location(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(dir.into());
        self
    }

    /// Names the query (the memory sink's table name).
    pub fn query_name(mut self, name: &str) -> Self {
        self.query_name = Some(name.to_string());
        self
    }

    /// Hands each batch to a closure with its batch id (at-least-once: a re-run batch is handed
    /// over again; use the batch id to deduplicate).
    pub fn foreach_batch(
        mut self,
        f: impl FnMut(u64, &[RecordBatch]) -> Result<()> + Send + 'static,
    ) -> Self {
        self.foreach = Some(Box::new(f));
        self.format = Some("foreach_batch".into());
        self
    }

    /// Writes the input rows a watermarked aggregation drops as late to a second sink (e.g.
    /// `late_data_sink("json", [("path", "late")])`), batch by batch, never silently losing them.
    pub fn late_data_sink<K: AsRef<str>, V: ToString>(
        mut self,
        format: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.late_data = Some(side_sink_spec(format, options));
        self
    }

    /// Writes the rows `expect_or_drop` expectations remove to a second sink (e.g.
    /// `quarantine_sink("delta", [("path", "quarantine")])`), exactly once per batch, as the
    /// late-data sink does.
    pub fn quarantine_sink<K: AsRef<str>, V: ToString>(
        mut self,
        format: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.quarantine = Some(side_sink_spec(format, options));
        self
    }

    /// Appends every batch's progress as a JSON line to this file.
    pub fn progress_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.progress_log = Some(path.into());
        self
    }

    /// Plans the query, opens its checkpoint, sources and sink, and starts it on its own thread.
    /// Every user error (unsupported construct, output mode, option) is reported here.
    pub fn start(self) -> Result<StreamingQuery> {
        self.prepare()?.launch()
    }

    /// Everything `start()` does except starting the query's thread: for a daemon that must check
    /// all its queries before running any.
    pub fn prepare(mut self) -> Result<PreparedQuery> {
        let Checked {
            session,
            clock,
            mut plan,
            retry,
            store_options,
            watermark_policy,
            factory,
            spec,
            checkpoint_dir,
            guarantee,
            checks,
        } = self.checked()?;
        let task = self.task.as_ref().map(|f| crate::connector::TaskInfo {
            index: f.task,
            epoch: f.epoch,
        });
        let checkpoint = match self.task.take() {
            Some(fence) => {
                task_check(&self, factory.as_deref(), &spec)?;
                CheckpointDir::open_task(fence)?
            }
            None => CheckpointDir::open_location(
                &checkpoint_dir.to_string_lossy(),
                &session.storage_options(),
            )?,
        };
        if checkpoint.remote_url().is_some()
            && plan.stateful
            && store_options.snapshot_interval == 0
        {
            return Err(EngineError::user(format!(
                "{MIN_DELTAS_FOR_SNAPSHOT_CONF}=0 (no state snapshots) cannot be used with a \
                 checkpoint in object storage: the state is restored from its snapshots there"
            )));
        }
        for (i, _name) in plan.state_operators() {
            check_state_fingerprint(
                &checkpoint,
                i,
                &plan.state_fingerprint(i)?,
                &plan.legacy_state_fingerprint(i)?,
            )?;
        }
        let state = if plan.stateful {
            QueryState::open_for_query(
                &plan,
                &session.state_provider()?,
                &checkpoint,
                store_options,
                session.conf(SHUFFLE_PARTITIONS_CONF).as_deref(),
                session.conf(STATE_THREADS_CONF).as_deref(),
            )?
        } else {
            QueryState::none()
        };
        let late = match self.late_data.take() {
            None => None,
            Some((format, options)) => {
                let Some(schema) = plan.late_rows_schema() else {
                    return Err(EngineError::user(
                        "a late-data sink needs a watermarked window aggregation: only it drops late rows",
                    ));
                };
                Some(self.side_sink(&session, &checkpoint, "late", format, options, schema)?)
            }
        };
        let checks = checks.map(|c| c.named_if_unnamed(checkpoint.query_id()));
        let quarantine = match self.quarantine.take() {
            None => None,
            Some((format, options)) => {
                let schema = Arc::clone(&plan.output_schema);
                Some(self.side_sink(
                    &session,
                    &checkpoint,
                    "quarantine",
                    format,
                    options,
                    schema,
                )?)
            }
        };
        let side = SideOutputs {
            late,
            checks,
            quarantine,
        };
        let shared = QueryShared::new(
            checkpoint.query_id().to_string(),
            self.query_name.clone(),
            guarantee,
        );

        let mut sources = Vec::new();
        for (i, t) in plan.sources.iter().enumerate() {
            let f = session.registry().source(&t.spec.format)?;
            let ctx = SourceContext {
                query_id: shared.id.clone(),
                index: i,
                checkpoint_dir: checkpoint.source_dir(i)?,
            };
            sources.push(f.create(&t.spec, Arc::clone(&t.schema), &ctx)?);
        }
        // sources that can skip decoding the columns the query never reads do so
        for (i, s) in sources.iter_mut().enumerate() {
            if let Some(cols) = plan.source_columns(i) {
                if cols.len() < s.schema().fields().len() && s.project(&cols)? {
                    plan.source_projected(i, &cols)?;
                }
            }
        }
        let sink: Box<dyn Sink> = match (factory, self.foreach.take()) {
            (_, Some(f)) => Box::new(ForeachBatchSink { f }),
            (Some(factory), None) => factory.create(
                &spec,
                &SinkContext {
                    query_id: shared.id.clone(),
                    query_name: self.query_name.clone(),
                    schema: Arc::clone(&plan.output_schema),
                    key_columns: plan.key_columns.clone(),
                    checkpoint_dir: checkpoint.root().to_path_buf(),
                    session: session.context().clone(),
                    task,
                },
            )?,
            (None, None) => return Err(EngineError::bug("no sink factory")),
        };

        let progress_log = match &self.progress_log {
            Some(p) => Some({
                if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
                }

                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| EngineError::io(p, e))?
            }),
            None => None,
        };

        let exec = Execution::new(
            Arc::clone(&shared),
            plan,
            state,
            sources,
            sink,
            checkpoint,
            self.trigger,
            clock,
            session.listeners(),
            progress_log,
            retry,
            side,
            watermark_policy,
            store_options.min_batches_to_retain,
        );
        Ok(PreparedQuery {
            exec,
            shared,
            session,
        })
    }

    /// What `prepare` and `validate` both check; touches nothing on disk.
    fn checked(&mut self) -> Result<Checked> {
        let session = self.df.session().clone();
        let clock = BatchClock::new();
        let plan = StreamPlan::build(
            self.df.logical_plan(),
            &session.context().state(),
            &clock,
            self.output_mode,
            self.late_data.is_some(),
        )?;

        let checks = Checks::plan(
            self.df.expectations(),
            &plan.output_schema,
            &session.context().state(),
            self.query_name.as_deref().unwrap_or_default(),
        )?;
        if self.quarantine.is_some() && !checks.as_ref().is_some_and(|c| c.drops()) {
            return Err(EngineError::user(
                "a quarantine sink receives the rows expect_or_drop expectations remove, and this \
                 query has none (on_violation = \"drop\")",
            ));
        }
        if self.output_mode == OutputMode::Complete && !plan.stateful {
            return Err(EngineError::user(
                "Complete output mode not supported when there are no streaming aggregations on streaming DataFrames; use append (or update)",
            ));
        }

        if let Some(v) = self.options.remove("checkpointLocation") {
            self.checkpoint.get_or_insert(PathBuf::from(v));
        }
        if let Some(v) = self.options.remove("queryName") {
            self.query_name.get_or_insert(v);
        }
        // the query's one retry policy: session settings, then the writer's options
        let mut retry = RetryPolicy::default();
        let conf_duration = |key: &str| -> Result<Option<std::time::Duration>> {
            session
                .conf(key)
                .map(|v| {
                    crate::options::parse_duration(&v)
                        .map_err(|e| EngineError::user(format!("{key}: {e}")))
                })
                .transpose()
        };
        if let Some(d) = conf_duration(INITIAL_BACKOFF_CONF)? {
            retry.initial_backoff = d;
        }
        if let Some(d) = conf_duration(MAX_BACKOFF_CONF)? {
            retry.max_backoff = d;
        }
        if let Some(v) = session.conf(MAX_RETRIES_CONF) {
            retry.max_retries = Some(v.trim().parse().map_err(|_| {
                EngineError::user(format!(
                    "{MAX_RETRIES_CONF} must be a whole number, got '{v}'"
                ))
            })?);
        }
        if let Some(n) = self.options.get_u64("sinkMaxRetries")? {
            retry.max_retries = Some(
                u32::try_from(n)
                    .map_err(|_| EngineError::user(format!("sinkMaxRetries {n} is too large")))?,
            );
        }
        if let Some(d) = self.options.get_duration("sinkRetryBackoff")? {
            retry.initial_backoff = d;
        }
        if retry.max_backoff < retry.initial_backoff {
            retry.max_backoff = retry.initial_backoff;
        }
        // Spark's retention settings: writer option, else the session's spark.sql.streaming.*
        let setting = |opt: &str, conf: &str| -> Result<Option<u64>> {
            match self.options.get_u64(opt)? {
                Some(v) => Ok(Some(v)),
                None => session
                    .conf(conf)
                    .map(|v| {
                        v.trim().parse::<u64>().map_err(|_| {
                            EngineError::user(format!("{conf} must be a number, got '{v}'"))
                        })
                    })
                    .transpose(),
            }
        };
        let mut store_options = StoreOptions::default();
        if let Some(n) = setting("minBatchesToRetain", MIN_BATCHES_TO_RETAIN_CONF)? {
            if n == 0 {
                return Err(EngineError::user("minBatchesToRetain must be at least 1"));
            }
            store_options.min_batches_to_retain = n;
        }
        if let Some(n) = setting("minDeltasForSnapshot", MIN_DELTAS_FOR_SNAPSHOT_CONF)? {
            store_options.snapshot_interval = n;
        }
        let watermark_policy = match self
            .options
            .get("multipleWatermarkPolicy")
            .map(str::to_string)
            .or_else(|| session.conf(POLICY_CONF))
        {
            Some(p) => WatermarkPolicy::parse(&p)?,
            None => WatermarkPolicy::default(),
        };
        for k in ENGINE_OPTIONS {
            self.options.remove(k);
        }

        let format = self.format.clone().ok_or_else(|| {
            EngineError::user("no sink: call format(..) or foreach_batch(..) before start()")
        })?;
        let (factory, needs_checkpoint) = if self.foreach.is_some() {
            if let Some((k, _)) = self.options.iter().next() {
                return Err(EngineError::user(format!(
                    "unknown option '{k}' for foreach_batch; it takes none"
                )));
            }
            (None, false)
        } else {
            let f = session.registry().sink(&format)?;
            let modes = f.supported_modes(&format);
            if !modes.contains(&self.output_mode) {
                return Err(EngineError::user(format!(
                    "the {format} sink does not support output mode {}; it supports: {}",
                    self.output_mode,
                    modes
                        .iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let needs = f.requires_checkpoint(&format);
            (Some(f), needs)
        };
        let spec = SinkSpec {
            format: format.clone(),
            options: self
                .options
                .clone()
                .with_storage_defaults(&session.storage_options()),
            output_mode: self.output_mode,
        };
        if let Some(f) = &factory {
            f.validate(&spec)?;
        }
        let mut sources = Vec::new();
        for t in &plan.sources {
            let replayable = session
                .registry()
                .source(&t.spec.format)?
                .replayable(&t.spec);
            sources.push((t.spec.format.as_str(), replayable));
        }
        let sink_exactly_once = factory.as_ref().is_some_and(|f| f.exactly_once(&spec));
        let mut guarantee =
            crate::exec::guarantee::of_query(&sources, (&format, sink_exactly_once));
        // a side sink that writes a re-run batch again makes the query's output so too
        for (role, (side_format, side_options)) in self.side_sinks() {
            let side_spec = SinkSpec {
                format: side_format.clone(),
                options: side_options.clone(),
                output_mode: OutputMode::Append,
            };
            let side_exactly_once = session
                .registry()
                .sink(side_format)
                .is_ok_and(|f| f.exactly_once(&side_spec));
            if !side_exactly_once {
                let why = format!("the {side_format} {role} sink writes a re-run batch again");
                guarantee = match guarantee {
                    (crate::exec::guarantee::Guarantee::ExactlyOnce, _) => {
                        (crate::exec::guarantee::Guarantee::AtLeastOnce, why)
                    }
                    (g, before) => (g, format!("{before}; {why}")),
                };
            }
        }

        let checkpoint_dir = match &self.checkpoint {
            Some(d) => d.clone(),
            None if !needs_checkpoint => {
                std::env::temp_dir().join(format!("sluice-temporary-{}", uuid::Uuid::new_v4()))
            }
            None => {
                return Err(EngineError::user(format!(
                "checkpointLocation must be set for the {format} sink (checkpoint_location(dir))"
            )))
            }
        };
        Ok(Checked {
            checks,
            session,
            clock,
            plan,
            retry,
            store_options,
            watermark_policy,
            factory,
            spec,
            checkpoint_dir,
            guarantee,
        })
    }
}

/// What a query run as a task of a group needs: a sink that fences tasks, and no side sinks
/// (they could not refuse a zombie's writes).
fn task_check(
    w: &DataStreamWriter,
    factory: Option<&dyn crate::connector::SinkFactory>,
    spec: &SinkSpec,
) -> Result<()> {
    let fences = factory.is_some_and(|f| f.fences_tasks(spec)) && w.foreach.is_none();
    if !fences {
        return Err(EngineError::user(format!(
            "the {} sink cannot run as a task of a group: it cannot refuse the writes of a \
             process that lost its task (a zombie). Sinks that can: jdbc, delta",
            spec.format
        )));
    }
    if spec.output_mode == OutputMode::Complete {
        return Err(EngineError::user(
            "a query run as tasks of a group cannot use complete mode: each task holds the \
             groups of its partitions only, and a complete write would replace the other \
             tasks' rows; use update mode",
        ));
    }
    if w.late_data.is_some() || w.quarantine.is_some() {
        return Err(EngineError::user(
            "a query run as tasks of a group cannot have a late-data or quarantine sink yet \
             (they could not refuse a zombie's writes)",
        ));
    }
    Ok(())
}

/// The checked parts of a query, before anything is opened.
struct Checked {
    session: crate::Session,
    clock: BatchClock,
    plan: StreamPlan,
    retry: RetryPolicy,
    store_options: StoreOptions,
    watermark_policy: WatermarkPolicy,
    factory: Option<Arc<dyn crate::connector::SinkFactory>>,
    spec: SinkSpec,
    checkpoint_dir: PathBuf,
    /// The delivery guarantee, and why.
    guarantee: (Guarantee, String),
    /// The expectations, planned against the written rows.
    checks: Option<Checks>,
}

/// A query checked and opened but not running yet ([`DataStreamWriter::prepare`]).
pub struct PreparedQuery {
    exec: Execution,
    shared: Arc<QueryShared>,
    session: crate::Session,
}

impl PreparedQuery {
    /// The stable query id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Starts the query on its own thread.
    pub fn launch(self) -> Result<StreamingQuery> {
        let query = StreamingQuery {
            shared: Arc::clone(&self.shared),
            thread: Arc::new(Mutex::new(None)),
        };
        self.session.add_query(query.clone())?;
        let name = self.shared.name.clone().unwrap_or_else(|| "query".into());
        let exec = self.exec;
        let handle = std::thread::Builder::new()
            .name(format!("sluice-{name}"))
            .spawn(move || exec.run_to_end())
            .map_err(|e| EngineError::external(format!("cannot start the query thread: {e}")))?;
        *query.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(query)
    }
}

struct ForeachBatchSink {
    f: ForeachBatchFn,
}

impl Sink for ForeachBatchSink {
    fn description(&self) -> String {
        "ForeachBatchSink".into()
    }
    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        (self.f)(batch_id, batches)
    }
}

/// A side sink's format (lower case) and options, as the builder methods take them.
fn side_sink_spec<K: AsRef<str>, V: ToString>(
    format: &str,
    options: impl IntoIterator<Item = (K, V)>,
) -> (String, Options) {
    let mut o = Options::new();
    for (k, v) in options {
        o.set(k.as_ref(), v.to_string());
    }
    (format.to_ascii_lowercase(), o)
}
