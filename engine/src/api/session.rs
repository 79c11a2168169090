//! [`Session`]: the entry point, as Spark's `SparkSession`.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::datasource::ViewTable;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::operators::window::{WindowKind, WindowUdf};

use crate::api::dataframe::DataFrame;
use crate::api::query::{StreamingQuery, StreamingQueryListener};
use crate::api::reader::DataStreamReader;
use crate::connector::ConnectorRegistry;
use crate::error::{EngineError, Result};
use sluice_state::StateStoreProvider;

/// Builds a [`Session`].
#[derive(Default)]
pub struct SessionBuilder {
    app_name: Option<String>,
    registry: ConnectorRegistry,
    config: Vec<(String, String)>,
    state_provider: Option<Arc<dyn StateStoreProvider>>,
}

impl SessionBuilder {
    /// Names the application (shown in logs).
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = Some(name.into());
        self
    }

    /// Sets a DataFusion configuration key (e.g. `datafusion.execution.batch_size`).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Uses these connectors (the `sluice` crate's builder adds the built-in ones).
    pub fn connectors(mut self, registry: ConnectorRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Where stateful operators keep their state (the `sluice` facade's builder sets RocksDB).
    pub fn state_provider(mut self, provider: Arc<dyn StateStoreProvider>) -> Self {
        self.state_provider = Some(provider);
        self
    }

    /// Mutable access to the connector registry, to add connectors.
    pub fn registry_mut(&mut self) -> &mut ConnectorRegistry {
        &mut self.registry
    }

    /// Builds the session.
    pub fn build(self) -> Result<Session> {
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .set_str("datafusion.execution.time_zone", "UTC");
        let mut spark_conf = std::collections::BTreeMap::new();
        for (k, v) in &self.config {
            if k.starts_with("spark.") || k.starts_with("sluice.") {
                let storage = k.starts_with("spark.hadoop.")
                    && sluice_state::remote::location::is_storage_option(k);
                if !storage
                    && !SPARK_CONF_KEYS.contains(&k.as_str())
                    && !SLUICE_CONF_KEYS.contains(&k.as_str())
                {
                    return Err(EngineError::user(format!(
                        "unknown setting '{k}': Sluice honours {}, {}, object storage's \
                         spark.hadoop.fs.s3a.* (and DataFusion's datafusion.* settings)",
                        SPARK_CONF_KEYS.join(", "),
                        SLUICE_CONF_KEYS.join(", ")
                    )));
                }
                spark_conf.insert(k.clone(), v.clone());
            } else {
                config
                    .options_mut()
                    .set(k, v)
                    .map_err(|e| EngineError::user(format!("setting '{k}' = '{v}': {e}")))?;
            }
        }
        let ctx = SessionContext::new_with_config(config);
        ctx.register_udf(ScalarUDF::new_from_impl(WindowUdf::new(WindowKind::Time)));
        ctx.register_udf(ScalarUDF::new_from_impl(WindowUdf::new(
            WindowKind::Session,
        )));
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::operators::window::WindowTimeUdf::new(),
        ));
        // Spark's names for DataFusion's aggregates
        {
            use datafusion::functions_aggregate::{
                approx_distinct::approx_distinct_udaf,
                approx_percentile_cont::approx_percentile_cont_udaf,
                first_last::{first_value_udaf, last_value_udaf},
            };
            for (udaf, alias) in [
                (first_value_udaf(), "first"),
                (last_value_udaf(), "last"),
                (approx_distinct_udaf(), "approx_count_distinct"),
                (approx_percentile_cont_udaf(), "approx_percentile"),
            ] {
                ctx.register_udaf(Arc::unwrap_or_clone(udaf).with_aliases([alias]));
            }
        }
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::operators::json_fn::FromJson::new(),
        ));
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::operators::json_fn::ToJson::new(),
        ));
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::operators::split_fn::SplitUdf::new(),
        ));
        Ok(Session {
            inner: Arc::new(SessionInner {
                app_name: self.app_name.unwrap_or_else(|| "sluice".into()),
                ctx,
                spark_conf,
                registry: self.registry,
                state_provider: self.state_provider,
                queries: Mutex::new(Vec::new()),
                listeners: Mutex::new(Vec::new()),
                runtime: OnceLock::new(),
            }),
        })
    }
}

