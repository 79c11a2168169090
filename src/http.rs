//! The daemon's HTTP endpoint (axum), off unless `sluice run --http ADDR`: status API, query
//! stop, Prometheus metrics, health. A non-loopback address needs `--auth-token` (sent as
//! `Authorization: Bearer TOKEN`) or an explicit `--insecure`.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the live dashboard (`/?query=NAME` for one query) |
//! | `GET /healthz` | `ok` |
//! | `GET /api/queries` | id, name, status, active, last progress, exception of every query |
//! | `GET /api/queries/{name}/progress?limit=N` | the last N progress reports (default 100) |
//! | `POST /api/queries/{name}/stop` | stops the query (202), the others go on |
//! | `GET /metrics` | Prometheus text, label `query` |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sluice_engine::progress::QueryProgress;

use crate::{EngineError, Result, StreamingQuery, StreamingQueryListener};

/// Upper bounds of the batch-duration histogram, seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct Counters {
    input_rows: u64,
    late_rows: u64,
    batches: u64,
    duration_sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Accumulates per-query counters from progress reports (a listener on the session).
#[derive(Debug, Default)]
pub struct Metrics {
    by_query: Mutex<BTreeMap<String, Counters>>,
}

impl StreamingQueryListener for Metrics {
    fn on_query_progress(&self, p: &QueryProgress) {
        let mut m = self.by_query.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry(p.id.clone()).or_default();
        c.input_rows += p.num_input_rows;
        c.late_rows += p
            .state_operators
            .iter()
            .map(|s| s.num_rows_dropped_by_watermark)
            .sum::<u64>();
        c.batches += 1;
        let secs = p.duration_ms.trigger_execution as f64 / 1000.0;
        c.duration_sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                c.buckets[i] += 1;
            }
        }
    }
}

/// What the server serves.
pub struct Server {
    queries: Mutex<Vec<StreamingQuery>>,
    metrics: Arc<Metrics>,
    token: Option<String>,
}

impl Server {
    /// A server over `queries`, with the metrics listener that the session reports to.
    pub fn new(metrics: Arc<Metrics>, token: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            queries: Mutex::new(Vec::new()),
            metrics,
            token,
        })
    }

    /// Adds a started query (replacing an earlier run of the same query).
    pub fn add(&self, q: StreamingQuery) {
        let mut v = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        match v.iter().position(|o| o.id() == q.id()) {
            Some(i) => v[i] = q,
            None => v.push(q),
        }
    }

    fn all(&self) -> Vec<StreamingQuery> {
        self.queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn find(&self, name: &str) -> Option<StreamingQuery> {
        self.all()
            .into_iter()
            .find(|q| q.name() == Some(name) || q.id() == name)
    }
}

/// Refuses a non-loopback address without a token, unless `insecure`. Pure; unit-tested.
pub fn check_bind(addr: &SocketAddr, token: Option<&str>, insecure: bool) -> Result<()> {
    if addr.ip().is_loopback() || token.is_some() || insecure {
        Ok(())
    } else {
        Err(EngineError::user(format!(
            "--http {addr} is not a loopback address: give --auth-token TOKEN (clients send \
             `Authorization: Bearer TOKEN`), or --insecure to serve it without authentication"
        )))
    }
}

