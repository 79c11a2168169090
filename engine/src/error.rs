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
    /// A source's schema evolved (Auto Loader's `addNewColumns` met new columns and wrote the
    /// next schema version): the query stops before the batch is committed and continues with
    /// the new schema when started again (`sluice run` does that by itself). The user acts only
    /// if nothing restarts the query.
    #[error("{0}")]
    SchemaChanged(String),
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
    /// An error with where it happened (`query 'q'`); who must act is the inner error's.
    #[error("{ctx}: {source}")]
    Context {
        /// Where.
        ctx: String,
        /// What.
        source: Box<EngineError>,
    },
}

impl EngineError {
    /// Who must act on this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::User(_)
            | EngineError::MissingSchema { .. }
            | EngineError::SchemaChanged(_) => ErrorKind::User,
            EngineError::External(_) => ErrorKind::External,
            EngineError::Bug(_) => ErrorKind::Bug,
            EngineError::State(e) => e.kind(),
            EngineError::DataFusion(e) => datafusion_kind(e),
            EngineError::Arrow(e) => arrow_kind(e),
            EngineError::Context { source, .. } => source.kind(),
        }
    }

    /// Whether the query stopped because a source's schema evolved, so that starting it again
    /// continues with the new schema ([`EngineError::SchemaChanged`], under any context).
    pub fn is_schema_change(&self) -> bool {
        match self {
            EngineError::SchemaChanged(_) => true,
            EngineError::Context { source, .. } => source.is_schema_change(),
            _ => false,
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
    /// act, and what the error is, do not change.
    pub fn context(self, ctx: &str) -> Self {
        EngineError::Context {
            ctx: ctx.to_string(),
            source: Box::new(self),
        }
    }

    /// A sink refused a task's write: a newer epoch of the task claimed the target (this
    /// process lost the task; its new owner writes).
    /// `sink` names the sink and its target.
    pub fn fenced(task: u32, epoch: u64, newer: u64, sink: &str) -> Self {
        EngineError::State(StateError::Fenced { task, epoch, newer }).context(sink)
    }

    /// Whether this process lost the task it ran ([`StateError::Fenced`], under any context):
    /// it must stop the task without retrying.
    pub fn is_fenced(&self) -> bool {
        match self {
            EngineError::State(StateError::Fenced { .. }) => true,
            EngineError::Context { source, .. } => source.is_fenced(),
            _ => false,
        }
    }

    /// Whether the checkpoint directory or state store is what failed (corrupt, foreign,
    /// inconsistent, or its disk): the query fails, the pipeline file is not at fault.
    pub fn is_checkpoint(&self) -> bool {
        match self {
            EngineError::State(_) => true,
            EngineError::Context { source, .. } => source.is_checkpoint(),
            _ => false,
        }
    }

    /// An I/O error on `path` (external: the disk or file system must be fixed).
    pub fn io(path: &std::path::Path, err: std::io::Error) -> Self {
        EngineError::External(format!("I/O error on {}: {err}", path.display()))
    }
}

/// Who must act on a DataFusion error, by its cause: I/O and object-store failures (also
/// wrapped in context, shared, or external errors) are external; internal errors are bugs;
/// plans, schemas, SQL and data are the user's. Pure; table-tested.
pub fn datafusion_kind(e: &datafusion::error::DataFusionError) -> ErrorKind {
    use datafusion::error::DataFusionError as D;
    match e {
        D::IoError(_) | D::ObjectStore(_) | D::ResourcesExhausted(_) => ErrorKind::External,
        D::Internal(_) => ErrorKind::Bug,
        D::ArrowError(a, _) => arrow_kind(a),
        D::Context(_, inner) | D::Diagnostic(_, inner) => datafusion_kind(inner),
        D::Shared(inner) => datafusion_kind(inner),
        D::External(inner) => external_kind(inner.as_ref()),
        D::Collection(all) => all.first().map_or(ErrorKind::User, datafusion_kind),
        _ => ErrorKind::User,
    }
}

/// Who must act on an Arrow error: I/O is external, the rest is about data or types.
pub fn arrow_kind(e: &arrow::error::ArrowError) -> ErrorKind {
    use arrow::error::ArrowError as A;
    match e {
        A::IoError(..) => ErrorKind::External,
        A::ExternalError(inner) => external_kind(inner.as_ref()),
        _ => ErrorKind::User,
    }
}

fn external_kind(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    if let Some(d) = e.downcast_ref::<datafusion::error::DataFusionError>() {
        datafusion_kind(d)
    } else if let Some(a) = e.downcast_ref::<arrow::error::ArrowError>() {
        arrow_kind(a)
    } else if let Some(s) = e.downcast_ref::<EngineError>() {
        s.kind()
    } else if e.downcast_ref::<std::io::Error>().is_some() {
        ErrorKind::External
    } else {
        ErrorKind::User
    }
}

/// Result type of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError as D;

    #[test]
    fn errors_are_classified_by_cause() {
        let io = || std::io::Error::other("disk gone");
        // (error, who must act)
        let table: Vec<(EngineError, ErrorKind)> = vec![
            (EngineError::user("bad option"), ErrorKind::User),
            (EngineError::external("broker down"), ErrorKind::External),
            (EngineError::bug("invariant"), ErrorKind::Bug),
            (D::IoError(io()).into(), ErrorKind::External),
            (D::Plan("no column x".into()).into(), ErrorKind::User),
            (D::Internal("oops".into()).into(), ErrorKind::Bug),
            (
                D::Context("reading".into(), Box::new(D::IoError(io()))).into(),
                ErrorKind::External,
            ),
            (D::External(Box::new(io())).into(), ErrorKind::External),
            (
                D::ArrowError(
                    Box::new(arrow::error::ArrowError::IoError("x".into(), io())),
                    None,
                )
                .into(),
                ErrorKind::External,
            ),
            (
                D::ArrowError(
                    Box::new(arrow::error::ArrowError::CastError("not a number".into())),
                    None,
                )
                .into(),
                ErrorKind::User,
            ),
            (
                sluice_state::StateError::Corrupt {
                    path: "x".into(),
                    reason: "y".into(),
                }
                .into(),
                ErrorKind::User,
            ),
            // context keeps who must act
            (
                D::IoError(io()).into_engine().context("query 'q'"),
                ErrorKind::External,
            ),
            (EngineError::bug("b").context("query 'q'"), ErrorKind::Bug),
        ];
        for (e, want) in table {
            assert_eq!(e.kind(), want, "{e}");
        }
    }

    trait IntoEngine {
        fn into_engine(self) -> EngineError;
    }
    impl IntoEngine for D {
        fn into_engine(self) -> EngineError {
            self.into()
        }
    }
}
