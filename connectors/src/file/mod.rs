//! The file-directory source: new files in a directory (or matching a glob) become micro-batches.
//!
//! Each batch's files are recorded in the source's own log in the checkpoint
//! (`sources/<i>/<n>`: the files of entry n); the offset is `{"logOffset": n}`. A file is taken
//! once: files in any log entry are "seen". New files are taken in (modification time, path)
//! order (newest first with `latestFirst`), bounded by `maxFilesPerTrigger`/`maxBytesPerTrigger`.
//! Names starting with `_` or `.` are ignored (writers rename finished files into place). The
//! directory is watched with inotify (or polled, `watchMode = poll`), so an idle query sleeps
//! and a new file starts a batch within milliseconds.
//!
//! - `settings.rs`: options (Spark's names), formats, `cleanSource`, the factory.
//! - `listing.rs`: where to look (a directory or a glob) and what a listing finds.
//! - `arrival.rs`: when a listed file is ready to take (written in place, recorded sizes).
//! - `pool.rs`: parser threads that read and decode a batch's files ahead of time.
//! - `autoloader/`: `format("cloudFiles")`, Databricks' Auto Loader over this source.
//! - here: the source log, planning batches and the `Source` contract.

mod arrival;
mod autoloader;
mod listing;
mod pool;
mod settings;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use notify::Watcher;
use sluice_engine::connector::storage::VersionedLog;
use sluice_engine::{EngineError, Notifier, Offset, Options, ReadLimit, Result, Source};

use crate::formats::{self, csv::CsvOptions, ParseSettings};

pub use autoloader::CloudFilesFactory;
pub use listing::FileEntry;
use listing::*;
pub use settings::FileSourceFactory;
use settings::*;

/// A queue of a bucket's event notifications (Auto Loader's file-notification mode): how the
/// file source learns of new objects without listing.
///
/// Called on the query's thread: `poll` when the source looks for new files (instead of a
/// listing, after the one at start-up), `committed` after each batch's commit. Across a crash:
/// an announcement may come again (the source log decides what was read), and none may be
/// dropped before `committed` says its object was taken.
pub trait ObjectNotifications: Send {
    /// Every object announced and not yet reported taken. `url_of(bucket, key)` is the URL of
    /// an object this source reads (`None`: not one of its objects).
    fn poll(&mut self, url_of: &dyn Fn(&str, &str) -> Option<String>) -> Result<Vec<FileEntry>>;
    /// After a commit: `taken(url)` tells whether an object is in the source log; the
    /// announcements of those can go.
    fn committed(&mut self, taken: &dyn Fn(&str) -> bool) -> Result<()>;
}

/// The progress metric (`sources[].metrics`) of the malformed records of a batch.
pub const MALFORMED_METRIC: &str = "numMalformedRecords";

fn log_offset(o: Option<&Offset>) -> Result<Option<u64>> {
    match o {
        None => Ok(None),
        Some(v) => v
            .get("logOffset")
            .and_then(|x| x.as_u64())
            .map(Some)
            .ok_or_else(|| EngineError::user(format!("not a file source offset: {v}"))),
    }
}

/// Parses files of one format into the stream's schema (shared by parser threads).
#[derive(Clone)]
struct FileReader {
    format: FileFormat,
    schema: SchemaRef,
    parse: Option<ParseSettings>,
    csv: Option<CsvOptions>,
    /// The source's options (the parse settings are rebuilt from them for a projection).
    options: Options,
    /// `ignoreMissingFiles`: a file deleted after it was taken is skipped with a warning.
    ignore_missing: bool,
    /// Auto Loader (`format("cloudFiles")`): columns by name, rescued data, new columns.
    auto: Option<Arc<autoloader::AutoRead>>,
    /// The object store the files are in (`None`: local files).
    bucket: Option<Arc<sluice_engine::connector::storage::Location>>,
}

/// Batches with at least this many bytes of input are parsed on all cores (smaller ones on the
/// query's thread: no thread is started for a low-latency batch).
const PARALLEL_PARSE_BYTES: u64 = 4 << 20;