/// A session that only checks queries (`sluice validate`): sources create and change nothing
/// while their schema is resolved.
pub const VALIDATE_ONLY_CONF: &str = "sluice.validateOnly";
/// Batches whose state and log entries are kept recoverable (default 100).
pub const MIN_BATCHES_TO_RETAIN_CONF: &str = "spark.sql.streaming.minBatchesToRetain";
/// A state snapshot every this many batches (default 10; 0 never).
pub const MIN_DELTAS_FOR_SNAPSHOT_CONF: &str =
    "spark.sql.streaming.stateStore.minDeltasForSnapshot";

/// Sluice's own session settings (the query's retry policy).
pub const SLUICE_CONF_KEYS: &[&str] = &[
    crate::exec::retry::INITIAL_BACKOFF_CONF,
    crate::exec::retry::MAX_BACKOFF_CONF,
    crate::exec::retry::MAX_RETRIES_CONF,
    crate::exec::state::STATE_THREADS_CONF,
    VALIDATE_ONLY_CONF,
];

/// The Spark settings a session takes through [`SessionBuilder::config`] (a writer option
/// without the `spark.sql.streaming.` prefix overrides them per query).
pub const SPARK_CONF_KEYS: &[&str] = &[
    crate::operators::watermark::POLICY_CONF,
    MIN_BATCHES_TO_RETAIN_CONF,
    MIN_DELTAS_FOR_SNAPSHOT_CONF,
    crate::exec::state::SHUFFLE_PARTITIONS_CONF,
];

struct SessionInner {
    app_name: String,
    ctx: SessionContext,
    spark_conf: std::collections::BTreeMap<String, String>,
    registry: ConnectorRegistry,
    state_provider: Option<Arc<dyn StateStoreProvider>>,
    queries: Mutex<Vec<StreamingQuery>>,
    listeners: Mutex<Vec<Arc<dyn StreamingQueryListener>>>,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

/// A Sluice session: reads streams, runs SQL over them, and starts streaming queries.
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("app_name", &self.inner.app_name)
            .finish()
    }
}

