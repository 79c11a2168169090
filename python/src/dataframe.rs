//! `DataFrame` and `GroupedData` over the engine's: every method resolves its columns against
//! the DataFrame's schema and calls the engine's method of the same name. Batches leave as
//! pyarrow tables (C data interface, no copy of the values).

use std::sync::Arc;

use arrow_pyarrow::ToPyArrow;
use pyo3::prelude::*;
use sluice::arrow::datatypes::{DataType, SchemaRef};
use sluice::arrow::record_batch::RecordBatch;
use sluice::datafusion::common::DFSchema;
use sluice::datafusion::logical_expr::Expr;
use sluice::DataFrame;

use crate::column::{PyColumn, Resolve};
use crate::errors::{analysis, engine};

/// A DDL type name (`int`, `timestamp`, `array<string>`) as an Arrow type.
pub(crate) fn ddl_type(ddl: &str) -> PyResult<DataType> {
    let schema = sluice::engine::ddl::parse_ddl_schema(&format!("c {ddl}"))
        .map_err(|e| analysis(format!("unknown type '{ddl}': {e}")))?;
    Ok(schema.field(0).data_type().clone())
}

/// A DataFrame: a plan over streams or static tables.
#[pyclass(frozen, from_py_object, module = "sluice._native", name = "DataFrame")]
#[derive(Clone)]
pub struct PyDataFrame {
    pub(crate) df: DataFrame,
}

impl PyDataFrame {
    pub(crate) fn new(df: DataFrame) -> Self {
        Self { df }
    }

