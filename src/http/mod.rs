//! The daemon's HTTP endpoint (axum), off unless `sluice run --http ADDR`: status API, query
//! stop, Prometheus metrics, health. A non-loopback address needs `--auth-token` (sent as
//! `Authorization: Bearer TOKEN`) or an explicit `--insecure`.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the live dashboard (`/?query=NAME` for one query) |
//! | `GET /healthz` | 200 `ok`, or 503 naming the queries that failed for good |
//! | `GET /api/queries` | id, name, status, active, last progress, exception of every query |
//! | `GET /api/tasks` | with `sluice run --group`/`--tasks`: the tasks this process runs (task, epoch, query, lag) |
//! | `GET /api/queries/{name}/progress?limit=N` | the last N progress reports (default 100) |
//! | `POST /api/queries/{name}/stop` | stops the query (202), the others go on |
//! | `GET /metrics` | Prometheus text, label `query` ([`metrics`]) |
//!
//! The bearer token is checked by one middleware layer over the API and metrics routes; the
//! dashboard page, its static files and `/healthz` need none (the page sends the token from
//! `#token=` with its API calls).

pub mod metrics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use metrics::{Metrics, QueryState};

use crate::{EngineError, Result, StreamingQuery};

/// What the server serves.
pub struct Server {
    queries: Mutex<Vec<StreamingQuery>>,
    /// What the daemon decided about queries that ended (by id): restarting or failed for good.
    daemon_states: Mutex<BTreeMap<String, QueryState>>,
    /// Stops asked for through the API while a query waited to be restarted (by id).
    stop_requests: Mutex<std::collections::BTreeSet<String>>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    /// The pipeline's graph (nodes and edges), when the daemon runs a pipeline file.
    graph: Mutex<Option<serde_json::Value>>,
    /// The tasks this process runs (`sluice run --group`): task → (epoch, query id).
    tasks: Mutex<BTreeMap<u32, (u64, String)>>,
}

impl Server {
    /// A server over `queries`, with the metrics listener that the session reports to.
    pub fn new(metrics: Arc<Metrics>, token: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            queries: Mutex::new(Vec::new()),
            daemon_states: Mutex::new(BTreeMap::new()),
            stop_requests: Mutex::new(std::collections::BTreeSet::new()),
            metrics,
            token,
            graph: Mutex::new(None),
            tasks: Mutex::new(BTreeMap::new()),
        })
    }

    /// Task `t` runs here at `epoch` as query `q` (replacing an earlier run of the task).
    pub fn add_task(&self, t: u32, epoch: u64, q: StreamingQuery) {
        let id = q.id().to_string();
        self.add(q);
        let mut m = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(t, (epoch, id));
    }

    /// Task `t` no longer runs here: it leaves `/api/tasks` and `/api/queries`.
    pub fn remove_task(&self, t: u32) {
        let gone = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t);
        if let Some((_, id)) = gone {
            let mut v = self.queries.lock().unwrap_or_else(|e| e.into_inner());
            v.retain(|q| q.id() != id);
        }
    }

    /// The pipeline's graph, served at `/api/graph` and drawn by the dashboard.
    pub fn set_graph(&self, graph: serde_json::Value) {
        *self.graph.lock().unwrap_or_else(|e| e.into_inner()) = Some(graph);
    }

    /// Adds a started query (replacing an earlier run of the same query, whose last sink
    /// retries are counted first).
    pub fn add(&self, q: StreamingQuery) {
        self.set_daemon_state(q.id(), None);
        let mut v = self.queries.lock().unwrap_or_else(|e| e.into_inner());
        match v.iter().position(|o| o.id() == q.id()) {
            Some(i) => {
                self.metrics.count_retries(&v[i]);
                self.metrics.forget_run(v[i].run_id());
                v[i] = q;
            }
            None => v.push(q),
        }
    }

    /// Whether a stop was asked for through the API while the query waited to be restarted
    /// (the daemon then does not restart it); clears the request.
    pub fn take_stop_request(&self, id: &str) -> bool {
        self.stop_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// The daemon tells what it does with a query that ended: `Retrying` (it will be restarted
    /// after a backoff) or `Failed` (for good); `None` clears it.
    pub fn set_daemon_state(&self, id: &str, state: Option<QueryState>) {
        let mut m = self.daemon_states.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            Some(s) => m.insert(id.to_string(), s),
            None => m.remove(id),
        };
    }

    /// The state of a query: what the daemon decided, else what its handle says.
    pub fn state_of(&self, q: &StreamingQuery) -> QueryState {
        let decided = self
            .daemon_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(q.id())
            .copied();
        query_state(
            decided,
            q.is_active(),
            q.is_retrying(),
            q.exception().map(|e| e.kind),
        )
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

/// A query's state from the daemon's decision (if any) and its handle (the kind of error it
/// ended with). Pure; table-tested.
pub fn query_state(
    decided: Option<QueryState>,
    active: bool,
    retrying: bool,
    error: Option<crate::ErrorKind>,
) -> QueryState {
    use crate::ErrorKind::External;
    match (decided, active, retrying, error) {
        (Some(s), false, _, _) => s,
        (_, true, true, _) => QueryState::Retrying,
        (_, true, false, _) => QueryState::Running,
        // an external failure the daemon has not decided on yet: it restarts those
        (None, false, _, Some(External)) => QueryState::Retrying,
        (None, false, _, Some(_)) => QueryState::Failed,
        (None, false, _, None) => QueryState::Stopped,
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

/// The one place the bearer token is checked (a layer over the API and metrics routes).
async fn require_token(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    if authorized(&s, req.headers()) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response()
    }
}

fn query_json(q: &StreamingQuery, state: QueryState) -> serde_json::Value {
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
        "state": state.name(),
        "guarantee": q.guarantee().0.name(),
        "guaranteeReason": q.guarantee().1,
        "exception": q.exception().map(|e| json!({"message": e.message, "kind": format!("{:?}", e.kind)})),
        "sinkRetries": q.sink_retries(),
    })
}

