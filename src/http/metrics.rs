//! Prometheus metrics of the daemon's queries, rendered by the `prometheus` crate's text encoder
//! (which escapes label values: `\`, `"` and newlines). Counters move on each progress report
//! (this is a [`StreamingQueryListener`]); gauges are read from the queries when scraped.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `sluice_input_rows_total` | counter | input rows processed |
//! | `sluice_processed_rows_per_second` | gauge | rows/s of the last batch |
//! | `sluice_batch_duration_seconds` | histogram | micro-batch durations |
//! | `sluice_watermark_lag_seconds` | gauge | wall clock minus the event-time watermark |
//! | `sluice_state_rows`, `sluice_state_bytes` | gauge | state store size (all stateful operators) |
//! | `sluice_operator_state_rows`, `sluice_operator_rows_dropped_by_watermark` | gauge | per stateful operator (label `operator`: its index nearest the sources first, and Spark's name, e.g. `1 stateStoreSave`), of the last batch |
//! | `sluice_state_rows_dropped_by_watermark_total` | counter | Spark's `numRowsDroppedByWatermark`: partially aggregated rows (one per late group and batch) |
//! | `sluice_late_input_rows_total` | counter | input rows dropped as late (what a late-data sink receives) |
//! | `sluice_malformed_records_total` | counter | malformed input records the sources met |
//! | `sluice_expectation_records_total` | counter | rows checked by an expectation (labels `expectation`, `result` = `passed` / `failed`) |
//! | `sluice_expectation_dropped_records_total` | counter | rows removed by `drop` expectations |
//! | `sluice_sink_retries_total` | counter | sink retries after external failures |
//! | `sluice_source_backlog` | gauge | input waiting in the sources (files, Kafka offsets) |
//! | `sluice_query_state` | gauge | 1 for the query's state (`running`, `retrying`, `failed`, `stopped`), 0 for the others |

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sluice_engine::progress::QueryProgress;
use sluice_engine::progress::NUM_LATE_INPUT_ROWS;

use crate::{StreamingQuery, StreamingQueryListener};

/// Upper bounds of the batch-duration histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What a query is doing, as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryState {
    /// Running batches or waiting for data.
    Running,
    /// Waiting to retry a source or sink, or to be restarted after an external failure.
    Retrying,
    /// Failed for good (a user error, a bug, or `--fail-fast`); the daemon will not restart it.
    Failed,
    /// Stopped (through the API, or done with a once / available-now trigger).
    Stopped,
}

impl QueryState {
    /// Every state, in the order the metric lists them.
    pub const ALL: [QueryState; 4] = [
        QueryState::Running,
        QueryState::Retrying,
        QueryState::Failed,
        QueryState::Stopped,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            QueryState::Running => "running",
            QueryState::Retrying => "retrying",
            QueryState::Failed => "failed",
            QueryState::Stopped => "stopped",
        }
    }
}

/// The query's label: its name, else its id.
pub fn label(q: &StreamingQuery) -> String {
    q.name().unwrap_or(q.id()).to_string()
}