fn authorized(s: &Server, h: &HeaderMap) -> bool {
    match &s.token {
        None => true,
        Some(t) => h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {t}")),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

fn query_json(q: &StreamingQuery) -> serde_json::Value {
    let st = q.status();
    json!({
        "id": q.id(),
        "runId": q.run_id(),
        "name": q.name(),
        "active": q.is_active(),
        "status": {
            "message": st.message,
            "isDataAvailable": st.is_data_available,
            "isTriggerActive": st.is_trigger_active,
        },
        "lastProgress": q.last_progress(),
        "exception": q.exception().map(|e| json!({"message": e.message, "kind": format!("{:?}", e.kind)})),
        "sinkRetries": q.sink_retries(),
    })
}

async fn queries(State(s): State<Arc<Server>>, h: HeaderMap) -> Response {
    if !authorized(&s, &h) {
        return unauthorized();
    }
    let list: Vec<serde_json::Value> = s.all().iter().map(query_json).collect();
    Json(list).into_response()
}

async fn progress(
    State(s): State<Arc<Server>>,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&s, &h) {
        return unauthorized();
    }
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "limit must be a non-negative integer"})),
            )
                .into_response()
        }
    };
    match s.find(&name) {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no query named {name}")})),
        )
            .into_response(),
        Some(q) => {
            let all = q.recent_progress();
            let from = all.len().saturating_sub(limit);
            Json(all[from..].to_vec()).into_response()
        }
    }
}

async fn stop(State(s): State<Arc<Server>>, h: HeaderMap, Path(name): Path<String>) -> Response {
    if !authorized(&s, &h) {
        return unauthorized();
    }
    match s.find(&name) {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no query named {name}")})),
        )
            .into_response(),
        Some(q) => {
            q.request_stop();
            (
                StatusCode::ACCEPTED,
                Json(json!({"stopping": q.name().unwrap_or(q.id())})),
            )
                .into_response()
        }
    }
}

fn label(q: &StreamingQuery) -> String {
    q.name()
        .unwrap_or(q.id())
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// The Prometheus text of all queries.
pub fn metrics_text(s: &Server) -> String {
    let qs = s.all();
    let counters = s
        .metrics
        .by_query
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = String::new();
    let mut family = |name: &str,
                      kind: &str,
                      help: &str,
                      f: &dyn Fn(&StreamingQuery, &Counters, &mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for q in &qs {
            let c = counters.get(q.id()).cloned().unwrap_or_default();
            f(q, &c, &mut out);
        }
    };
    family(
        "sluice_input_rows_total",
        "counter",
        "Input rows processed.",
        &|q, c, o| {
            let _ = writeln!(
                o,
                "sluice_input_rows_total{{query=\"{}\"}} {}",
                label(q),
                c.input_rows
            );
        },
    );
    family(
        "sluice_processed_rows_per_second",
        "gauge",
        "Rows per second processed in the last batch.",
        &|q, _, o| {
            let v = q
                .last_progress()
                .map_or(0.0, |p| p.processed_rows_per_second);
            let _ = writeln!(
                o,
                "sluice_processed_rows_per_second{{query=\"{}\"}} {v}",
                label(q)
            );
        },
    );
    family(
        "sluice_batch_duration_seconds",
        "histogram",
        "Duration of micro-batches.",
        &|q, c, o| {
            let l = label(q);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "sluice_batch_duration_seconds_bucket{{query=\"{l}\",le=\"{b}\"}} {}",
                    c.buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "sluice_batch_duration_seconds_bucket{{query=\"{l}\",le=\"+Inf\"}} {}",
                c.batches
            );
            let _ = writeln!(
                o,
                "sluice_batch_duration_seconds_sum{{query=\"{l}\"}} {}",
                c.duration_sum
            );
            let _ = writeln!(
                o,
                "sluice_batch_duration_seconds_count{{query=\"{l}\"}} {}",
                c.batches
            );
        },
    );
    family(
        "sluice_watermark_lag_seconds",
        "gauge",
        "Wall-clock time minus the event-time watermark.",
        &|q, _, o| {
            let wm = q
                .last_progress()
                .and_then(|p| p.event_time.get("watermark").cloned());
            if let Some(ts) = wm.and_then(|w| chrono::DateTime::parse_from_rfc3339(&w).ok()) {
                let lag =
                    (chrono::Utc::now().timestamp_millis() - ts.timestamp_millis()) as f64 / 1000.0;
                let _ = writeln!(
                    o,
                    "sluice_watermark_lag_seconds{{query=\"{}\"}} {lag}",
                    label(q)
                );
            }
        },
    );
    family(
        "sluice_state_rows",
        "gauge",
        "Rows in the state store.",
        &|q, _, o| {
            let v: u64 = q.last_progress().map_or(0, |p| {
                p.state_operators.iter().map(|s| s.num_rows_total).sum()
            });
            let _ = writeln!(o, "sluice_state_rows{{query=\"{}\"}} {v}", label(q));
        },
    );
    family(
        "sluice_state_bytes",
        "gauge",
        "Memory used by the state store.",
        &|q, _, o| {
            let v: u64 = q.last_progress().map_or(0, |p| {
                p.state_operators.iter().map(|s| s.memory_used_bytes).sum()
            });
            let _ = writeln!(o, "sluice_state_bytes{{query=\"{}\"}} {v}", label(q));
        },
    );
    family(
        "sluice_late_rows_total",
        "counter",
        "Rows dropped as later than the watermark.",
        &|q, c, o| {
            let _ = writeln!(
                o,
                "sluice_late_rows_total{{query=\"{}\"}} {}",
                label(q),
                c.late_rows
            );
        },
    );
    family(
        "sluice_sink_retries_total",
        "counter",
        "Sink retries after external failures.",
        &|q, _, o| {
            let _ = writeln!(
                o,
                "sluice_sink_retries_total{{query=\"{}\"}} {}",
                label(q),
                q.sink_retries()
            );
        },
    );
    family(
        "sluice_source_backlog",
        "gauge",
        "Input waiting in the sources (Kafka offsets, files).",
        &|q, _, o| {
            let v: u64 = q.last_progress().map_or(0, |p| {
                p.sources
                    .iter()
                    .filter_map(|s| s.metrics.get("backlog").and_then(|b| b.parse::<u64>().ok()))
                    .sum()
            });
            let _ = writeln!(o, "sluice_source_backlog{{query=\"{}\"}} {v}", label(q));
        },
    );
    out
}