impl Session {
    /// A builder with no connectors (use `sluice::Session::builder()` for the built-in ones).
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// How many streaming plans this process has built: one per started query, never one per
    /// batch.
    pub fn plans_built() -> u64 {
        crate::plan::PLANS_BUILT.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A Spark setting given to the builder (see [`SPARK_CONF_KEYS`]).
    pub fn conf(&self, key: &str) -> Option<String> {
        self.inner.spark_conf.get(key).cloned()
    }

    /// The object-storage settings given to the builder (`spark.hadoop.fs.s3a.*` and the
    /// others): where the checkpoint goes, and the defaults of every source's and sink's.
    pub fn storage_options(&self) -> sluice_state::remote::StorageOptions {
        self.inner
            .spark_conf
            .iter()
            .filter(|(k, _)| k.starts_with("spark.hadoop."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The application name.
    pub fn app_name(&self) -> &str {
        &self.inner.app_name
    }

    /// Starts describing a stream to read.
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader::new(self.clone())
    }

    /// Starts describing a static table to read (Spark's `spark.read`): same formats and
    /// options as [`read_stream`](Self::read_stream), plus `refresh`.
    pub fn read(&self) -> crate::api::reader::DataFrameReader {
        DataStreamReader::new_static(self.clone())
    }

    /// Plans a SQL statement over the session's views and tables. A query over streams gives a
    /// streaming DataFrame (run it with `write_stream()`); DDL statements run at once.
    pub fn sql(&self, sql: &str) -> Result<DataFrame> {
        let ctx = self.inner.ctx.clone();
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let mut stmt = state.sql_to_statement(sql, &dialect)?;
        if let datafusion::sql::parser::Statement::Statement(s) = &mut stmt {
            crate::plan::sql::rewrite_statement(s)?;
        }
        let df = self.block_on(async move {
            let plan = state.statement_to_plan(stmt).await?;
            ctx.execute_logical_plan(plan).await
        })?;
        Ok(DataFrame::from_datafusion(self.clone(), df))
    }

    /// The tables and views a SQL query reads (names as written, CTEs left out), from the
    /// parsed statement: how a pipeline finds which of its queries read which.
    pub fn table_references(&self, sql: &str) -> Result<Vec<String>> {
        let state = self.inner.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let stmt = state.sql_to_statement(sql, &dialect)?;
        Ok(state
            .resolve_table_references(&stmt)?
            .into_iter()
            .map(|t| t.table().to_string())
            .collect())
    }

    /// A DataFrame over a registered view or table (e.g. a memory sink's table).
    pub fn table(&self, name: &str) -> Result<DataFrame> {
        let ctx = self.inner.ctx.clone();
        let name = name.to_string();
        let df = self.block_on(async move { ctx.table(name.as_str()).await })?;
        Ok(DataFrame::from_datafusion(self.clone(), df))
    }

    /// A static DataFrame over rows in memory (a `foreachBatch` batch handed to Python).
    pub fn create_dataframe(
        &self,
        schema: arrow::datatypes::SchemaRef,
        batches: Vec<arrow::record_batch::RecordBatch>,
    ) -> Result<DataFrame> {
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        let df = self.inner.ctx.read_table(Arc::new(table))?;
        Ok(DataFrame::from_datafusion(self.clone(), df))
    }

    /// Registers (or replaces) a view.
    pub(crate) fn register_view(&self, name: &str, df: &DataFrame) -> Result<()> {
        let plan = df.logical_plan().clone();
        let _ = self.inner.ctx.deregister_table(name)?;
        self.inner
            .ctx
            .register_table(name, Arc::new(ViewTable::new(plan, None)))?;
        Ok(())
    }

    /// The underlying DataFusion context (to register functions or batch tables).
    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// The state store provider stateful queries open their stores with.
    pub fn state_provider(&self) -> Result<Arc<dyn StateStoreProvider>> {
        self.inner.state_provider.clone().ok_or_else(|| {
            EngineError::user(
                "this session has no state store provider, so it cannot run a stateful query: \
                 build it with sluice::Session::builder() (RocksDB) or SessionBuilder::state_provider(..)",
            )
        })
    }

    /// The connectors this session knows.
    pub fn registry(&self) -> &ConnectorRegistry {
        &self.inner.registry
    }

    /// Adds a listener told about every query's start, progress and termination.
    pub fn add_listener(&self, listener: Arc<dyn StreamingQueryListener>) {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    pub(crate) fn listeners(&self) -> Vec<Arc<dyn StreamingQueryListener>> {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queries started in this session that are still running.
    pub fn active_queries(&self) -> Vec<StreamingQuery> {
        self.inner
            .queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|q| q.is_active())
            .cloned()
            .collect()
    }

    pub(crate) fn add_query(&self, q: StreamingQuery) -> Result<()> {
        let mut qs = self.inner.queries.lock().unwrap_or_else(|p| p.into_inner());
        qs.retain(|q| q.is_active());
        if let Some(other) = qs.iter().find(|o| o.id() == q.id()) {
            return Err(EngineError::user(format!(
                "cannot start query with id {} (checkpoint in use): query {} with the same id is already active",
                q.id(),
                other.name().unwrap_or("<unnamed>")
            )));
        }
        qs.push(q);
        Ok(())
    }

    /// Runs a future to completion on the session's runtime (from any thread).
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.inner.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sluice-session")
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start the session's tokio runtime: {e}"))
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            // called from async code: block a helper thread instead of the caller's runtime
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(fut))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(fut)
        }
    }
}
