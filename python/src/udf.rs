//! Python functions in a stream: `pandas_udf` / `udf` as a DataFusion scalar function that
//! hands a whole batch's argument columns to Python as pyarrow arrays (no copy), once per batch
//! chunk — never once per row — and takes a pyarrow array back. The conversion to pandas
//! Series (for `pandas_udf`) is done by the Python wrapper (`sluice/sql/udf.py`). The engine
//! thread takes the GIL only for the call.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow_pyarrow::{FromPyArrow, ToPyArrow};
use pyo3::prelude::*;
use sluice::arrow::array::{make_array, Array, ArrayData};
use sluice::arrow::datatypes::DataType;
use sluice::datafusion::common::{exec_err, Result as DfResult};
use sluice::datafusion::error::DataFusionError;
use sluice::datafusion::logical_expr::expr::ScalarFunction;
use sluice::datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::column::PyColumn;

/// The function DataFusion calls.
#[derive(Debug)]
struct PythonUdf {
    name: String,
    func: Arc<Py<PyAny>>,
    return_type: DataType,
    signature: Signature,
}

impl PartialEq for PythonUdf {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.func.as_ptr() == o.func.as_ptr()
    }
}
impl Eq for PythonUdf {}
impl Hash for PythonUdf {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        (self.func.as_ptr() as usize).hash(h);
    }
}

/// The Python traceback of an error, for the query's error message.
pub(crate) fn traceback(py: Python<'_>, e: &PyErr) -> String {
    let formatted = py
        .import("traceback")
        .and_then(|tb| {
            tb.call_method1(
                "format_exception",
                (e.get_type(py), e.value(py), e.traceback(py)),
            )
        })
        .and_then(|lines| lines.extract::<Vec<String>>());
    match formatted {
        Ok(lines) => lines.concat(),
        Err(_) => e.to_string(),
    }
}

impl ScalarUDFImpl for PythonUdf {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.return_type.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DfResult<Vec<_>>>()?;
        let out = Python::try_attach(|py| -> PyResult<ArrayData> {
            let py_args = arrays
                .iter()
                .map(|a| a.to_data().to_pyarrow(py))
                .collect::<PyResult<Vec<_>>>()?;
            let result = self.func.call1(py, (py_args, n))?;
            ArrayData::from_pyarrow_bound(result.bind(py))
        });
        let out = match out {
            None => {
                return exec_err!(
                    "Python function '{}': the Python interpreter is shutting down",
                    self.name
                )
            }
            Some(r) => r.map_err(|e| {
                let tb =
                    Python::try_attach(|py| traceback(py, &e)).unwrap_or_else(|| e.to_string());
                DataFusionError::Execution(format!("Python function '{}' failed: {tb}", self.name))
            })?,
        };
        let array = make_array(out);
        if array.len() != n {
            return exec_err!(
                "Python function '{}' returned {} values for {n} rows",
                self.name,
                array.len()
            );
        }
        if array.data_type() != &self.return_type {
            // a value that does not fit the declared type is an error, never a silent NULL
            let opts = sluice::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            let cast = sluice::arrow::compute::cast_with_options(&array, &self.return_type, &opts)
                .map_err(|e| {
                    DataFusionError::Execution(format!(
                        "Python function '{}' returned {} values that do not fit its return type {}: {e}",
                        self.name,
                        array.data_type(),
                        self.return_type
                    ))
                })?;
            return Ok(ColumnarValue::Array(cast));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// A Python function usable as a column function (`pandas_udf`, `udf`).
#[pyclass(frozen, module = "sluice._native", name = "Udf")]
pub struct PyUdf {
    name: String,
    func: Arc<Py<PyAny>>,
    return_type: DataType,
}

impl PyUdf {
    /// The DataFusion function, under `name`.
    pub(crate) fn scalar_udf(&self, name: &str) -> ScalarUDF {
        ScalarUDF::new_from_impl(PythonUdf {
            name: name.to_string(),
            func: Arc::clone(&self.func),
            return_type: self.return_type.clone(),
            signature: Signature::variadic_any(Volatility::Volatile),
        })
    }
}

#[pymethods]
impl PyUdf {
    /// `func(arrays: list[pyarrow.Array], num_rows: int) -> pyarrow.Array`, returning values of
    /// the DDL type `return_type`.
    #[new]
    fn new(name: String, func: Py<PyAny>, return_type: &str) -> PyResult<Self> {
        Ok(Self {
            name,
            func: Arc::new(func),
            return_type: crate::dataframe::ddl_type(return_type)?,
        })
    }

    /// The column `udf(*cols)`.
    fn call(&self, cols: Vec<Bound<'_, PyAny>>) -> PyResult<PyColumn> {
        let cols = cols
            .iter()
            .map(PyColumn::of_name)
            .collect::<PyResult<Vec<_>>>()?;
        let udf = Arc::new(self.scalar_udf(&self.name));
        let text = format!(
            "{}({})",
            self.name,
            cols.iter()
                .map(PyColumn::text)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let name = text.clone();
        Ok(PyColumn::new(text, move |r| {
            let args = cols
                .iter()
                .map(|c| c.resolve(r))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(
                Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(&udf), args))
                    .alias(name.clone()),
            )
        }))
    }
}