async fn metrics(State(s): State<Arc<Server>>, h: HeaderMap) -> Response {
    if !authorized(&s, &h) {
        return unauthorized();
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_text(&s),
    )
        .into_response()
}

/// The dashboard: plain HTML and uPlot (MIT, vendored in src/dashboard), no build step. It reads
/// the status API (with the bearer token from `#token=` when the daemon wants one).
async fn dashboard() -> Response {
    (
        [("content-type", "text/html; charset=utf-8")],
        include_str!("dashboard/index.html"),
    )
        .into_response()
}

async fn uplot_js() -> Response {
    (
        [("content-type", "application/javascript")],
        include_str!("dashboard/uPlot.iife.min.js"),
    )
        .into_response()
}

async fn uplot_css() -> Response {
    (
        [("content-type", "text/css")],
        include_str!("dashboard/uPlot.min.css"),
    )
        .into_response()
}

/// Serves `server` on `addr` from a thread of its own; returns the bound address.
pub fn spawn(addr: SocketAddr, server: Arc<Server>) -> Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| EngineError::external(format!("cannot start the HTTP runtime: {e}")))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| EngineError::user(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| EngineError::external(e.to_string()))?;
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/static/uPlot.iife.min.js", get(uplot_js))
        .route("/static/uPlot.min.css", get(uplot_css))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/queries", get(queries))
        .route("/api/queries/{name}/progress", get(progress))
        .route("/api/queries/{name}/stop", post(stop))
        .route("/metrics", get(metrics))
        .with_state(server);
    std::thread::Builder::new()
        .name("sluice-http".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(async move { axum::serve(listener, app).await }) {
                tracing::error!("HTTP server stopped: {e}");
            }
        })
        .map_err(|e| EngineError::external(format!("cannot start the HTTP thread: {e}")))?;
    tracing::info!("serving the status API and metrics on http://{bound}");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token_or_insecure() {
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert!(check_bind(&lo, None, false).is_ok());
        assert!(check_bind(&any, None, false).is_err());
        assert!(check_bind(&any, Some("t"), false).is_ok());
        assert!(check_bind(&any, None, true).is_ok());
    }
}
