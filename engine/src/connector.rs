//! The contracts between the engine and its connectors: [`Source`], [`Sink`], their factories,
//! and the [`ConnectorRegistry`] a session looks formats up in.
//!
//! Offsets are opaque JSON values owned by each source; the engine stores them in the offsets
//! log and hands them back unchanged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{EngineError, Result};
use crate::options::Options;

/// A source offset: JSON chosen by the source (e.g. `{"logOffset": 4}`).
pub type Offset = serde_json::Value;

/// How much a source may offer in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadLimit {
    /// Everything available (`Trigger::Once`).
    All,
    /// The source's own rate limits (`maxFilesPerTrigger`, `maxBytesPerTrigger`, ...).
    Configured,
}

/// Wakes a waiting query: sources call [`Notifier::notify`] when new data may be available
/// (a file renamed into a watched directory, records arriving), `stop()` calls it too.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Notifier {
    /// A new notifier with no pending signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Signals the waiter (a signal given while nobody waits is kept until the next wait).
    pub fn notify(&self) {
        let (lock, cv) = &*self.inner;
        let mut pending = lock.lock().unwrap_or_else(|p| p.into_inner());
        *pending = true;
        cv.notify_all();
    }

    /// Waits for a signal, at most `timeout` (forever when `None`). Returns whether a signal came.
    /// Consumes the signal.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let (lock, cv) = &*self.inner;
        let mut pending = lock.lock().unwrap_or_else(|p| p.into_inner());
        match timeout {
            None => {
                while !*pending {
                    pending = cv.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
            }
            Some(t) => {
                let deadline = std::time::Instant::now() + t;
                while !*pending {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    pending = cv
                        .wait_timeout(pending, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        std::mem::take(&mut *pending)
    }

    /// Clears a pending signal without waiting.
    pub fn clear(&self) {
        let (lock, _) = &*self.inner;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }
}

/// What a user asked for with `read_stream()...load(path)`.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Format name (`json`, `csv`, `parquet`, `text`, ...).
    pub format: String,
    /// Path given to `load`, if any.
    pub path: Option<String>,
    /// User schema, if given.
    pub schema: Option<SchemaRef>,
    /// Options as written.
    pub options: Options,
    /// Only checking (`sluice validate`, session setting `sluice.validateOnly`): resolving the
    /// schema must create and change nothing (an Auto Loader infers its schema without
    /// keeping it).
    pub validate_only: bool,
}

/// Everything a source gets when its query starts.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The stable query id.
    pub query_id: String,
    /// Position of the source in the query.
    pub index: usize,
    /// Directory for the source's private logs in the checkpoint (exists).
    pub checkpoint_dir: PathBuf,
}

impl SourceContext {
    /// The source's private log in its checkpoint directory (numbered, versioned entries, never
    /// overwritten: the checkpoint's own format).
    pub fn log<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
    ) -> Result<storage::VersionedLog<T>> {
        Ok(storage::VersionedLog::open(&self.checkpoint_dir)?)
    }

    /// Where the source's file `name` lives in its checkpoint directory (written with
    /// [`storage::write_atomic`]).
    pub fn file(&self, name: &str) -> PathBuf {
        self.checkpoint_dir.join(name)
    }
}

/// The durable formats the engine hands connectors for what they keep (in the checkpoint, or
/// next to their output): versioned logs and atomic file writes. Connectors use these, never
/// the state crate itself, so what they write survives a crash as the engine's logs do.
pub mod storage {
    pub use sluice_state::atomic::write_atomic;
    pub use sluice_state::log::{parse_entry, VersionedLog};
    pub use sluice_state::remote::location::block_on;
    pub use sluice_state::remote::{is_remote, local_path, Location, StorageOptions};
}

/// A streaming source.
///
/// Called by the micro-batch executor, on the query's own thread, in this order per batch:
/// [`latest_offset`](Source::latest_offset) (only for new batches, never for a re-run),
/// [`get_batch`](Source::get_batch), and after the batch is committed,
/// [`commit`](Source::commit). What must hold:
/// - `get_batch(start, end)` returns the same rows every time it is called with the same offsets,
///   in this process or after a restart (that is what makes a re-run batch exact);
/// - `latest_offset` never returns an offset behind `start`, and returns `None` when it has
///   nothing new;
/// - `commit(end)` is called only when every batch up to `end` is in the commit log; it may
///   delete or archive input (`cleanSource`), never before.
pub trait Source: Send {
    /// Schema of the stream: every column, even after [`project`](Self::project) narrowed
    /// what the batches carry.
    fn schema(&self) -> SchemaRef;