thread_local! {
    /// The bytes of the file being parsed (reused by each parser thread).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer larger than this is not kept for the next file.
const MAX_KEPT_READ_BUFFER: usize = 64 << 20;

/// How many batches' files are parsed ahead when a backlog is waiting.
const LOOK_AHEAD_BATCHES: usize = 2;

/// A running file source.
pub struct FileSource {
    description: String,
    reader: Arc<FileReader>,
    /// Parser threads, started by the first batch big enough to be worth them.
    pool: Option<pool::ParsePool>,
    /// The files `latest_offset` expects the next batches after the one it planned to hold.
    next_files: Vec<FileEntry>,
    schema: SchemaRef,
    loc: Location,
    log: VersionedLog<Vec<FileEntry>>,
    latest_log: Option<u64>,
    seen: HashSet<String>,
    max_mtime: i64,
    max_files: Option<usize>,
    max_bytes: Option<u64>,
    latest_first: bool,
    max_file_age: Option<Duration>,
    file_name_only: bool,
    clean: CleanSource,
    cleaned_upto: Option<u64>,
    available_now: Option<HashSet<String>>,
    watch_poll: Option<Duration>,
    watcher: Option<Box<dyn Watcher + Send>>,
    /// How new files are learnt of once watching: `inotify`, or `poll` (asked for, or the
    /// fallback when inotify cannot watch); reported in progress as `metrics.watch`.
    watch_kind: Option<&'static str>,
    backlog: u64,
    /// `minFileAge` as given (the default depends on whether the query waits for arrivals).
    min_file_age: Option<Duration>,
    /// Files the watcher saw completed (closed after writing, renamed into place).
    completed: arrival::Completed,
    /// Files named in a warning for being modified after they were taken.
    warned_modified: HashSet<String>,
    /// Whether the last listing left files for later (still settling).
    settling: std::sync::atomic::AtomicBool,
    /// The timer that wakes the query when a file left for later is due.
    wakeup: arrival::Wakeup,
    /// Set by `watch`: the query waits for files to arrive.
    notifier: Option<Notifier>,
    /// Malformed records in the files of the last batch read.
    malformed: u64,
    /// The timer that lists a bucket again (object storage has no inotify).
    lister: Option<crate::util::Ticker>,
    /// File-notification mode: the bucket's event queue (listed once, at start-up).
    notifications: Option<std::sync::Mutex<Box<dyn ObjectNotifications>>>,
    /// Whether the start-up listing of notification mode is done.
    listed_once: std::sync::atomic::AtomicBool,
}

/// One file parsed: its rows and how many of its records were malformed.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    batches: Vec<RecordBatch>,
    malformed: u64,
    /// Auto Loader: columns the file has that the schema lacks.
    new_columns: Vec<autoloader::NewColumn>,
}

impl FileReader {
    fn read_file(&self, f: &FileEntry) -> Result<Parsed> {
        formats::take_malformed(); // this thread's count starts at this file
        let read = self.read_batches(f)?;
        Ok(Parsed {
            batches: read.batches,
            malformed: formats::take_malformed(),
            new_columns: read.new_columns,
        })
    }

    fn read_batches(&self, f: &FileEntry) -> Result<autoloader::Read> {
        let path = Path::new(&f.path);
        let plain = |batches| autoloader::Read {
            batches,
            new_columns: Vec::new(),
        };
        if self.format == FileFormat::Parquet {
            let mut bytes = Vec::new();
            if !arrival::read_recorded(
                f,
                &mut bytes,
                false,
                self.ignore_missing,
                self.bucket.as_deref(),
            )? {
                return Ok(plain(Vec::new()));
            }
            return match &self.auto {
                Some(auto) => {
                    let own = formats::parquet::read_own(path, bytes)?;
                    auto.conform(path, &own, self.settings()?)
                }
                None => formats::parquet::read(path, bytes, &self.schema).map(plain),
            };
        }
        // text formats are decoded from a buffer each parser thread reuses (no fresh pages to
        // fault in for every file)
        READ_BUF.with(|cell| {
            let mut bytes = cell.borrow_mut();
            if !arrival::read_recorded(
                f,
                &mut bytes,
                true,
                self.ignore_missing,
                self.bucket.as_deref(),
            )? {
                return Ok(plain(Vec::new()));
            }
            let csv = || {
                self.csv
                    .as_ref()
                    .ok_or_else(|| EngineError::bug("csv options missing"))
            };
            let out = match (self.format, &self.auto) {
                (FileFormat::Json, Some(auto)) => auto.read_json(path, &bytes, self.settings()?),
                (FileFormat::Csv, Some(auto)) => {
                    let own = formats::csv::read_as_text(path, &bytes, csv()?)?;
                    auto.conform(path, &[own], self.settings()?)
                }
                (FileFormat::Json, None) => {
                    formats::json::read(path, &bytes, self.settings()?).map(plain)
                }
                (FileFormat::Csv, None) => {
                    formats::csv::read(path, &bytes, self.settings()?, csv()?).map(plain)
                }
                (FileFormat::Parquet | FileFormat::Text, _) => {
                    formats::text::read(&bytes, &self.schema).map(plain)
                }
            };
            if bytes.capacity() > MAX_KEPT_READ_BUFFER {
                *bytes = Vec::new();
            }
            out
        })
    }

