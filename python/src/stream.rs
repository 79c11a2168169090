//! `writeStream...start()` and `StreamingQuery`. The engine runs each query on its own thread;
//! every blocking call here releases the GIL, and `awaitTermination` wakes every 100 ms to let
//! Python deliver Ctrl-C (which stops the query cleanly, then raises `KeyboardInterrupt`).

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use sluice::{EngineError, OutputMode, StreamingQuery, Trigger};

use crate::dataframe::{of_batches, PyDataFrame};
use crate::errors::{engine, query};

/// A running (or finished) streaming query.
#[pyclass(frozen, module = "sluice._native", name = "Query")]
pub struct PyQuery {
    q: StreamingQuery,
    plan: Option<String>,
}

impl PyQuery {
    pub(crate) fn new(q: StreamingQuery, plan: Option<String>) -> Self {
        Self { q, plan }
    }
}

/// Where `writeStream` sends the rows.
#[derive(FromPyObject)]
pub(crate) struct WriteSpec {
    format: Option<String>,
    options: Vec<(String, String)>,
    output_mode: Option<String>,
    trigger: Option<String>,
    checkpoint: Option<String>,
    query_name: Option<String>,
    /// `foreachBatch(f)`: `f(native DataFrame, batch_id)`.
    foreach_batch: Option<Py<PyAny>>,
}

/// `df.writeStream...start()`.
#[pyfunction]
pub(crate) fn start(py: Python<'_>, df: &PyDataFrame, spec: WriteSpec) -> PyResult<PyQuery> {
    let plan = df.df.logical_plan().display_indent().to_string();
    let mut w = df.df.clone().write_stream();
    if let Some(f) = &spec.format {
        w = w.format(f);
    }
    for (k, v) in &spec.options {
        w = w.option(k, v);
    }
    if let Some(m) = &spec.output_mode {
        w = w.output_mode(m.parse::<OutputMode>().map_err(crate::errors::illegal)?);
    }
    if let Some(t) = &spec.trigger {
        w = w.trigger(t.parse::<Trigger>().map_err(crate::errors::illegal)?);
    }
    if let Some(c) = &spec.checkpoint {
        w = w.checkpoint_location(c);
    }
    if let Some(n) = &spec.query_name {
        w = w.query_name(n);
    }
    if let Some(func) = spec.foreach_batch {
        let session = df.df.session().clone();
        let schema = df.df.schema();
        w = w.foreach_batch(move |batch_id, batches| {
            // the rows' own schema (the plan's output is nullable where the logical schema
            // may not be)
            let schema = batches
                .first()
                .map_or_else(|| schema.clone(), |b| b.schema());
            Python::try_attach(|py| {
                let bdf = of_batches(&session, schema, batches.to_vec())
                    .map_err(|e| EngineError::bug(e.to_string()))?;
                func.call1(py, (bdf, batch_id)).map(|_| ()).map_err(|e| {
                    EngineError::user(format!(
                        "foreachBatch function failed in batch {batch_id}: {}",
                        crate::udf::traceback(py, &e)
                    ))
                })
            })
            .unwrap_or_else(|| {
                Err(EngineError::user(format!(
                    "foreachBatch: the Python interpreter is shutting down; batch {batch_id} \
                     runs again when the query restarts"
                )))
            })
        });
    }
    let q = py.detach(move || w.start()).map_err(engine)?;
    Ok(PyQuery::new(q, Some(plan)))
}

#[pymethods]
impl PyQuery {
    fn id(&self) -> String {
        self.q.id().to_string()
    }

    fn run_id(&self) -> String {
        self.q.run_id().to_string()
    }

    fn name(&self) -> Option<String> {
        self.q.name().map(str::to_string)
    }

    fn is_active(&self) -> bool {
        self.q.is_active()
    }

    /// Spark's `status`, as JSON.
    fn status_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.q.status()).map_err(|e| engine(EngineError::bug(e.to_string())))
    }

    /// The last batch's progress, as Spark's JSON.
    fn last_progress_json(&self) -> PyResult<Option<String>> {
        self.q
            .last_progress()
            .map(|p| serde_json::to_string(&p))
            .transpose()
            .map_err(|e| engine(EngineError::bug(e.to_string())))
    }

    /// The recent batches' progress, oldest first, as Spark's JSON.
    fn recent_progress_json(&self) -> PyResult<Vec<String>> {
        self.q
            .recent_progress()
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()
            .map_err(|e| engine(EngineError::bug(e.to_string())))
    }

    /// Waits for the query to end (at most `timeout` seconds): whether it ended. Raises
    /// `StreamingQueryException` if it failed; Ctrl-C stops it, then raises.
    #[pyo3(signature = (timeout=None))]
    fn await_termination(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = match timeout {
            Some(t) if !(t >= 0.0 && t.is_finite()) => {
                return Err(crate::errors::IllegalArgumentException::new_err(format!(
                    "timeout must be a non-negative number of seconds, got {t}"
                )))
            }
            // a timeout too long to represent waits without a deadline
            Some(t) => Duration::try_from_secs_f64(t)
                .ok()
                .and_then(|d| Instant::now().checked_add(d)),
            None => None,
        };
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let q = self.q.clone();
            let ended = py
                .detach(move || q.await_termination_timeout(slice))
                .map_err(query)?;
            if ended {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            if let Err(interrupt) = py.check_signals() {
                let q = self.q.clone();
                py.detach(move || q.stop());
                return Err(interrupt);
            }
        }
    }

    /// Blocks until everything available when called is processed (Ctrl-C interrupts the
    /// wait and stops the query, as in `awaitTermination`).
    fn process_all_available(&self, py: Python<'_>) -> PyResult<()> {
        let ticket = self.q.request_all_available();
        loop {
            let q = self.q.clone();
            let done = py
                .detach(move || q.wait_all_available(ticket, Duration::from_millis(100)))
                .map_err(query)?;
            if done {
                return Ok(());
            }
            if let Err(interrupt) = py.check_signals() {
                let q = self.q.clone();
                py.detach(move || q.stop());
                return Err(interrupt);
            }
        }
    }

    /// Stops the query and waits for its thread.
    fn stop(&self, py: Python<'_>) {
        let q = self.q.clone();
        py.detach(move || q.stop());
    }

    /// The error message the query stopped with.
    fn exception(&self) -> Option<String> {
        self.q.exception().map(|e| e.message)
    }

    /// The plan the query was started with.
    fn plan(&self) -> Option<String> {
        self.plan.clone()
    }
}
