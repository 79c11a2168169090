//! Files still being written, and files that changed after they were taken.
//!
//! A file is taken into a batch when it is complete: the watcher saw it closed after writing or
//! renamed into place, or nothing has modified it for `minFileAge` (default 1 second while the
//! query waits for files to arrive, so a file copied or uploaded into the directory in place is
//! not read half-written; 0 with once / available-now triggers, which read what is there).
//! Until then it is left for a later batch, and a timer wakes the query when it is due.
//!
//! A Parquet file is taken only once it ends with its footer's magic bytes (`PAR1`): a file
//! still being written by a Parquet writer has none.
//!
//! A batch reads exactly the bytes its source log recorded (the file's size when it was taken):
//! a re-run after a crash reads the same rows, whatever happened to the file since. A file that
//! grew is read up to the recorded size with a warning naming it (and saying when the recorded
//! bytes end inside a line: that record was cut while being written); a file now shorter than
//! recorded cannot give the same rows and fails the batch naming it. A file modified after it
//! was taken is named in a warning once: Sluice takes a file once, its later content is not read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_engine::{EngineError, Notifier, Result};

use super::FileEntry;

/// The option: how long a file must be left unmodified before it is taken (unless the watcher
/// saw it completed).
pub(super) const MIN_FILE_AGE: &str = "minFileAge";

/// The default while waiting for files to arrive.
pub(super) const DEFAULT_MIN_FILE_AGE: Duration = Duration::from_secs(1);

/// Paths the watcher saw completed (closed after writing, renamed into place), shared with the
/// watcher's callback.
#[derive(Debug, Default, Clone)]
pub(super) struct Completed(Arc<Mutex<Paths>>);

#[derive(Debug, Default)]
pub(super) struct Paths {
    /// Closed after writing or renamed into place, not taken yet.
    done: HashSet<PathBuf>,
    /// Written since the query last looked (to name files modified after they were taken).
    written: HashSet<PathBuf>,
}

/// Whether a path's name is one the source ignores (`_x`, `.x`: written, then renamed).
fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.starts_with('_'))
}

impl Completed {
    /// Records what a file-system event says about its paths.
    pub(super) fn observe(&self, ev: &notify::Event) {
        use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
        use notify::EventKind as E;
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match ev.kind {
            E::Access(AccessKind::Close(AccessMode::Write))
            | E::Modify(ModifyKind::Name(RenameMode::To)) => {
                set.done
                    .extend(ev.paths.iter().filter(|p| !hidden(p)).cloned());
            }
            E::Modify(ModifyKind::Name(RenameMode::Both)) => {
                // (from, to): the source is gone, the destination is complete
                if let Some(from) = ev.paths.first() {
                    set.done.remove(from);
                }
                if let Some(to) = ev.paths.last().filter(|p| !hidden(p)) {
                    set.done.insert(to.clone());
                }
            }
            E::Modify(ModifyKind::Name(RenameMode::From)) | E::Remove(_) => {
                for p in &ev.paths {
                    set.done.remove(p);
                    set.written.remove(p);
                }
            }
            E::Modify(ModifyKind::Data(_)) | E::Create(_) => {
                // being written (again)
                for p in ev.paths.iter().filter(|p| !hidden(p)) {
                    set.done.remove(p);
                    set.written.insert(p.clone());
                }
            }
            _ => {}
        }
    }

    fn contains(&self, p: &Path) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done
            .contains(p)
    }

    /// Forgets a path once it is taken (the set stays as small as the files in flight).
    pub(super) fn forget(&self, p: &Path) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done
            .remove(p);
    }

    /// The paths written since the last call.
    pub(super) fn take_written(&self) -> HashSet<PathBuf> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()).written)
    }
}

/// Whether a Parquet file ends with its footer's magic bytes (a file still being written does
/// not); an unreadable file is left to the reader to report.
pub(super) fn parquet_complete(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return true;
    };
    let mut tail = [0u8; 4];
    match f.seek(SeekFrom::End(-4)) {
        Ok(_) => f.read_exact(&mut tail).is_ok() && &tail == b"PAR1",
        Err(_) => false, // shorter than 4 bytes: not a whole Parquet file yet
    }
}

/// Whether a modification time lies further ahead of `now_ms` than the settle time: another
/// clock wrote it, and waiting for it to age would wait for that clock.
fn from_the_future(mtime_ms: i64, now_ms: i64, min_age_ms: i64) -> bool {
    mtime_ms > now_ms.saturating_add(min_age_ms)
}

