//! The engine's error type: every error says who must act ([`ErrorKind`]).

pub use sluice_state::ErrorKind;
use sluice_state::StateError;

/// Errors of the engine and of the connectors built on it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The user must act: a bad query, option, schema, checkpoint, or bad data under FAILFAST.
    #[error("{0}")]
    User(String),
    /// An external system failed (disk, network, broker, database); retrying may help.
    #[error("{0}")]
    External(String),
    /// A source needs a schema the user did not give. Kept apart so that each front end says
    /// how to give one (`.schema(..)` in a program, `schema = ".."` in a pipeline file).
    #[error(
        "{what} needs a schema: call .schema(\"col TYPE, ...\") (or set option inferSchema=true \
         to sample the files already there)"
    )]
    MissingSchema {
        /// The source, e.g. `the json source at 'in'`.
        what: String,
    },
    /// An invariant of Sluice was broken.
    #[error("internal error (a bug in Sluice): {0}")]
    Bug(String),
    /// The checkpoint directory or state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// DataFusion refused or failed a plan or an expression.
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed on data.
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl EngineError {
    /// Who must act on this error.
    pub fn kind(&self) -> ErrorKind {
        use datafusion::error::DataFusionError as D;
        match self {
            EngineError::User(_) | EngineError::MissingSchema { .. } => ErrorKind::User,
            EngineError::External(_) => ErrorKind::External,
            EngineError::Bug(_) => ErrorKind::Bug,
            EngineError::State(e) => e.kind(),
            EngineError::DataFusion(e) => match e {
                D::IoError(_) | D::ObjectStore(_) | D::ResourcesExhausted(_) => ErrorKind::External,
                D::Internal(_) => ErrorKind::Bug,
                _ => ErrorKind::User,
            },
            EngineError::Arrow(e) => match e {
                arrow::error::ArrowError::IoError(..) => ErrorKind::External,
                _ => ErrorKind::User,
            },
        }
    }

    /// Shorthand for a user error.
    pub fn user(msg: impl Into<String>) -> Self {
        EngineError::User(msg.into())
    }

    /// Shorthand for an external error.
    pub fn external(msg: impl Into<String>) -> Self {
        EngineError::External(msg.into())
    }

    /// Shorthand for a bug.
    pub fn bug(msg: impl Into<String>) -> Self {
        EngineError::Bug(msg.into())
    }

    /// The same error, its message prefixed with where it happened (`query 'q': ...`); who must
    /// act does not change.
    pub fn context(self, ctx: &str) -> Self {
        match self {
            EngineError::User(m) => EngineError::User(format!("{ctx}: {m}")),
            EngineError::External(m) => EngineError::External(format!("{ctx}: {m}")),
            EngineError::Bug(m) => EngineError::Bug(format!("{ctx}: {m}")),
            other => {
                let msg = format!("{ctx}: {other}");
                match other.kind() {
                    ErrorKind::User => EngineError::User(msg),
                    ErrorKind::External => EngineError::External(msg),
                    ErrorKind::Bug => EngineError::Bug(msg),
                }
            }
        }
    }

    /// An I/O error on `path` (external: the disk or file system must be fixed).
    pub fn io(path: &std::path::Path, err: std::io::Error) -> Self {
        EngineError::External(format!("I/O error on {}: {err}", path.display()))
    }
}

/// Result type of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