    /// Short description for progress reports (e.g. `FileStreamSource[/data/in]`).
    fn description(&self) -> String;

    /// The end offset of the next batch, starting after `start` (`None` before the first batch),
    /// bounded by `limit`; `None` when nothing new is available.
    fn latest_offset(&mut self, start: Option<&Offset>, limit: ReadLimit)
        -> Result<Option<Offset>>;

    /// The rows after `start` up to and including `end`.
    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>>;

    /// Reads only `columns` (indices into [`schema`](Self::schema), ascending, not empty).
    /// Called by the executor once, before the first batch, with the columns the query uses. A
    /// source that can skip decoding the others returns `true`, and from then on every batch
    /// it returns has exactly those columns, in that order; one that cannot returns `false`
    /// and keeps returning every column.
    fn project(&mut self, _columns: &[usize]) -> Result<bool> {
        Ok(false)
    }

    /// Everything up to `end` is committed.
    fn commit(&mut self, _end: &Offset) -> Result<()> {
        Ok(())
    }

    /// `Trigger::AvailableNow`: fix the data available now as the target; later
    /// `latest_offset` calls must not go beyond it.
    fn prepare_for_available_now(&mut self) -> Result<()> {
        Ok(())
    }

    /// Event-driven triggers: call `notifier.notify()` whenever new data may be available.
    /// Sources that cannot watch leave this as is; the executor then polls at the trigger interval.
    fn watch(&mut self, _notifier: Notifier) -> Result<bool> {
        Ok(false)
    }

    /// How much input is still waiting after `end` (files, offsets), for progress; `None` if unknown.
    fn backlog(&self) -> Option<u64> {
        None
    }

    /// Whether the last `latest_offset` left out input that is there but not yet taken (a file
    /// still settling, younger than `minFileAge`): `processAllAvailable` waits for it.
    fn settling(&self) -> bool {
        false
    }

    /// Other figures for the progress report's `sources[].metrics` (Spark's map of strings),
    /// e.g. how the file source learns of new files (`watch` = `inotify` or `poll`).
    fn metrics(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// Creates sources of one or more formats.
pub trait SourceFactory: Send + Sync {
    /// Formats served (lower case), e.g. `["json", "csv"]`.
    fn formats(&self) -> Vec<&'static str>;

    /// Checks the options and returns the schema of the stream, at `load()` time (before any
    /// checkpoint is known). Errors are user errors naming the option, file or format.
    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef>;

    /// Whether reading the same offsets again gives the same rows, so that a batch re-run
    /// after a crash reads what the first attempt read. A source must claim it; the default
    /// is no.
    fn replayable(&self, _spec: &SourceSpec) -> bool {
        false
    }

    /// Checks that the external system is reachable, for `sluice validate`; never reads data.
    fn check_reachable(&self, _spec: &SourceSpec) -> Result<()> {
        Ok(())
    }

    /// Creates the source when the query starts.
    fn create(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>>;
}

/// Reads tables that are not streams (`session.read().format(..)`) for formats that have no
/// stream source (a database table, `jdbc`); formats with a source are read through it.
/// Called when a static DataFrame is loaded (`resolve_schema`) and at every refresh of a
/// stream-static join (`read`, on the query's thread); nothing is kept across a crash.
pub trait TableFactory: Send + Sync {
    /// Formats served (lower case).
    fn formats(&self) -> Vec<&'static str>;

    /// Checks the options and returns the table's schema (the given one, or the table's own).
    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef>;

    /// Reads the whole table as it is now, as `schema`'s columns.
    fn read(&self, spec: &SourceSpec, schema: &SchemaRef) -> Result<Vec<RecordBatch>>;
}

/// Output modes, with Spark's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Only new rows, each once.
    Append,
    /// Rows changed in this batch.
    Update,
    /// The whole result, every batch.
    Complete,
}

impl std::str::FromStr for OutputMode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "append" => Ok(OutputMode::Append),
            "update" => Ok(OutputMode::Update),
            "complete" => Ok(OutputMode::Complete),
            _ => Err(EngineError::user(format!(
                "unknown output mode '{s}'; use append, update or complete"
            ))),
        }
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        })
    }
}

