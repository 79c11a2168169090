//! [`StreamingQuery`]: the handle of a running query.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::connector::Notifier;
use crate::error::ErrorKind;
use crate::progress::{QueryProgress, QueryStatus};

/// How many progress reports a query keeps (Spark keeps 100).
pub const RECENT_PROGRESS: usize = 100;

/// Why a query stopped with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// The error message.
    pub message: String,
    /// Who must act.
    pub kind: ErrorKind,
}

/// Told about queries' lifecycle (Spark's `StreamingQueryListener`). Called on the query's thread:
/// keep it quick.
pub trait StreamingQueryListener: Send + Sync {
    /// A query started.
    fn on_query_started(&self, _id: &str, _run_id: &str, _name: Option<&str>) {}
    /// A batch was committed.
    fn on_query_progress(&self, _progress: &QueryProgress) {}
    /// A trigger found no new data and the query waits for some (Spark's `onQueryIdle`); told
    /// once per idle period, with the trigger's time (ISO-8601).
    fn on_query_idle(&self, _id: &str, _run_id: &str, _timestamp: &str) {}
    /// A query stopped (with its error, if it failed).
    fn on_query_terminated(&self, _id: &str, _run_id: &str, _error: Option<&QueryError>) {}
}

#[derive(Debug)]
struct QueryState {
    active: bool,
    status: QueryStatus,
    recent: VecDeque<QueryProgress>,
    error: Option<QueryError>,
}

/// State shared between a query's thread and its handles.
#[derive(Debug)]
pub(crate) struct QueryShared {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) name: Option<String>,
    pub(crate) stop: AtomicBool,
    pub(crate) notifier: Notifier,
    /// Sink retries after external failures, since the query started.
    pub(crate) sink_retries: std::sync::atomic::AtomicU64,
    /// Whether the query is waiting to retry a source or sink after an external failure.
    pub(crate) retrying: AtomicBool,
    /// The delivery guarantee, and why.
    pub(crate) guarantee: (crate::guarantee::Guarantee, String),
    state: Mutex<QueryState>,
    done: Condvar,
}

impl QueryShared {
    pub(crate) fn new(
        id: String,
        name: Option<String>,
        guarantee: (crate::guarantee::Guarantee, String),
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            run_id: uuid::Uuid::new_v4().to_string(),
            name,
            stop: AtomicBool::new(false),
            notifier: Notifier::new(),
            sink_retries: std::sync::atomic::AtomicU64::new(0),
            retrying: AtomicBool::new(false),
            guarantee,
            state: Mutex::new(QueryState {
                active: true,
                status: QueryStatus {
                    message: "Initializing sources".into(),
                    is_data_available: false,
                    is_trigger_active: false,
                },
                recent: VecDeque::new(),
                error: None,
            }),
            done: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn set_retrying(&self, on: bool) {
        self.retrying.store(on, Ordering::SeqCst);
    }

    pub(crate) fn set_status(&self, message: &str, data: bool, trigger: bool) {
        let mut s = self.lock();
        s.status = QueryStatus {
            message: message.into(),
            is_data_available: data,
            is_trigger_active: trigger,
        };
    }

    pub(crate) fn push_progress(&self, p: QueryProgress) {
        let mut s = self.lock();
        if s.recent.len() == RECENT_PROGRESS {
            s.recent.pop_front();
        }
        s.recent.push_back(p);
    }

    pub(crate) fn terminate(&self, error: Option<QueryError>) {
        let mut s = self.lock();
        s.active = false;
        s.status = QueryStatus {
            message: if error.is_some() {
                "Terminated with exception".into()
            } else {
                "Stopped".into()
            },
            is_data_available: false,
            is_trigger_active: false,
        };
        s.error = error;
        self.done.notify_all();
    }
}

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
    pub fn guarantee(&self) -> (crate::guarantee::Guarantee, &str) {
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

    /// Waits at most `timeout`; `Ok(true)` if the query ended (without error).
    pub fn await_termination_timeout(&self, timeout: Duration) -> Result<bool, QueryError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = self.shared.lock();
        while s.active {
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