/// When a new file may be taken: now, or not before `due_ms` (ms since the epoch). A
/// modification time further in the future than `min_age_ms` (a server or archive with another
/// clock) says nothing about settling: such a file is taken now (and named in a warning by
/// the caller). Pure; table-tested.
pub(super) fn ready(mtime_ms: i64, now_ms: i64, min_age_ms: i64, completed: bool) -> Option<i64> {
    if completed || min_age_ms <= 0 || from_the_future(mtime_ms, now_ms, min_age_ms) {
        return None;
    }
    let due = mtime_ms.saturating_add(min_age_ms);
    (due > now_ms).then_some(due)
}

/// Splits new files into those ready now and the time the first of the others is due.
pub(super) fn split_ready(
    files: Vec<FileEntry>,
    completed: &Completed,
    min_age: Duration,
    parquet: bool,
) -> (Vec<FileEntry>, Option<i64>) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let min_age_ms = min_age.as_millis() as i64;
    let mut take = Vec::with_capacity(files.len());
    let mut due: Option<i64> = None;
    for f in files {
        if min_age_ms > 0 && from_the_future(f.mtime_ms, now_ms, min_age_ms) {
            tracing::warn!(
                "input file {} has a modification time {} s in the future (another clock?): \
                 taken without waiting for it to settle ({MIN_FILE_AGE} cannot judge it)",
                f.path,
                (f.mtime_ms - now_ms) / 1000
            );
        }
        let when = ready(
            f.mtime_ms,
            now_ms,
            min_age_ms,
            completed.contains(Path::new(&f.path)),
        );
        // a Parquet file without its footer yet: look again a little later
        let when = match when {
            None if parquet && !parquet_complete(Path::new(&f.path)) => {
                Some(now_ms.saturating_add(min_age_ms.max(1000)))
            }
            w => w,
        };
        match when {
            None => take.push(f),
            Some(d) => due = Some(due.map_or(d, |x: i64| x.min(d))),
        }
    }
    (take, due)
}

/// Wakes the query at `due_ms` (one timer at a time: an earlier pending one covers it).
#[derive(Debug, Default)]
pub(super) struct Wakeup(Arc<Mutex<Option<i64>>>);

impl Wakeup {
    pub(super) fn at(&self, due_ms: i64, notifier: &Notifier) {
        {
            let mut pending = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_some_and(|p| p <= due_ms) {
                return;
            }
            *pending = Some(due_ms);
        }
        let slot = Arc::clone(&self.0);
        let wake = notifier.clone();
        let wait_ms = (due_ms - chrono::Utc::now().timestamp_millis()).max(0) as u64 + 5;
        let start = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("file-settle".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_millis(wait_ms).saturating_sub(start.elapsed()));
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                wake.notify();
            });
        if spawned.is_err() {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            notifier.notify();
        }
    }
}