    fn settings(&self) -> Result<&ParseSettings> {
        self.parse
            .as_ref()
            .ok_or_else(|| EngineError::bug("parse settings missing"))
    }
}

impl FileSource {
    /// The objects the notification queue announced (plus, the first time, a listing).
    fn announced(
        &self,
        queue: &std::sync::Mutex<Box<dyn ObjectNotifications>>,
    ) -> Result<Vec<FileEntry>> {
        let bucket = self
            .loc
            .bucket
            .as_ref()
            .ok_or_else(|| EngineError::bug("notifications without a bucket"))?;
        let mut files = queue
            .lock()
            .map_err(|_| EngineError::bug("the notification queue's lock was poisoned"))?
            .poll(&|b, key| {
                let url = bucket.url_of_key(key);
                (b == bucket.bucket() && self.loc.admits(&url)).then_some(url)
            })?;
        if !self
            .listed_once
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let mut have: HashSet<String> = files.iter().map(|f| f.path.clone()).collect();
            for f in self.loc.list()? {
                if have.insert(f.path.clone()) {
                    files.push(f);
                }
            }
        }
        Ok(files)
    }

    fn new_files(&self) -> Result<Vec<FileEntry>> {
        let listed = match &self.notifications {
            Some(queue) => self.announced(queue)?,
            None => self.loc.list()?,
        };
        let mut files: Vec<FileEntry> = listed
            .into_iter()
            .filter(|f| !self.seen.contains(&key(&f.path, self.file_name_only)))
            .filter(|f| match &self.available_now {
                Some(set) => set.contains(&f.path),
                None => true,
            })
            .collect();
        if let Some(age) = self.max_file_age {
            let newest = files
                .iter()
                .map(|f| f.mtime_ms)
                .max()
                .unwrap_or(i64::MIN)
                .max(self.max_mtime);
            let cutoff = newest.saturating_sub(age.as_millis() as i64);
            files.retain(|f| f.mtime_ms >= cutoff);
        }
        // files still being written wait (a query waiting for arrivals only)
        let min_age = self.min_file_age.unwrap_or(if self.notifier.is_some() {
            arrival::DEFAULT_MIN_FILE_AGE
        } else {
            Duration::ZERO
        });
        // an object appears whole when its upload ends: nothing to settle in a bucket
        if self.loc.bucket.is_none()
            && (!min_age.is_zero() || self.reader.format == FileFormat::Parquet)
        {
            let (ready, due) = arrival::split_ready(
                files,
                &self.completed,
                min_age,
                self.reader.format == FileFormat::Parquet,
            );
            if let (Some(due), Some(n)) = (due, &self.notifier) {
                self.wakeup.at(due, n);
            }
            self.settling
                .store(due.is_some(), std::sync::atomic::Ordering::Relaxed);
            files = ready;
        }
        files.sort_by(|a, b| (a.mtime_ms, &a.path).cmp(&(b.mtime_ms, &b.path)));
        if self.latest_first {
            files.reverse();
        }
        Ok(files)
    }

    fn clean_entry(&self, id: u64) -> Result<()> {
        let files = self.log.get(id)?.unwrap_or_default();
        if let Some(b) = &self.loc.bucket {
            if self.clean == CleanSource::Delete {
                for f in files {
                    if let Some(key) = b.key_of_url(&f.path) {
                        b.delete_key(&key)?;
                    }
                }
            }
            return Ok(());
        }
        for f in files {
            let p = Path::new(&f.path);
            let res = match &self.clean {
                CleanSource::Off => return Ok(()),
                CleanSource::Delete => std::fs::remove_file(p),
                CleanSource::Archive(dir) => {
                    let rel = p.strip_prefix("/").unwrap_or(p);
                    let target = dir.join(rel);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
                    }
                    std::fs::rename(p, &target)
                }
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // done before a restart
                Err(e) => return Err(EngineError::io(p, e)),
            }
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let start = log_offset(start)?;
        let next = start.map_or(0, |s| s + 1);
        // An entry planned before a crash but never put in the offsets log: offer it again,
        // unchanged, so the batch holds exactly the files it would have held.
        if self.latest_log.is_some_and(|l| l >= next) {
            return Ok(Some(serde_json::json!({ "logOffset": next })));
        }
        // files written after they were taken: their new content is never read; say so once
        for p in self.completed.take_written() {
            let k = key(&p.to_string_lossy(), self.file_name_only);
            if self.seen.contains(&k) && self.warned_modified.insert(k) {
                tracing::warn!(
                    "input file {} was modified after it was taken into a batch: a file is taken \
                     once, what was written to it since is not read. Write new files (write, \
                     then rename them into the directory) instead of appending",
                    p.display()
                );
            }
        }
        let files = self.new_files()?;
        let mut take = Vec::new();
        let mut bytes = 0u64;
        for f in files.iter() {
            if limit == ReadLimit::Configured {
                if self.max_files.is_some_and(|m| take.len() >= m) {
                    break;
                }
                if self
                    .max_bytes
                    .is_some_and(|m| !take.is_empty() && bytes + f.size > m)
                {
                    break;
                }
            }
            bytes += f.size;
            take.push(f.clone());
        }
        self.backlog = (files.len() - take.len()) as u64;
        if take.is_empty() {
            return Ok(None);
        }
        // what the two batches after this one will most likely hold (the same limits): parsed
        // ahead while this one runs
        self.next_files.clear();
        if limit == ReadLimit::Configured {
            let mut rest = files.iter().skip(take.len()).peekable();
            for _ in 0..LOOK_AHEAD_BATCHES {
                let (mut n, mut bytes) = (0usize, 0u64);
                while let Some(f) = rest.peek() {
                    if self.max_files.is_some_and(|m| n >= m)
                        || self.max_bytes.is_some_and(|m| n > 0 && bytes + f.size > m)
                    {
                        break;
                    }
                    n += 1;
                    bytes += f.size;
                    self.next_files.push((*f).clone());
                    rest.next();
                }
            }
        }
        self.log.add(next, &take)?;
        for f in &take {
            self.max_mtime = self.max_mtime.max(f.mtime_ms);
            self.seen.insert(key(&f.path, self.file_name_only));
            self.completed.forget(Path::new(&f.path));
        }
        self.latest_log = Some(next);
        Ok(Some(serde_json::json!({ "logOffset": next })))
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = log_offset(start)?.map_or(0, |s| s + 1);
        let to = log_offset(Some(end))?.unwrap_or(0);
        let mut files = Vec::new();
        for id in from..=to {
            let entry = self.log.get(id)?.ok_or_else(|| {
                EngineError::user(format!(
                    "the file source log entry {id} is missing from {}: the checkpoint is damaged",
                    self.log.dir().display()
                ))
            })?;
            for f in &entry {
                // a re-run after a restart must know these files too
                self.seen.insert(key(&f.path, self.file_name_only));
            }
            files.extend(entry);
        }
        // parse the files on all cores (those parsed ahead while the previous batch ran are
        // ready), keeping their order; a small batch is parsed on the query's thread
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        let next_bytes: u64 = self.next_files.iter().map(|f| f.size).sum();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let worth_threads =
            threads > 1 && (bytes >= PARALLEL_PARSE_BYTES || next_bytes >= PARALLEL_PARSE_BYTES);
        if self.pool.is_none() && worth_threads {
            self.pool = Some(pool::ParsePool::new(Arc::clone(&self.reader), threads));
        }
        let parsed = match &self.pool {
            Some(p) => p.get(&files)?,
            None => files
                .iter()
                .map(|f| self.reader.read_file(f))
                .collect::<Result<Vec<_>>>()?,
        };
        self.malformed = parsed.iter().map(|p| p.malformed).sum();
        if let Some(auto) = &self.reader.auto {
            // before any row goes on: new columns may stop the query (addNewColumns)
            let new: Vec<_> = parsed
                .iter()
                .flat_map(|p| p.new_columns.iter().cloned())
                .collect();
            auto.check_new_columns(&new)?;
        }
        if let Some(p) = &self.pool {
            if next_bytes >= PARALLEL_PARSE_BYTES {
                p.look_ahead(&self.next_files);
            } else {
                p.look_ahead(&[]);
            }
        }
        Ok(parsed.into_iter().flat_map(|p| p.batches).collect())
    }

    fn project(&mut self, columns: &[usize]) -> Result<bool> {
        // JSON decodes only the projected fields (the others are skipped on the tape) and
        // Parquet aligns its columns by name; CSV is positional and text has one column
        // (Auto Loader reads every column: what the schema lacks is rescued or evolves it)
        if !matches!(self.reader.format, FileFormat::Json | FileFormat::Parquet)
            || self.reader.auto.is_some()
        {
            return Ok(false);
        }
        let schema = Arc::new(self.schema.project(columns)?);
        let reader = Arc::make_mut(&mut self.reader);
        if reader.format == FileFormat::Json {
            reader.parse = Some(ParseSettings::new(Arc::clone(&schema), &reader.options)?);
        }
        reader.schema = schema;
        Ok(true)
    }

    fn commit(&mut self, end: &Offset) -> Result<()> {
        if let Some(queue) = &self.notifications {
            let (seen, name_only) = (&self.seen, self.file_name_only);
            queue
                .lock()
                .map_err(|_| EngineError::bug("the notification queue's lock was poisoned"))?
                .committed(&|url| seen.contains(&key(url, name_only)))?;
        }
        if self.clean == CleanSource::Off {
            return Ok(());
        }
        let Some(to) = log_offset(Some(end))? else {
            return Ok(());
        };
        let from = self.cleaned_upto.map_or(to, |c| c + 1);
        for id in from..=to {
            self.clean_entry(id)?;
        }
        self.cleaned_upto = Some(to);
        Ok(())
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        let now: HashSet<String> = self.new_files()?.into_iter().map(|f| f.path).collect();
        self.available_now = Some(now);
        Ok(())
    }

    fn watch(&mut self, notifier: Notifier) -> Result<bool> {
        self.notifier = Some(notifier.clone());
        if self.loc.bucket.is_some() {
            // a bucket is listed every poll interval (Auto Loader's directory listing mode)
            let every = self.watch_poll.unwrap_or(Duration::from_secs(1));
            self.watch_kind = Some(if self.notifications.is_some() {
                "notifications"
            } else {
                "listing"
            });
            self.lister = Some(crate::util::Ticker::start(every, notifier));
            return Ok(true);
        }
        let n2 = notifier.clone();
        let completed = self.completed.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            if let Ok(e) = res {
                completed.observe(&e);
                if crate::util::may_mean_new_file(&e.kind) {
                    n2.notify();
                }
            }
        };
        let mode = if self.loc.pattern.is_some() {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        self.watch_kind = Some(if self.watch_poll.is_some() {
            "poll"
        } else {
            "inotify"
        });
        let mut watcher: Box<dyn Watcher + Send> = match self.watch_poll {
            None => match notify::recommended_watcher(handler) {
                Ok(w) => Box::new(w),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {} ({e}); polling every second",
                        self.loc.base.display()
                    );
                    self.watch_kind = Some("poll");
                    let n3 = notifier.clone();
                    Box::new(
                        notify::PollWatcher::new(
                            move |r: notify::Result<notify::Event>| {
                                if r.is_ok() {
                                    n3.notify()
                                }
                            },
                            notify::Config::default().with_poll_interval(Duration::from_secs(1)),
                        )
                        .map_err(|e| EngineError::external(format!("cannot poll: {e}")))?,
                    )
                }
            },
            Some(iv) => Box::new(
                notify::PollWatcher::new(handler, notify::Config::default().with_poll_interval(iv))
                    .map_err(|e| EngineError::external(format!("cannot poll: {e}")))?,
            ),
        };
        watcher.watch(&self.loc.base, mode).map_err(|e| {
            EngineError::external(format!("cannot watch {}: {e}", self.loc.base.display()))
        })?;
        self.watcher = Some(watcher);
        Ok(true)
    }

    fn backlog(&self) -> Option<u64> {
        Some(self.backlog)
    }

    fn settling(&self) -> bool {
        self.settling.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn metrics(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        if let Some(k) = self.watch_kind {
            m.insert("watch".to_string(), k.to_string());
        }
        m.insert(MALFORMED_METRIC.to_string(), self.malformed.to_string());
        m
    }
}

#[cfg(test)]
mod tests;