/// What a user asked for with `write_stream()...`.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Format name (`console`, `memory`, `csv`, ...).
    pub format: String,
    /// Options as written (`path` among them for file sinks).
    pub options: Options,
    /// The output mode.
    pub output_mode: OutputMode,
}

/// A query run as one task of a group (`sluice run --group`): which task, and the lease
/// epoch this process holds on it. A sink that [fences tasks](SinkFactory::fences_tasks) refuses
/// every write once a newer epoch of the task has written (or claimed) its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task (the input partition).
    pub index: u32,
    /// The epoch this process holds.
    pub epoch: u64,
}

/// Everything a sink gets when its query starts.
#[derive(Clone)]
pub struct SinkContext {
    /// The stable query id.
    pub query_id: String,
    /// The query name, if any.
    pub query_name: Option<String>,
    /// Schema of the rows the sink receives.
    pub schema: SchemaRef,
    /// The columns of `schema` that identify a result row (an aggregation's grouping keys,
    /// window included), when the query has them: the default keys of upserting sinks.
    pub key_columns: Option<Vec<String>>,
    /// The query's checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// The session's DataFusion context (e.g. for the memory sink's table).
    pub session: datafusion::prelude::SessionContext,
    /// The task, when the query runs as one task of a group.
    pub task: Option<TaskInfo>,
}

/// A streaming sink.
///
/// Called by the executor on the query's thread, once per batch, after the batch's offsets are
/// in the offsets log and before its commit entry is written. What must hold:
/// - `add_batch` is idempotent per batch id: called again with a batch id it has already
///   written (a re-run after a crash), it must leave the output as if it had been called once;
///   a sink that cannot promise this says so in [`SinkFactory::exactly_once`];
/// - an error of kind External means "retry": the executor calls `add_batch` again with the same
///   batch and rows; an error of kind User fails the query.
pub trait Sink: Send {
    /// Short description for progress reports.
    fn description(&self) -> String;

    /// Writes the rows of batch `batch_id`.
    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()>;

    /// The query stops (cleanly or not); release resources.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Creates sinks of one or more formats.
pub trait SinkFactory: Send + Sync {
    /// Formats served (lower case).
    fn formats(&self) -> Vec<&'static str>;

    /// Output modes the sink supports.
    fn supported_modes(&self, format: &str) -> Vec<OutputMode>;

    /// Whether writing a batch id the sink already has leaves its output as if the batch were
    /// written once (and the output is durable): the query is then exactly-once, given
    /// replayable sources. A sink must claim it; the default is no.
    fn exactly_once(&self, _spec: &SinkSpec) -> bool {
        false
    }

    /// Whether the sink can run as a task of a group: its `create` claims the target for the
    /// context's [`TaskInfo::epoch`] (so a holder of an older epoch is refused from then on),
    /// and every write checks, in the same transaction, that no newer epoch claimed it. Such a
    /// refusal is an error for which [`EngineError::is_fenced`] holds.
    fn fences_tasks(&self, _spec: &SinkSpec) -> bool {
        false
    }

    /// Whether the sink needs an explicit checkpoint location (durable sinks do).
    fn requires_checkpoint(&self, _format: &str) -> bool {
        true
    }

    /// Checks the options (user errors name the option).
    fn validate(&self, spec: &SinkSpec) -> Result<()>;