/// The metrics of every query (a listener on the session, and read when scraped).
pub struct Metrics {
    registry: Registry,
    input_rows: IntCounterVec,
    batch_duration: HistogramVec,
    dropped_by_watermark: IntCounterVec,
    late_input_rows: IntCounterVec,
    malformed: IntCounterVec,
    expectation_records: IntCounterVec,
    expectation_dropped: IntCounterVec,
    sink_retries: IntCounterVec,
    processed_rate: GaugeVec,
    watermark_lag: GaugeVec,
    state_rows: IntGaugeVec,
    operator_rows: IntGaugeVec,
    operator_dropped: IntGaugeVec,
    state_bytes: IntGaugeVec,
    backlog: IntGaugeVec,
    query_state: IntGaugeVec,
    /// Sink retries already counted, per run id (a restarted query starts again at 0).
    retries_seen: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // names are constants and registered once per registry: a clash is a bug found by the tests
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!("metric not registered: {e}");
    }
    c
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let q = &["query"];
        let counter = |name: &str, help: &str| {
            register(
                &r,
                IntCounterVec::new(opts(name, help), q).expect("valid metric"),
            )
        };
        let input_rows = counter("sluice_input_rows_total", "Input rows processed.");
        let dropped_by_watermark = counter(
            "sluice_state_rows_dropped_by_watermark_total",
            "Rows the stateful operator dropped as late, counted as Spark's \
             numRowsDroppedByWatermark: for a window aggregation one per late group and batch \
             (partially aggregated rows), for deduplication and session windows input rows. \
             Late input rows are counted by sluice_late_input_rows_total.",
        );
        let late_input_rows = counter(
            "sluice_late_input_rows_total",
            "Input rows dropped as later than the watermark (what a late-data sink receives).",
        );
        let malformed = counter(
            "sluice_malformed_records_total",
            "Malformed input records (kept with nulls, dropped, or failing the query per the \
             source's mode), counted by the sources.",
        );
        let expectation_records = register(
            &r,
            IntCounterVec::new(
                opts(
                    "sluice_expectation_records_total",
                    "Rows an expectation checked: passed (TRUE or NULL) or failed (FALSE).",
                ),
                &["query", "expectation", "result"],
            )
            .expect("valid metric"),
        );
        let expectation_dropped = counter(
            "sluice_expectation_dropped_records_total",
            "Rows removed before the sink by expectations with on_violation = drop.",
        );
        let sink_retries = counter(
            "sluice_sink_retries_total",
            "Sink retries after external failures.",
        );
        let gauge = |name: &str, help: &str| {
            register(
                &r,
                GaugeVec::new(opts(name, help), q).expect("valid metric"),
            )
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let processed_rate = gauge(
            "sluice_processed_rows_per_second",
            "Rows per second processed in the last batch.",
        );
        let watermark_lag = gauge(
            "sluice_watermark_lag_seconds",
            "Wall-clock time minus the event-time watermark (queries with a watermark).",
        );
        let state_rows = int_gauge("sluice_state_rows", "Rows in the state store.", q);
        let state_bytes = int_gauge("sluice_state_bytes", "Memory used by the state store.", q);
        let operator_rows = int_gauge(
            "sluice_operator_state_rows",
            "Rows in one stateful operator's state (summed over its partitions), after the last batch.",
            &["query", "operator"],
        );
        let operator_dropped = int_gauge(
            "sluice_operator_rows_dropped_by_watermark",
            "One stateful operator's numRowsDroppedByWatermark in the last batch.",
            &["query", "operator"],
        );
        let backlog = int_gauge(
            "sluice_source_backlog",
            "Input waiting in the sources (files, Kafka offsets).",
            q,
        );
        let query_state = int_gauge(
            "sluice_query_state",
            "1 for the state the query is in (running, retrying, failed, stopped), 0 for the others.",
            &["query", "state"],
        );
        let batch_duration = register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "sluice_batch_duration_seconds",
                    "Duration of micro-batches.",
                )
                .buckets(BUCKETS.to_vec()),
                q,
            )
            .expect("valid metric"),
        );
        Self {
            registry: r,
            input_rows,
            batch_duration,
            dropped_by_watermark,
            late_input_rows,
            malformed,
            expectation_records,
            expectation_dropped,
            sink_retries,
            processed_rate,
            watermark_lag,
            state_rows,
            operator_rows,
            operator_dropped,
            state_bytes,
            backlog,
            query_state,
            retries_seen: Mutex::new(HashMap::new()),
        }
    }
}

impl StreamingQueryListener for Metrics {
    fn on_query_progress(&self, p: &QueryProgress) {
        let l = p.name.clone().unwrap_or_else(|| p.id.clone());
        let l = [l.as_str()];
        self.input_rows
            .with_label_values(&l)
            .inc_by(p.num_input_rows);
        let (dropped, late): (u64, u64) = p.state_operators.iter().fold((0, 0), |(d, l), s| {
            (
                d + s.num_rows_dropped_by_watermark,
                l + s
                    .custom_metrics
                    .get(NUM_LATE_INPUT_ROWS)
                    .copied()
                    .unwrap_or(0),
            )
        });
        self.dropped_by_watermark
            .with_label_values(&l)
            .inc_by(dropped);
        self.late_input_rows.with_label_values(&l).inc_by(late);
        let malformed: u64 = p
            .sources
            .iter()
            .filter_map(|s| s.metrics.get("numMalformedRecords")?.parse::<u64>().ok())
            .sum();
        self.malformed.with_label_values(&l).inc_by(malformed);
        if let Some(dq) = &p.data_quality {
            for e in &dq.expectations {
                for (result, n) in [("passed", e.passed_records), ("failed", e.failed_records)] {
                    self.expectation_records
                        .with_label_values(&[l[0], e.name.as_str(), result])
                        .inc_by(n);
                }
            }
            self.expectation_dropped
                .with_label_values(&l)
                .inc_by(dq.dropped_records);
        }
        self.batch_duration
            .with_label_values(&l)
            .observe(p.duration_ms.trigger_execution as f64 / 1000.0);
    }
}