    /// The items of a select or aggregation list, with Spark's names; `*` stands for every
    /// column. A generator is planned by `select` only.
    fn resolve_all(&self, cols: &[PyColumn]) -> PyResult<Vec<Expr>> {
        let schema = self.df.logical_plan().schema();
        let ctx = self.df.session().context();
        let r = Resolve { schema, ctx };
        let mut out = Vec::with_capacity(cols.len());
        for c in cols {
            let e = c.output(&r)?;
            if matches!(&e, Expr::Column(c) if c.name == "*") {
                out.extend(schema.columns().into_iter().map(Expr::Column));
            } else {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn resolve(&self, col: &PyColumn) -> PyResult<Expr> {
        let schema: &DFSchema = self.df.logical_plan().schema();
        col.resolve(&Resolve {
            schema,
            ctx: self.df.session().context(),
        })
    }

    fn with(&self, f: impl FnOnce(DataFrame) -> sluice::Result<DataFrame>) -> PyResult<Self> {
        f(self.df.clone()).map(Self::new).map_err(engine)
    }
}

#[pymethods]
impl PyDataFrame {
    /// `select(*cols)`; a generator among them (`explode(...)`) is planned as Spark's
    /// Generate: the other columns, then one row per element.
    fn select(&self, cols: Vec<PyColumn>) -> PyResult<Self> {
        let Some(gi) = cols.iter().position(|c| c.generator.is_some()) else {
            let exprs = self.resolve_all(&cols)?;
            return self.with(|df| df.select(exprs));
        };
        if cols.iter().filter(|c| c.generator.is_some()).count() > 1 {
            return Err(analysis(
                "[UNSUPPORTED_GENERATOR.MULTI_GENERATOR] only one generator allowed per select clause",
            ));
        }
        let g = &cols[gi];
        let gen = g.generator.unwrap_or(crate::column::Generator {
            position: false,
            outer: false,
        });
        let (pos_name, col_name) = match (gen.position, g.aliases.as_slice()) {
            (false, []) => (None, "col".to_string()),
            (false, [c]) => (None, c.clone()),
            (true, []) => (Some("pos".to_string()), "col".to_string()),
            (true, [p, c]) => (Some(p.clone()), c.clone()),
            _ => {
                return Err(analysis(format!(
                    "alias of {}: explode takes one name, posexplode two",
                    g.text()
                )))
            }
        };
        // the other items as select resolves them, the generator's array in its place
        let (before, rest) = cols.split_at(gi);
        let mut exprs = self.resolve_all(before)?;
        let schema = self.df.logical_plan().schema();
        let r = Resolve {
            schema,
            ctx: self.df.session().context(),
        };
        exprs.push(g.generator_input(&r)?.alias(col_name.clone()));
        exprs.extend(self.resolve_all(&rest[1..])?);
        let df = self.with(|df| df.select(exprs))?;
        df.with(|d| d.generate(&col_name, pos_name.as_deref(), gen.outer))
    }

    fn filter(&self, cond: PyColumn) -> PyResult<Self> {
        let e = self.resolve(&cond)?;
        self.with(|df| df.filter(e))
    }

    fn with_column(&self, name: &str, col: PyColumn) -> PyResult<Self> {
        if col.generator.is_some() {
            // withColumn("word", explode(...)): every column, then the generator
            let mut cols: Vec<PyColumn> = self
                .df
                .schema()
                .fields()
                .iter()
                .filter(|f| f.name() != name)
                .map(|f| PyColumn::named(&format!("`{}`", f.name())))
                .collect();
            let mut g = col;
            g.aliases = vec![name.to_string()];
            cols.push(g);
            return self.select(cols);
        }
        let e = self.resolve(&col)?;
        self.with(|df| df.with_column(name, e))
    }

    fn with_column_renamed(&self, old: &str, new: &str) -> PyResult<Self> {
        self.with(|df| df.with_column_renamed(old, new))
    }

    fn drop(&self, names: Vec<String>) -> PyResult<Self> {
        let present: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| self.df.schema().index_of(n).is_ok())
            .collect();
        self.with(|df| df.drop(&present))
    }

    fn with_watermark(&self, column: &str, delay: &str) -> PyResult<Self> {
        self.with(|df| df.with_watermark(column, delay))
    }

    fn union(&self, other: &PyDataFrame) -> PyResult<Self> {
        let o = other.df.clone();
        self.with(|df| df.union(o))
    }

    fn union_by_name(&self, other: &PyDataFrame) -> PyResult<Self> {
        let o = other.df.clone();
        self.with(|df| df.union_by_name(o))
    }

    fn drop_duplicates(&self, names: Vec<String>, within_watermark: bool) -> PyResult<Self> {
        let n: Vec<&str> = names.iter().map(String::as_str).collect();
        if within_watermark {
            self.with(|df| df.drop_duplicates_within_watermark(&n))
        } else {
            self.with(|df| df.drop_duplicates(&n))
        }
    }

    /// `join(other, on, how)`: `on` as column names or one condition column.
    fn join(
        &self,
        other: &PyDataFrame,
        on: Vec<String>,
        condition: Option<PyColumn>,
        how: &str,
    ) -> PyResult<Self> {
        let o = other.df.clone();
        match condition {
            None => {
                let names: Vec<&str> = on.iter().map(String::as_str).collect();
                self.with(|df| df.join(o, &names, how))
            }
            Some(c) => {
                // the condition sees both sides' columns
                let joined = sluice::datafusion::common::DFSchema::join(
                    self.df.logical_plan().schema(),
                    other.df.logical_plan().schema(),
                )
                .map_err(|e| analysis(e.to_string()))?;
                let e = c.resolve(&Resolve {
                    schema: &joined,
                    ctx: self.df.session().context(),
                })?;
                self.with(|df| df.join_on(o, e, how))
            }
        }
    }

    /// `orderBy(*cols)`: keys with (ascending, nulls first).
    fn order_by(&self, keys: Vec<(PyColumn, bool, bool)>) -> PyResult<Self> {
        let mut resolved = Vec::with_capacity(keys.len());
        for (c, asc, nulls_first) in &keys {
            resolved.push((self.resolve(c)?, *asc, *nulls_first));
        }
        self.with(|df| df.sort(resolved))
    }

    fn alias(&self, name: &str) -> PyResult<Self> {
        self.with(|df| df.alias(name))
    }

    /// `groupBy(*cols).agg(*aggs)`.
    fn aggregate(&self, keys: Vec<PyColumn>, aggs: Vec<PyColumn>) -> PyResult<Self> {
        let k = self.resolve_all(&keys)?;
        let a = self.resolve_all(&aggs)?;
        self.with(|df| df.group_by(k).agg(a))
    }

    fn create_or_replace_temp_view(&self, name: &str) -> PyResult<()> {
        self.df.create_or_replace_temp_view(name).map_err(engine)
    }

    fn is_streaming(&self) -> bool {
        self.df.is_streaming()
    }

    /// The schema as a pyarrow schema.
    fn arrow_schema(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.df.schema().as_ref().to_pyarrow(py)?.unbind())
    }

    /// The logical plan, for `explain()`.
    fn plan_text(&self) -> String {
        self.df.logical_plan().display_indent().to_string()
    }

    /// `show(n, truncate)`: the first `n` rows as Spark's `show()` prints them (the console
    /// sink's table).
    fn show_text(&self, py: Python<'_>, n: usize, truncate: bool) -> PyResult<String> {
        let df = self.df.clone();
        let schema = df.schema();
        let batches = py.detach(move || df.collect()).map_err(engine)?;
        Ok(sluice::connectors::sinks::console::show(
            &schema, &batches, n, truncate,
        ))
    }

    /// Runs a static DataFrame; a pyarrow table.
    fn collect_arrow(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let df = self.df.clone();
        let schema = df.schema();
        let batches = py.detach(move || df.collect()).map_err(engine)?;
        to_table(py, schema, batches)
    }

    /// Writes a static DataFrame once with a sink (`df.write...save()`): `batch` names the
    /// write so a re-run writes nothing twice to a sink that keeps batch ids (JDBC, Delta).
    #[pyo3(signature = (format, options, mode, write_id, batch_id, checkpoint_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn write_batch(
        &self,
        py: Python<'_>,
        format: &str,
        options: Vec<(String, String)>,
        mode: &str,
        write_id: String,
        batch_id: u64,
        checkpoint_dir: Option<std::path::PathBuf>,
    ) -> PyResult<()> {
        let df = self.df.clone();
        let format = format.to_string();
        let mode = mode.to_string();
        py.detach(move || {
            crate::batch_write::write(
                df,
                &format,
                options,
                &mode,
                &write_id,
                batch_id,
                checkpoint_dir,
            )
        })
        .map_err(engine)
    }
}

/// Batches as one pyarrow table.
pub(crate) fn to_table(
    py: Python<'_>,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> PyResult<Py<PyAny>> {
    let pa = py.import("pyarrow")?;
    let list = batches
        .iter()
        .map(|b| b.to_pyarrow(py))
        .collect::<PyResult<Vec<_>>>()?;
    let schema = schema.as_ref().to_pyarrow(py)?;
    let table = pa
        .getattr("Table")?
        .call_method1("from_batches", (list, schema))?;
    Ok(table.unbind())
}

/// A static DataFrame over rows in memory (a `foreachBatch` batch).
pub(crate) fn of_batches(
    session: &sluice::EngineSession,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> PyResult<PyDataFrame> {
    session
        .create_dataframe(Arc::clone(&schema), batches)
        .map(PyDataFrame::new)
        .map_err(engine)
}
