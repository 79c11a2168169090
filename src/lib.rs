//! # sluice
//!
//! Structured streaming for unbounded tables: read a stream, describe a query (Spark's
//! DataFrame vocabulary or SQL), and Sluice runs it forever in micro-batches, checkpointed,
//! exactly once.
//!
//! ```no_run
//! use sluice::prelude::*;
//! # fn main() -> sluice::Result<()> {
//! let session = Session::builder().app_name("clicks").build()?;
//! let events = session.read_stream().schema("ts TIMESTAMP, action STRING, value DOUBLE").json("in")?;
//! let query = events.filter(col("action").eq(lit("click")))?
//!     .write_stream().format("console").start()?;
//! query.await_termination()?;
//! # Ok(()) }
//! ```
//!
//! This crate is the facade: it re-exports the engine's API and adds the built-in connectors
//! to every [`Session`]. Map of the crate:
//!
//! | module       | what it holds |
//! |--------------|---------------|
//! | (root)       | [`Session`] (engine session with built-in connectors), re-exports |
//! | [`prelude`]  | what a program needs: `Session`, `col`, `lit`, `Trigger`, `OutputMode`, ... |
//! | [`pipeline`] | the pipeline file (`sluice run pipeline.toml`): parsing, checking, preparing its queries |
//! | [`cli`]      | `sluice validate`, `sluice graph` and `sluice checkpoint inspect|state` |
//! | [`daemon`]   | `sluice run`'s loop: queries launched in the graph's order, restarted, stopped |
//! | `group`      | `sluice run --group`/`--tasks` (feature `kafka`): one query as tasks shared by processes, membership by Kafka consumer group |
//! | [`http`]     | the daemon's status API, `/healthz`, Prometheus metrics ([`http::metrics`]) and dashboard |
//! | [`backfill`] | the progress line of `sluice run --available-now` |
//!
//! The `sluice` binary (src/main.rs) is the daemon: `sluice run <pipeline.toml>`. Cargo features
//! `kafka`, `delta`, `jdbc` (all default) bring those connectors; [`features`] says which this
//! build has.

pub mod backfill;
pub mod cli;
pub mod daemon;
#[cfg(feature = "kafka")]
pub mod group;
pub mod http;
pub mod pipeline;

pub use arrow;
pub use datafusion;
pub use sluice_connectors as connectors;
pub use sluice_engine as engine;
pub use sluice_engine::{
    functions, ConnectorRegistry, DataFrame, DataStreamReader, DataStreamWriter, EngineError,
    ErrorKind, Guarantee, OutputMode, PreparedQuery, QueryError, QueryProgress, QueryStatus,
    Result, RetryPolicy, StreamingQuery, StreamingQueryListener, Trigger,
};
pub use sluice_engine::{Session as EngineSession, SessionBuilder as EngineSessionBuilder};

/// A Sluice session with the built-in connectors (files, console, memory, file sinks).
/// Dereferences to the engine's session: `read_stream()`, `sql()`, `table()`, ...
#[derive(Clone, Debug)]
pub struct Session(sluice_engine::Session);

/// Builds a [`Session`].
pub struct SessionBuilder(sluice_engine::SessionBuilder);

impl Session {
    /// A builder with the built-in connectors registered.
    pub fn builder() -> SessionBuilder {
        SessionBuilder(
            sluice_engine::Session::builder()
                .connectors(sluice_connectors::builtin())
                .state_provider(std::sync::Arc::new(sluice_state::RocksStateStoreProvider)),
        )
    }

    /// The engine session.
    pub fn engine(&self) -> &sluice_engine::Session {
        &self.0
    }
}

impl std::ops::Deref for Session {
    type Target = sluice_engine::Session;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl SessionBuilder {
    /// Names the application.
    pub fn app_name(self, name: impl Into<String>) -> Self {
        Self(self.0.app_name(name))
    }
    /// Sets a DataFusion configuration key.
    pub fn config(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        Self(self.0.config(key, value))
    }
    /// Adds connectors beside the built-in ones.
    pub fn with_connectors(mut self, f: impl FnOnce(&mut ConnectorRegistry)) -> Self {
        f(self.0.registry_mut());
        self
    }
    /// Builds the session.
    pub fn build(self) -> Result<Session> {
        Ok(Session(self.0.build()?))
    }
}

/// The optional connectors this build of Sluice has (its Cargo features: `kafka`, `delta`,
/// `jdbc`).
pub fn features() -> &'static [&'static str] {
    &[
        #[cfg(feature = "kafka")]
        "kafka",
        #[cfg(feature = "delta")]
        "delta",
        #[cfg(feature = "jdbc")]
        "jdbc",
        #[cfg(feature = "aws")]
        "aws",
    ]
}

/// What a program needs.
pub mod prelude {
    pub use crate::functions::*;
    pub use crate::{DataFrame, OutputMode, Session, StreamingQuery, Trigger};
}