/// The backlog a progress report gives (summed over sources).
pub fn backlog(p: &QueryProgress) -> u64 {
    p.sources
        .iter()
        .filter_map(|s| s.metrics.get("backlog").and_then(|b| b.parse::<u64>().ok()))
        .sum()
}

impl Metrics {
    /// Adds the sink retries of `q`'s run not counted yet (at each scrape, and when a restarted
    /// query's handle replaces the old run's, so that no retry is lost).
    pub fn count_retries(&self, q: &StreamingQuery) {
        let retries = q.sink_retries();
        let mut seen = self.retries_seen.lock().unwrap_or_else(|e| e.into_inner());
        let before = seen.entry(q.run_id().to_string()).or_insert(0);
        self.sink_retries
            .with_label_values(&[label(q).as_str()])
            .inc_by(retries.saturating_sub(*before));
        *before = (*before).max(retries);
    }

    /// Forgets the bookkeeping of a run that will not be seen again.
    pub fn forget_run(&self, run_id: &str) {
        self.retries_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(run_id);
    }

    /// The Prometheus text of `queries` (each with its state).
    pub fn render(&self, queries: &[(StreamingQuery, QueryState)]) -> String {
        for (q, state) in queries {
            let name = label(q);
            let l = [name.as_str()];
            // every series of a query exists from its first scrape on
            self.input_rows.with_label_values(&l);
            self.dropped_by_watermark.with_label_values(&l);
            self.late_input_rows.with_label_values(&l);
            self.malformed.with_label_values(&l);
            self.batch_duration.with_label_values(&l);
            self.count_retries(q);
            let last = q.last_progress();
            self.processed_rate
                .with_label_values(&l)
                .set(last.as_ref().map_or(0.0, |p| p.processed_rows_per_second));
            let wm = last
                .as_ref()
                .and_then(|p| p.event_time.get("watermark"))
                .and_then(|w| chrono::DateTime::parse_from_rfc3339(w).ok())
                // 1970-01-01: no event time seen yet, so no watermark to lag behind
                .filter(|w| w.timestamp_millis() > 0);
            match wm {
                Some(ts) => {
                    let lag = (chrono::Utc::now().timestamp_millis() - ts.timestamp_millis())
                        as f64
                        / 1000.0;
                    self.watermark_lag.with_label_values(&l).set(lag);
                }
                None => {
                    let _ = self.watermark_lag.remove_label_values(&l);
                }
            }
            let (rows, bytes) = last.as_ref().map_or((0, 0), |p| {
                p.state_operators.iter().fold((0, 0), |(r, b), s| {
                    (r + s.num_rows_total, b + s.memory_used_bytes)
                })
            });
            self.state_rows.with_label_values(&l).set(rows as i64);
            if let Some(p) = &last {
                // Spark's order is the sink's operator first: numbered from the sources
                let n = p.state_operators.len();
                for (i, s) in p.state_operators.iter().enumerate() {
                    let op = format!("{} {}", n - 1 - i, s.operator_name);
                    let labels = [name.as_str(), op.as_str()];
                    self.operator_rows
                        .with_label_values(&labels)
                        .set(s.num_rows_total as i64);
                    self.operator_dropped
                        .with_label_values(&labels)
                        .set(s.num_rows_dropped_by_watermark as i64);
                }
            }
            self.state_bytes.with_label_values(&l).set(bytes as i64);
            self.backlog
                .with_label_values(&l)
                .set(last.as_ref().map_or(0, backlog) as i64);
            for s in QueryState::ALL {
                self.query_state
                    .with_label_values(&[name.as_str(), s.name()])
                    .set(i64::from(s == *state));
            }
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error rendering the metrics: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_by_the_encoder() {
        let m = Metrics::default();
        m.input_rows
            .with_label_values(&["a \"q\"\nwith\\newline"])
            .inc_by(3);
        let text = TextEncoder::new()
            .encode_to_string(&m.registry.gather())
            .expect("encode");
        assert!(
            text.contains(r#"sluice_input_rows_total{query="a \"q\"\nwith\\newline"} 3"#),
            "{text}"
        );
        assert!(
            !text.contains("q\"\nwith"),
            "a raw newline splits the line: {text}"
        );
    }
}