    /// What [`SinkFactory::create`] would refuse about the rows `ctx` describes (partition or
    /// key columns missing, a column of the wrong type, keys needed by the mode), without any
    /// side effect: no connection, no file. Called by `create` implementations and by
    /// `sluice validate`.
    fn check(&self, _spec: &SinkSpec, _ctx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// For `sluice validate`: checks that the external system is reachable (connects, asks for
    /// metadata) and that an existing target fits the rows `ctx` describes (columns, the keys an
    /// upsert needs). Must not create or change anything. External errors say what could not
    /// be reached; a target that does not fit is the user's error.
    fn check_reachable(&self, _spec: &SinkSpec, _ctx: &SinkContext) -> Result<()> {
        Ok(())
    }

    /// Creates the sink when the query starts.
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>>;
}

/// Connectors known to a session, by format name.
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    sources: BTreeMap<String, Arc<dyn SourceFactory>>,
    sinks: BTreeMap<String, Arc<dyn SinkFactory>>,
    tables: BTreeMap<String, Arc<dyn TableFactory>>,
    /// Formats left out of this build, with the Cargo feature that brings them.
    missing: BTreeMap<String, String>,
}

impl ConnectorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source factory under its formats.
    pub fn add_source(&mut self, f: Arc<dyn SourceFactory>) {
        for fmt in f.formats() {
            self.sources.insert(fmt.to_string(), Arc::clone(&f));
        }
    }

    /// Registers a static-table reader under its formats.
    pub fn add_table(&mut self, f: Arc<dyn TableFactory>) {
        for fmt in f.formats() {
            self.tables.insert(fmt.to_string(), Arc::clone(&f));
        }
    }

    /// The static-table reader of `format`, if it has one of its own.
    pub fn table(&self, format: &str) -> Option<Arc<dyn TableFactory>> {
        self.tables.get(&format.to_ascii_lowercase()).cloned()
    }

    /// Registers a sink factory under its formats.
    pub fn add_sink(&mut self, f: Arc<dyn SinkFactory>) {
        for fmt in f.formats() {
            self.sinks.insert(fmt.to_string(), Arc::clone(&f));
        }
    }

    /// Records that `format` exists but was left out of this build (its Cargo `feature` is
    /// off), so that asking for it says how to get it.
    pub fn add_missing_feature(&mut self, format: &str, feature: &str) {
        if !self.sources.contains_key(format) && !self.sinks.contains_key(format) {
            self.missing.insert(format.to_string(), feature.to_string());
        }
    }

    /// The formats sources can be read from, sorted.
    pub fn source_formats(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// The formats sinks can write, sorted.
    pub fn sink_formats(&self) -> Vec<String> {
        self.sinks.keys().cloned().collect()
    }

    fn not_built(&self, kind: &str, format: &str) -> Option<EngineError> {
        self.missing
            .get(&format.to_ascii_lowercase())
            .map(|feature| {
                EngineError::user(format!(
                    "{kind} format '{format}' is not in this build of Sluice: it needs the Cargo \
                 feature `{feature}` of the `sluice` crate (on by default; this build was made \
                 without it)"
                ))
            })
    }

    /// The source factory for `format`, or a user error listing the known formats.
    pub fn source(&self, format: &str) -> Result<Arc<dyn SourceFactory>> {
        if let Some(f) = self.sources.get(&format.to_ascii_lowercase()) {
            return Ok(Arc::clone(f));
        }
        Err(self.not_built("source", format).unwrap_or_else(|| {
            EngineError::user(format!(
                "unknown source format '{format}'; available: {}",
                self.source_formats().join(", ")
            ))
        }))
    }

    /// The sink factory for `format`, or a user error listing the known formats.
    /// `foreach_batch` is not a format one can name: it takes a function
    /// ([`crate::DataStreamWriter::foreach_batch`]), so a pipeline file cannot use it.
    pub fn sink(&self, format: &str) -> Result<Arc<dyn SinkFactory>> {
        if let Some(f) = self.sinks.get(&format.to_ascii_lowercase()) {
            return Ok(Arc::clone(f));
        }
        if format.eq_ignore_ascii_case("foreach_batch")
            || format.eq_ignore_ascii_case("foreachBatch")
        {
            return Err(EngineError::user(format!(
                "sink format '{format}' takes a function, so it exists only in a program \
                 (`write_stream().foreach_batch(|batch_id, batches| ...)`), not as a format name \
                 nor in a pipeline file; sink formats: {}",
                self.sink_formats().join(", ")
            )));
        }
        Err(self.not_built("sink", format).unwrap_or_else(|| {
            EngineError::user(format!(
                "unknown sink format '{format}'; available: {} (and, in a program, \
                 foreach_batch(f))",
                self.sink_formats().join(", ")
            ))
        }))
    }
}