/// Reads the bytes a batch recorded for `f` into `buf` (cleared first): exactly `f.size`
/// bytes. A file that grew since is cut there — for text, after its last complete line — with
/// a warning; a shorter one is an error naming it. `Ok(false)`: the file is gone and
/// `ignore_missing` is set (a warning names it).
pub(super) fn read_recorded(
    f: &FileEntry,
    buf: &mut Vec<u8>,
    line_based: bool,
    ignore_missing: bool,
    bucket: Option<&sluice_engine::connector::storage::Location>,
) -> Result<bool> {
    use std::io::Read;
    let path = Path::new(&f.path);
    buf.clear();
    let missing = || {
        if ignore_missing {
            tracing::warn!(
                "input file {} was deleted after it was taken into a batch; skipped \
                     (ignoreMissingFiles): its rows are not in the batch",
                f.path
            );
            return Ok(false);
        }
        Err(EngineError::user(format!(
            "input file {} was deleted after it was taken into a batch; the batch cannot be \
             read again. Restore the file, or set option ignoreMissingFiles=true to skip it \
             (its rows are then lost)",
            f.path
        )))
    };
    if let Some(b) = bucket {
        // an object is immutable: the recorded bytes are all of it (a shorter one was replaced)
        let key = b
            .key_of_url(&f.path)
            .ok_or_else(|| EngineError::bug(format!("{} is not in {}", f.path, b.url())))?;
        let Some(bytes) = b.get_range_key(&key, 0..f.size)? else {
            return missing();
        };
        if (bytes.len() as u64) < f.size {
            return Err(EngineError::user(format!(
                "input object {} has {} bytes, but its batch recorded {}: it was replaced \
                 after it was taken, so the batch cannot read the same rows again",
                f.path,
                bytes.len(),
                f.size
            )));
        }
        buf.extend_from_slice(&bytes);
        return Ok(true);
    }
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return missing(),
        Err(e) => return Err(EngineError::io(path, e)),
    };
    let len = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    if len < f.size {
        return Err(EngineError::user(format!(
            "input file {} has {len} bytes, but its batch recorded {} bytes: it was truncated \
             or replaced after it was taken, so the batch cannot read the same rows again. \
             Restore the file, or write files elsewhere and rename them into the directory",
            f.path, f.size
        )));
    }
    (&mut file)
        .take(f.size)
        .read_to_end(buf)
        .map_err(|e| EngineError::io(path, e))?;
    if (buf.len() as u64) < f.size {
        return Err(EngineError::external(format!(
            "input file {}: read {} of the {} bytes its batch recorded",
            f.path,
            buf.len(),
            f.size
        )));
    }
    if len > f.size {
        // the recorded bytes are read as they are, whatever the file holds now: the first
        // attempt of this batch read the same ones (cutting here could differ from it)
        let cut = line_based && buf.last().is_some_and(|b| *b != b'\n');
        tracing::warn!(
            "input file {} grew after it was taken into a batch (recorded {} bytes, now {len}): \
             the batch reads the recorded bytes{}; its later rows are not read. Write files \
             elsewhere and rename them into the directory, or leave them unmodified for \
             {MIN_FILE_AGE}",
            f.path,
            f.size,
            if cut {
                ", which end inside a line: that record was cut while being written"
            } else {
                ""
            }
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_when_complete_or_old_enough() {
        // (mtime, now, min age, completed) -> due
        let table = [
            (1_000, 5_000, 1_000, false, None),
            (4_500, 5_000, 1_000, false, Some(5_500)),
            (4_500, 5_000, 1_000, true, None),
            (4_500, 5_000, 0, false, None),
            (5_900, 5_000, 1_000, false, Some(6_900)), // a little ahead: waits
            (i64::MAX, 5_000, 1_000, false, None),     // far in the future: taken now
        ];
        for (mtime, now, age, done, want) in table {
            assert_eq!(
                ready(mtime, now, age, done),
                want,
                "{mtime} {now} {age} {done}"
            );
        }
    }

    fn entry(path: &Path, size: u64) -> FileEntry {
        FileEntry {
            path: path.to_string_lossy().into_owned(),
            mtime_ms: 0,
            size,
        }
    }

    #[test]
    fn a_parquet_file_is_complete_once_it_ends_with_its_magic() {
        let dir = tempfile::tempdir().expect("tmp");
        // (content, complete)
        let table: [(&[u8], bool); 4] = [
            (b"PAR1 row groups, footer PAR1", true),
            (b"PAR1 row groups still being writ", false),
            (b"PA", false),
            (b"", false),
        ];
        for (i, (bytes, want)) in table.iter().enumerate() {
            let p = dir.path().join(format!("{i}.parquet"));
            std::fs::write(&p, bytes).expect("write");
            assert_eq!(
                parquet_complete(&p),
                *want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_batch_reads_the_bytes_it_recorded() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("f.json");
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\"").expect("write");
        let mut buf = Vec::new();
        // recorded all 20 bytes: read as they are (a last line without newline is kept)
        assert!(read_recorded(&entry(&p, 20), &mut buf, true, false, None).expect("read"));
        assert_eq!(buf.len(), 20);
        // the file grew: exactly the recorded bytes again (a re-run reads what the first
        // attempt read)
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").expect("write");
        assert!(read_recorded(&entry(&p, 20), &mut buf, true, false, None).expect("read"));
        assert_eq!(buf, b"{\"a\":1}\n{\"a\":2}\n{\"a\"");
        // shorter than recorded: an error naming the file
        let e = read_recorded(&entry(&p, 99), &mut buf, true, false, None).expect_err("short");
        assert!(e.to_string().contains("f.json has 24 bytes"), "{e}");
        // gone
        std::fs::remove_file(&p).expect("rm");
        let e = read_recorded(&entry(&p, 20), &mut buf, true, false, None).expect_err("gone");
        assert!(e.to_string().contains("ignoreMissingFiles"), "{e}");
        assert!(!read_recorded(&entry(&p, 20), &mut buf, true, true, None).expect("skipped"));
    }
}
