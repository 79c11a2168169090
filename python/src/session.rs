//! `SparkSession` over the engine's session (with every built-in connector), and the readers
//! of streams and static tables.

use pyo3::prelude::*;

use crate::dataframe::PyDataFrame;
use crate::errors::engine;

/// The engine session behind a Python `SparkSession`.
#[pyclass(frozen, module = "sluice._native", name = "Session")]
pub struct PySession {
    pub(crate) session: sluice::Session,
}

#[pymethods]
impl PySession {
    /// A session named `app_name` with Spark/Sluice/DataFusion settings `conf` (an unknown
    /// `spark.*` setting is refused, naming the ones Sluice honours).
    #[new]
    fn new(app_name: String, conf: Vec<(String, String)>) -> PyResult<Self> {
        let mut b = sluice::Session::builder().app_name(app_name);
        for (k, v) in conf {
            b = b.config(k, v);
        }
        Ok(Self {
            session: b.build().map_err(crate::errors::illegal)?,
        })
    }

    /// `spark.readStream...load()` (`is_static`: `spark.read...load()`): a DataFrame over a
    /// source of `format` with `options`, a DDL `schema` if given, at `path` if given.
    #[pyo3(signature = (format, options, schema=None, path=None, is_static=false))]
    fn read(
        &self,
        py: Python<'_>,
        format: String,
        options: Vec<(String, String)>,
        schema: Option<String>,
        path: Option<String>,
        is_static: bool,
    ) -> PyResult<PyDataFrame> {
        let session = self.session.clone();
        py.detach(move || {
            let mut r = if is_static {
                session.read()
            } else {
                session.read_stream()
            }
            .format(&format);
            for (k, v) in options {
                r = r.option(&k, v);
            }
            if let Some(s) = schema {
                r = r.schema(s.as_str());
            }
            match path {
                Some(p) => r.load(p),
                None => r.load_default(),
            }
        })
        .map(PyDataFrame::new)
        .map_err(engine)
    }

    /// `spark.sql(statement)`.
    fn sql(&self, py: Python<'_>, statement: String) -> PyResult<PyDataFrame> {
        let session = self.session.clone();
        py.detach(move || session.sql(&statement))
            .map(PyDataFrame::new)
            .map_err(engine)
    }

    /// `spark.table(name)`.
    fn table(&self, name: &str) -> PyResult<PyDataFrame> {
        self.session
            .table(name)
            .map(PyDataFrame::new)
            .map_err(engine)
    }

    /// `spark.udf.register(name, f)`: a Python function over whole Arrow batches, by name in
    /// SQL and `expr()`.
    fn register_udf(&self, name: &str, udf: &crate::udf::PyUdf) {
        self.session.context().register_udf(udf.scalar_udf(name));
    }

    /// A setting given to the builder.
    fn conf(&self, key: &str) -> Option<String> {
        self.session.conf(key)
    }

    /// The application name.
    fn app_name(&self) -> String {
        self.session.app_name().to_string()
    }

    /// Stops every running query of the session (`spark.stop()`).
    fn stop(&self, py: Python<'_>) {
        let queries = self.session.active_queries();
        py.detach(move || {
            for q in queries {
                q.stop();
            }
        })
    }
}
