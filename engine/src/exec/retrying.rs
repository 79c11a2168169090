//! The batch loop's calls to sources and sinks, retried on external failures with the query's
//! one backoff policy: a source outage makes the query wait, a failing sink has the batch
//! written again, never skipped; a stop request ends the wait.

use arrow::record_batch::RecordBatch;

use super::{Execution, SideSink};
use crate::error::Result;
use crate::exec::retry::{retry, RetryPolicy};
use crate::exec::shared::QueryShared;

/// Calls a source, retrying External failures (a broker or disk away) with backoff until they
/// pass or the query is stopped: a source outage makes the query wait, visibly, not fail.
pub(super) fn retry_source<T>(
    shared: &QueryShared,
    policy: &RetryPolicy,
    f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let r = retry(
        &policy.unbounded(),
        &shared.notifier,
        &|| shared.stop_requested(),
        |a| {
            tracing::warn!(
                attempt = a.attempt,
                "source failed after {:.1?}, retrying in {:?}: {}",
                a.took,
                a.wait,
                a.error
            );
            shared.set_retrying(true);
            shared.set_status(
                &format!(
                    "Waiting for a source (attempt {}, next in {:?}) after: {}",
                    a.attempt, a.wait, a.error
                ),
                false,
                true,
            );
        },
        f,
    );
    shared.set_retrying(false);
    r
}

impl Execution {
    /// Hands rows to a side sink (late rows, rows dropped by expectations), retried like the
    /// main sink.
    pub(super) fn write_to_side_sink(
        &mut self,
        which: SideSink,
        batch: u64,
        rows: &[RecordBatch],
    ) -> Result<()> {
        let (sink, what) = match which {
            SideSink::Late => (self.side.late.as_mut(), "late-data"),
            SideSink::Quarantine => (self.side.quarantine.as_mut(), "quarantine"),
        };
        let Some(sink) = sink else {
            return Ok(());
        };
        let shared = &self.shared;
        let r = retry(
            &self.retry,
            &shared.notifier,
            &|| shared.stop_requested(),
            |a| {
                tracing::warn!(
                    batch,
                    attempt = a.attempt,
                    "{what} sink failed after {:.1?}, retrying in {:?}: {}",
                    a.took,
                    a.wait,
                    a.error
                );
                shared.set_retrying(true);
            },
            || sink.add_batch(batch, rows),
        );
        shared.set_retrying(false);
        r
    }

    /// Hands the batch to the sink, retrying external failures with backoff; never skips it.
    pub(super) fn write_to_sink(&mut self, batch: u64, output: &[RecordBatch]) -> Result<()> {
        let shared = &self.shared;
        let sink = &mut self.sink;
        let description = sink.description();
        let r = retry(
            &self.retry,
            &shared.notifier,
            &|| shared.stop_requested(),
            |a| {
                shared
                    .sink_retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    batch,
                    attempt = a.attempt,
                    "sink {description} failed after {:.1?}, retrying in {:?}: {}",
                    a.took,
                    a.wait,
                    a.error
                );
                shared.set_retrying(true);
                shared.set_status(
                    &format!(
                        "Retrying the sink (attempt {}, next in {:?}) after: {}",
                        a.attempt, a.wait, a.error
                    ),
                    true,
                    true,
                );
            },
            || sink.add_batch(batch, output),
        );
        shared.set_retrying(false);
        r
    }
}
