//! [`StreamingQuery`]: the handle of a running query.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::ErrorKind;
use crate::exec::progress::{QueryProgress, QueryStatus};

pub(crate) use crate::exec::shared::QueryShared;
pub use crate::exec::shared::{QueryError, StreamingQueryListener, RECENT_PROGRESS};

/// A running (or finished) streaming query. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StreamingQuery {
    pub(crate) shared: Arc<QueryShared>,
    pub(crate) thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl StreamingQuery {
    /// The query id, stable across restarts from the same checkpoint.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The id of this run.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The query name, if given.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Whether the query is still running.
    pub fn is_active(&self) -> bool {
        self.shared.lock().active
    }

    /// What the query is doing now.
    pub fn status(&self) -> QueryStatus {
        self.shared.lock().status.clone()
    }

    /// Progress of the last committed batch.
    pub fn last_progress(&self) -> Option<QueryProgress> {
        self.shared.lock().recent.back().cloned()
    }

    /// Progress of the recent batches, oldest first (at most 100).
    pub fn recent_progress(&self) -> Vec<QueryProgress> {
        self.shared.lock().recent.iter().cloned().collect()
    }

    /// The error the query stopped with, if any.
    pub fn exception(&self) -> Option<QueryError> {
        self.shared.lock().error.clone()
    }

    /// The query's delivery guarantee (the weakest of its sources and sink), and why.
    pub fn guarantee(&self) -> (crate::exec::guarantee::Guarantee, &str) {
        (self.shared.guarantee.0, &self.shared.guarantee.1)
    }

    /// Whether the query is waiting to retry a source or its sink after an external failure.
    pub fn is_retrying(&self) -> bool {
        self.shared.retrying.load(Ordering::SeqCst)
    }

    /// Sink retries after external failures since this run started.
    pub fn sink_retries(&self) -> u64 {
        self.shared.sink_retries.load(Ordering::Relaxed)
    }

    /// Asks the query to stop without waiting for it to end.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.notifier.notify();
    }

    /// Asks the query to stop: the batch in flight finishes and is committed, then the query ends.
    /// Returns when it has ended.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.notifier.notify();
        let _ = self.await_termination();
    }

    /// Waits until the query ends; its error if it failed.
    pub fn await_termination(&self) -> Result<(), QueryError> {
        {
            let mut s = self.shared.lock();
            while s.active {
                s = self.shared.done.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        self.join();
        match self.exception() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Blocks until everything the sources had when called is processed and committed
    /// (Spark's `processAllAvailable`, for tests): a trigger that starts after the call finds
    /// no new data. Returns at once when the query has ended; its error if it failed.
    pub fn process_all_available(&self) -> Result<(), QueryError> {
        let ticket = self.request_all_available();
        while !self.wait_all_available(ticket, Duration::from_secs(3600))? {}
        Ok(())
    }

    /// The first half of [`process_all_available`](Self::process_all_available): a ticket for
    /// "everything available now", and a trigger asked for.
    pub fn request_all_available(&self) -> u64 {
        let ticket = self.shared.available_asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.notifier.notify();
        ticket
    }

    /// Waits at most `timeout` for `ticket`'s data to be processed: `Ok(true)` when it is (or
    /// the query ended cleanly), `Ok(false)` on timeout, the error if the query failed.
    pub fn wait_all_available(&self, ticket: u64, timeout: Duration) -> Result<bool, QueryError> {
        self.wait_while(timeout, || !self.shared.is_caught_up(ticket))
    }

    /// Waits at most `timeout`; `Ok(true)` if the query ended (without error).
    pub fn await_termination_timeout(&self, timeout: Duration) -> Result<bool, QueryError> {
        self.wait_while(timeout, || true)
    }

    /// Waits at most `timeout` while the query runs and `pending()` holds: `Ok(true)` when it
    /// stopped holding or the query ended cleanly, `Ok(false)` on timeout, the query's error if
    /// it failed. (`pending` is checked under the state lock the query signals `done` with.)
    fn wait_while(
        &self,
        timeout: Duration,
        pending: impl Fn() -> bool,
    ) -> Result<bool, QueryError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.shared.lock();
        while s.active && pending() {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            s = self
                .shared
                .done
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match &s.error {
            Some(e) => Err(e.clone()),
            None => Ok(true),
        }
    }

    fn join(&self) {
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl From<QueryError> for crate::EngineError {
    fn from(e: QueryError) -> Self {
        match e.kind {
            ErrorKind::User => crate::EngineError::User(e.message),
            ErrorKind::External => crate::EngineError::External(e.message),
            ErrorKind::Bug => crate::EngineError::Bug(e.message),
        }
    }
}
