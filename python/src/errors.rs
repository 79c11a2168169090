//! Sluice's errors as the Python exceptions PySpark users catch: `AnalysisException` for a query
//! that cannot be planned (a bad column, an unsupported construct), `StreamingQueryException`
//! for a query that failed while running, `IllegalArgumentException` for a bad option, and
//! `PySparkException` (`SluiceException`) as the base of them all. The message is Sluice's,
//! which names the file, offset, row or option and who must act.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::PyErr;
use sluice::{EngineError, QueryError};

create_exception!(
    _native,
    SluiceException,
    PyException,
    "Base of Sluice's errors (PySpark's PySparkException)."
);
create_exception!(
    _native,
    AnalysisException,
    SluiceException,
    "A query that cannot be planned: an unknown column or table, a bad expression, an unsupported construct."
);
create_exception!(
    _native,
    StreamingQueryException,
    SluiceException,
    "A streaming query that stopped with an error."
);
create_exception!(
    _native,
    IllegalArgumentException,
    SluiceException,
    "A bad option or argument."
);

/// An `AnalysisException` with `msg`.
pub(crate) fn analysis(msg: impl Into<String>) -> PyErr {
    AnalysisException::new_err(msg.into())
}

/// An engine error raised while describing a query: a user error is an `AnalysisException`
/// (Spark raises one for anything wrong with the query), others keep their class.
pub(crate) fn engine(e: EngineError) -> PyErr {
    match &e {
        EngineError::User(_) | EngineError::DataFusion(_) => {
            AnalysisException::new_err(e.to_string())
        }
        _ => SluiceException::new_err(e.to_string()),
    }
}

/// The error a query stopped with.
pub(crate) fn query(e: QueryError) -> PyErr {
    StreamingQueryException::new_err(e.message)
}

/// A bad setting or argument.
pub(crate) fn illegal(e: EngineError) -> PyErr {
    IllegalArgumentException::new_err(e.to_string())
}
