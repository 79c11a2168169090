//! A pool of parser threads with look-ahead: a batch's files are parsed on every core (the
//! asking thread helps), and the files the next batches will most likely hold are parsed in
//! the background while the query aggregates and writes the current one. Results are keyed by
//! path, modification time and size, so a rewritten file is parsed again; a file parsed ahead
//! but never asked for is dropped when the look-ahead moves on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sluice_engine::{EngineError, Result};

use super::{FileEntry, FileReader, Parsed};

/// A file as parsed: its path, modification time and size.
pub(super) fn file_key(f: &FileEntry) -> String {
    format!("{}\u{0}{}\u{0}{}", f.path, f.mtime_ms, f.size)
}

#[derive(Default)]
struct State {
    /// Files waiting to be parsed, with their keys, in order (the batch being read first).
    todo: VecDeque<(String, FileEntry)>,
    /// Files a thread is parsing.
    in_flight: HashSet<String>,
    /// Parsed files.
    done: HashMap<String, Result<Parsed>>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    reader: Arc<FileReader>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parses one file outside the lock and records the result (a panic of the parser as an
    /// error: whoever waits for the file must not wait forever).
    fn parse(&self, k: String, f: FileEntry) {
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reader.read_file(&f)))
                .unwrap_or_else(|_| {
                    Err(EngineError::bug(format!(
                        "the parser panicked on file {}",
                        f.path
                    )))
                });
        let mut st = self.lock();
        st.in_flight.remove(&k);
        st.done.insert(k, r);
        self.changed.notify_all();
    }
}

/// The parser threads of one file source.
pub(super) struct ParsePool {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl ParsePool {
    /// Starts `threads` parser threads.
    pub(super) fn new(reader: Arc<FileReader>, threads: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            reader,
        });
        let workers = (0..threads.max(1))
            .filter_map(|_| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("sluice-file-parser".into())
                    .spawn(move || loop {
                        let next = {
                            let mut st = s.lock();
                            loop {
                                if st.shutdown {
                                    return;
                                }
                                if let Some((k, f)) = st.todo.pop_front() {
                                    st.in_flight.insert(k.clone());
                                    break (k, f);
                                }
                                st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                            }
                        };
                        s.parse(next.0, next.1);
                    })
                    .ok()
            })
            .collect();
        Self { shared, workers }
    }

    /// The parsed batches of `files`, in order. Files not parsed or queued yet go to the front
    /// of the queue; the calling thread parses queued files too while it waits.
    pub(super) fn get(&self, files: &[FileEntry]) -> Result<Vec<Parsed>> {
        let keys: Vec<String> = files.iter().map(file_key).collect();
        {
            let mut st = self.shared.lock();
            // this batch's files first, in order, ahead of any look-ahead
            let wanted: HashSet<&String> = keys.iter().collect();
            st.todo.retain(|(k, _)| !wanted.contains(k));
            let mut front = Vec::new();
            for (f, k) in files.iter().zip(&keys) {
                if !st.done.contains_key(k) && !st.in_flight.contains(k) {
                    front.push((k.clone(), f.clone()));
                }
            }
            for e in front.into_iter().rev() {
                st.todo.push_front(e);
            }
            self.shared.changed.notify_all();
        }
        let wanted: HashSet<&String> = keys.iter().collect();
        loop {
            let mut st = self.shared.lock();
            if keys.iter().all(|k| st.done.contains_key(k)) {
                let mut out = Vec::with_capacity(keys.len());
                for k in &keys {
                    match st.done.remove(k) {
                        Some(r) => out.push(r?),
                        None => return Err(EngineError::bug("a parsed file disappeared")),
                    }
                }
                return Ok(out);
            }
            // help with this batch's own files rather than wait
            // (they are at the front of the queue)
            let mine = st.todo.front().is_some_and(|(k, _)| wanted.contains(k));
            match mine.then(|| st.todo.pop_front()).flatten() {
                Some((k, f)) => {
                    st.in_flight.insert(k.clone());
                    drop(st);
                    self.shared.parse(k, f);
                }
                None => {
                    let _unused = self
                        .shared
                        .changed
                        .wait(st)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// Queues `files` (the next batches' most likely files) for parsing in the background;
    /// parsed or queued files not among them are dropped.
    pub(super) fn look_ahead(&self, files: &[FileEntry]) {
        let keys: HashSet<String> = files.iter().map(file_key).collect();
        let mut st = self.shared.lock();
        st.done.retain(|k, _| keys.contains(k));
        st.todo.retain(|(k, _)| keys.contains(k));
        let known: HashSet<String> = st
            .todo
            .iter()
            .map(|(k, _)| k.clone())
            .chain(st.in_flight.iter().cloned())
            .chain(st.done.keys().cloned())
            .collect();
        for f in files {
            let k = file_key(f);
            if !known.contains(&k) {
                st.todo.push_back((k, f.clone()));
            }
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for ParsePool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
