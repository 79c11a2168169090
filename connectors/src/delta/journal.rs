//! The Delta sink's journal of data files: every Parquet file the sink's writes create (the
//! batch's own, a MERGE's rewrites, a compaction's) is recorded — the line written and synced —
//! before the file itself is written. A file of a batch that never committed (the process killed
//! between writing Parquet and committing) is therefore known, and removed when the batch runs
//! again; a plain Parquet reader of the directory never sees it. The journal is emptied once
//! the batch's commit is in the table (its files are then the table's).
//!
//! Only files under the table that are not in the `_delta_log` are recorded; every call is
//! passed to the store delta-rs would have used, unchanged.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use sluice_engine::{EngineError, Result};

/// The journal file: one store path per line.
#[derive(Debug)]
pub(super) struct Journal {
    file: PathBuf,
    lock: Mutex<()>,
    /// The batch being written (for the `mid-sink` crash point after a data file).
    batch: AtomicU64,
    /// The query writing it (delta-rs writes on its runtime's threads, not the query's).
    query: Mutex<Option<String>>,
}

impl Journal {
    pub(super) fn new(file: PathBuf) -> Self {
        Self {
            file,
            lock: Mutex::new(()),
            batch: AtomicU64::new(u64::MAX),
            query: Mutex::new(None),
        }
    }

    /// The batch whose files are written next.
    pub(super) fn set_batch(&self, batch_id: u64) {
        self.batch.store(batch_id, Ordering::SeqCst);
        *self.query.lock().unwrap_or_else(|e| e.into_inner()) =
            sluice_engine::fault::current_query();
    }

    fn record(&self, path: &Path) -> std::io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let created = !self.file.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        f.write_all(format!("{path}\n").as_bytes())?;
        f.sync_data()?;
        // a new journal's name must survive a power cut too
        if let (true, Some(dir)) = (created, self.file.parent()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The files recorded since the journal was last emptied.
    pub(super) fn recorded(&self) -> Result<Vec<Path>> {
        match std::fs::read_to_string(&self.file) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(Path::from)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(EngineError::io(&self.file, e)),
        }
    }

    /// Empties the journal: what it recorded is committed (or removed).
    pub(super) fn clear(&self) -> Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::remove_file(&self.file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EngineError::io(&self.file, e)),
        }
    }
}

/// Whether a store path is a data file the journal keeps (not the log's).
fn is_data_file(path: &Path) -> bool {
    let s = path.as_ref();
    s.ends_with(".parquet") && !s.contains("_delta_log/")
}

/// An object store that records data files in a [`Journal`] before writing them.
pub(super) struct JournaledStore {
    inner: Arc<dyn ObjectStore>,
    journal: Arc<Journal>,
}

impl JournaledStore {
    pub(super) fn new(inner: Arc<dyn ObjectStore>, journal: Arc<Journal>) -> Self {
        Self { inner, journal }
    }

    fn note(&self, path: &Path) -> object_store::Result<()> {
        if is_data_file(path) {
            self.journal
                .record(path)
                .map_err(|e| object_store::Error::Generic {
                    store: "sluice-journal",
                    source: Box::new(e),
                })?;
        }
        Ok(())
    }
}

impl fmt::Display for JournaledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Journaled({})", self.inner)
    }
}

impl fmt::Debug for JournaledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JournaledStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for JournaledStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.note(location)?;
        let r = self.inner.put_opts(location, payload, opts).await?;
        if is_data_file(location) {
            // a data file is written, the commit is not: the kill the journal is for
            let query = self
                .journal
                .query
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            sluice_engine::fault::crash_point_for(
                query.as_deref(),
                "mid-sink",
                self.journal.batch.load(Ordering::SeqCst),
            );
        }
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.note(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.note(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_files_are_journaled() {
        // (path, journaled)
        let table = [
            ("tmp/t/part-00001-abc-c000.snappy.parquet", true),
            (
                "tmp/t/action=click/part-00001-abc-c000.snappy.parquet",
                true,
            ),
            ("tmp/t/_delta_log/00000000000000000003.json", false),
            (
                "tmp/t/_delta_log/00000000000000000010.checkpoint.parquet",
                false,
            ),
            ("tmp/t/_delta_log/_last_checkpoint", false),
        ];
        for (p, want) in table {
            assert_eq!(is_data_file(&Path::from(p)), want, "{p}");
        }
    }

    #[test]
    fn the_journal_records_clears_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let j = Journal::new(dir.path().join("sink/journal"));
        assert!(j.recorded().expect("empty").is_empty());
        j.record(&Path::from("t/a.parquet")).expect("record");
        j.record(&Path::from("t/b.parquet")).expect("record");
        let again = Journal::new(dir.path().join("sink/journal"));
        assert_eq!(
            again.recorded().expect("read"),
            [Path::from("t/a.parquet"), Path::from("t/b.parquet")]
        );
        again.clear().expect("clear");
        assert!(j.recorded().expect("cleared").is_empty());
    }
}
