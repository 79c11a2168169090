//! What a running query's thread shares with its handles ([`QueryShared`]: stop flag, status,
//! recent progress, the error it ended with) and whom it tells ([`StreamingQueryListener`]).
//! The batch loop writes it; `api::query::StreamingQuery` reads it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::connector::Notifier;
use crate::error::ErrorKind;
use crate::exec::progress::{QueryProgress, QueryStatus};

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
    /// The query stopped because a source's schema evolved: starting it again continues with
    /// the new schema (Auto Loader's `addNewColumns`; `sluice run` restarts it by itself).
    pub schema_changed: bool,
    /// The query ran as a task of a group and lost it: a newer epoch of the task exists (see
    /// [`crate::EngineError::is_fenced`]); the task runs in another process now.
    pub fenced: bool,
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
pub(crate) struct QueryState {
    pub(crate) active: bool,
    pub(crate) status: QueryStatus,
    pub(crate) recent: VecDeque<QueryProgress>,
    pub(crate) error: Option<QueryError>,
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
    pub(crate) guarantee: (crate::exec::guarantee::Guarantee, String),
    state: Mutex<QueryState>,
    pub(crate) done: Condvar,
    /// `processAllAvailable` tickets handed out, and the highest ticket a trigger that started
    /// after it found no new data for (then everything available at the call is processed).
    pub(crate) available_asked: std::sync::atomic::AtomicU64,
    available_done: std::sync::atomic::AtomicU64,
}

impl QueryShared {
    pub(crate) fn new(
        id: String,
        name: Option<String>,
        guarantee: (crate::exec::guarantee::Guarantee, String),
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
            available_asked: std::sync::atomic::AtomicU64::new(0),
            available_done: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A trigger that read `ticket` from `available_asked` when it started found no new data.
    pub(crate) fn caught_up(&self, ticket: u64) {
        let _s = self.lock();
        self.available_done.fetch_max(ticket, Ordering::SeqCst);
        self.done.notify_all();
    }

    /// Whether a trigger started after `ticket` was handed out found no new data.
    pub(crate) fn is_caught_up(&self, ticket: u64) -> bool {
        self.available_done.load(Ordering::SeqCst) >= ticket
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, QueryState> {
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