async fn graph(State(s): State<Arc<Server>>) -> Response {
    let g = s.graph.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(g.unwrap_or_else(|| json!({ "nodes": [], "edges": [] }))).into_response()
}

/// The tasks this process runs: task, epoch, query name and id, status, and lag (the input
/// offsets still waiting after the last batch, summed over the task's sources).
async fn tasks(State(s): State<Arc<Server>>) -> Response {
    let tasks = s.tasks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let queries = s.all();
    let list: Vec<serde_json::Value> = tasks
        .iter()
        .map(|(t, (epoch, id))| {
            let q = queries.iter().find(|q| q.id() == id);
            let lag: Option<u64> = q.and_then(|q| q.last_progress()).map(|p| {
                p.sources
                    .iter()
                    .filter_map(|s| s.metrics.get("backlog")?.parse::<u64>().ok())
                    .sum()
            });
            json!({
                "task": t,
                "epoch": epoch,
                "query": q.and_then(|q| q.name().map(str::to_string)),
                "id": id,
                "status": q.map(|q| s.state_of(q).name()),
                "lag": lag,
            })
        })
        .collect();
    Json(list).into_response()
}

async fn queries(State(s): State<Arc<Server>>) -> Response {
    let list: Vec<serde_json::Value> = s
        .all()
        .iter()
        .map(|q| query_json(q, s.state_of(q)))
        .collect();
    Json(list).into_response()
}

async fn progress(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
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

async fn stop(State(s): State<Arc<Server>>, Path(name): Path<String>) -> Response {
    match s.find(&name) {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no query named {name}")})),
        )
            .into_response(),
        Some(q) => {
            tracing::info!(
                "query '{}' stop requested through the HTTP API",
                q.name().unwrap_or(q.id())
            );
            if !q.is_active() && s.state_of(&q) == QueryState::Retrying {
                // waiting to be restarted: the daemon will not restart it
                s.stop_requests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(q.id().to_string());
                s.set_daemon_state(q.id(), Some(QueryState::Stopped));
            }
            q.request_stop();
            (
                StatusCode::ACCEPTED,
                Json(json!({"stopping": q.name().unwrap_or(q.id())})),
            )
                .into_response()
        }
    }
}

/// The Prometheus text of all queries.
pub fn metrics_text(s: &Server) -> String {
    let qs: Vec<(StreamingQuery, QueryState)> = s
        .all()
        .into_iter()
        .map(|q| {
            let st = s.state_of(&q);
            (q, st)
        })
        .collect();
    s.metrics.render(&qs)
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics_text(&s),
    )
        .into_response()
}

/// `ok` while no query has failed for good; else 503 naming the failed queries.
async fn healthz(State(s): State<Arc<Server>>) -> Response {
    let failed: Vec<String> = s
        .all()
        .iter()
        .filter(|q| s.state_of(q) == QueryState::Failed)
        .map(metrics::label)
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {}", failed.join(", ")),
        )
            .into_response()
    }
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
    let protected = Router::new()
        .route("/api/queries", get(queries))
        .route("/api/graph", get(graph))
        .route("/api/tasks", get(tasks))
        .route("/api/queries/{name}/progress", get(progress))
        .route("/api/queries/{name}/stop", post(stop))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&server),
            require_token,
        ));
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/static/uPlot.iife.min.js", get(uplot_js))
        .route("/static/uPlot.min.css", get(uplot_css))
        .route("/healthz", get(healthz))
        .merge(protected)
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

    #[test]
    fn query_states() {
        use crate::ErrorKind::{Bug, External, User};
        use QueryState::*;
        // (daemon's decision, active, retrying, error kind) -> state
        let table = [
            (None, true, false, None, Running),
            (None, true, true, None, Retrying),
            (None, false, false, None, Stopped),
            (None, false, false, Some(User), Failed),
            (None, false, false, Some(Bug), Failed),
            // the daemon restarts external failures: not failed while it has not said so
            (None, false, false, Some(External), Retrying),
            (Some(Retrying), false, false, Some(External), Retrying),
            (Some(Failed), false, false, Some(External), Failed),
            (Some(Stopped), false, false, Some(External), Stopped),
            // a restarted query runs again whatever was decided about its last run
            (Some(Retrying), true, false, None, Running),
        ];
        for (decided, active, retrying, error, want) in table {
            assert_eq!(
                query_state(decided, active, retrying, error),
                want,
                "{decided:?} {active} {retrying} {error:?}"
            );
        }
    }
}
