//! # sluice-python: the `sluice` Python package's native module (`sluice._native`)
//!
//! PySpark's streaming API over Sluice's engine. The Python package (`python/sluice/`) gives
//! PySpark's names and shapes (`SparkSession`, `DataFrame`, `functions`, `DataStreamWriter`,
//! `StreamingQuery`); everything it does is a call into this module, which calls the same
//! engine, connectors and state store the `sluice` binary runs — nothing is reimplemented in
//! Python.
//!
//! | module          | what it holds |
//! |-----------------|---------------|
//! | [`session`]     | `Session`: the engine session with every connector; readers, `sql`, `table` |
//! | [`column`]      | `Column`: an expression resolved against the schema of the DataFrame using it |
//! | [`functions`]   | `pyspark.sql.functions` by Spark's names over DataFusion's registry |
//! | [`dataframe`]   | `DataFrame`: the engine's DataFrame; batches out as pyarrow tables |
//! | [`batch_write`] | `df.write...save()`: static rows written once through a sink |
//! | [`stream`]      | `writeStream.start()`, `foreachBatch`, `StreamingQuery` (GIL released while waiting) |
//! | [`udf`]         | `pandas_udf` / `udf`: Python over whole Arrow batches inside a query |
//! | [`errors`]      | `AnalysisException`, `StreamingQueryException`, ... |

use pyo3::prelude::*;

pub mod batch_write;
pub mod column;
pub mod dataframe;
pub mod errors;
pub mod functions;
pub mod session;
pub mod stream;
pub mod udf;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<session::PySession>()?;
    m.add_class::<column::PyColumn>()?;
    m.add_class::<dataframe::PyDataFrame>()?;
    m.add_class::<stream::PyQuery>()?;
    m.add_class::<udf::PyUdf>()?;
    m.add_function(wrap_pyfunction!(stream::start, m)?)?;
    m.add_function(wrap_pyfunction!(functions::window, m)?)?;
    m.add_function(wrap_pyfunction!(functions::session_window, m)?)?;
    m.add_function(wrap_pyfunction!(functions::window_time, m)?)?;
    m.add_function(wrap_pyfunction!(functions::from_json, m)?)?;
    m.add_function(wrap_pyfunction!(functions::to_json, m)?)?;
    m.add_function(wrap_pyfunction!(functions::explode, m)?)?;
    m.add_function(wrap_pyfunction!(functions::count_star, m)?)?;
    m.add_function(wrap_pyfunction!(functions::count_distinct, m)?)?;
    m.add_function(wrap_pyfunction!(functions::case, m)?)?;
    m.add("SluiceException", py.get_type::<errors::SluiceException>())?;
    m.add(
        "AnalysisException",
        py.get_type::<errors::AnalysisException>(),
    )?;
    m.add(
        "StreamingQueryException",
        py.get_type::<errors::StreamingQueryException>(),
    )?;
    m.add(
        "IllegalArgumentException",
        py.get_type::<errors::IllegalArgumentException>(),
    )?;
    Ok(())
}
