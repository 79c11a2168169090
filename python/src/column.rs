//! `Column`: PySpark's unresolved column expression. A column is a function from the schema it
//! is used against to a DataFusion expression, resolved when a DataFrame method takes it — so
//! `F.expr("a + 1")` and `col("window.start")` resolve against the DataFrame they are used on,
//! as in Spark. Generators (`explode`, `posexplode`) are marked so `select` can plan them.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
use sluice::datafusion::common::{DFSchema, ScalarValue};
use sluice::datafusion::logical_expr::{Expr, Operator};
use sluice::datafusion::prelude::SessionContext;
use sluice::functions as f;

use crate::errors::analysis;
use crate::functions::call_function;

/// What a column is resolved against: the schema of the DataFrame using it and the session.
pub(crate) struct Resolve<'a> {
    pub(crate) schema: &'a DFSchema,
    pub(crate) ctx: &'a SessionContext,
}

type Build = dyn Fn(&Resolve<'_>) -> PyResult<Expr> + Send + Sync;

/// A generator column: `explode(x)`, `posexplode(x)`, `_outer`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Generator {
    pub(crate) position: bool,
    pub(crate) outer: bool,
}

/// A column expression, resolved against a DataFrame's schema when used.
#[pyclass(frozen, from_py_object, module = "sluice._native", name = "Column")]
#[derive(Clone)]
pub struct PyColumn {
    build: Arc<Build>,
    /// Set on `explode(...)` columns (and kept through `.alias`).
    pub(crate) generator: Option<Generator>,
    /// The alias given to a generator (`explode(x).alias("word")`), or its position alias.
    pub(crate) aliases: Vec<String>,
    /// How `str(col)` shows it.
    text: Arc<str>,
    /// The name Spark gives the column when it is selected as is (`count(1)` for
    /// `count("*")`, `from_json(value)`), where DataFusion's would differ; applied only at the
    /// top of a select or aggregation list, never inside an expression.
    name: Option<Arc<str>>,
}

impl PyColumn {
    pub(crate) fn new(
        text: impl Into<Arc<str>>,
        build: impl Fn(&Resolve<'_>) -> PyResult<Expr> + Send + Sync + 'static,
    ) -> Self {
        Self {
            build: Arc::new(build),
            generator: None,
            aliases: Vec::new(),
            text: text.into(),
            name: None,
        }
    }

    /// The same column, named `name` when selected as is.
    pub(crate) fn output_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The expression; a generator is refused here (it is only allowed as an item of
    /// `select`, which plans it with [`PyColumn::generator_input`]).
    pub(crate) fn resolve(&self, r: &Resolve<'_>) -> PyResult<Expr> {
        if self.generator.is_some() {
            return Err(analysis(format!(
                "[UNSUPPORTED_GENERATOR.NESTED_IN_EXPRESSIONS] The generator is not supported: \
                 nested in expressions \"{}\"; select it on its own: \
                 select(explode(...).alias(...))",
                self.text
            )));
        }
        (self.build)(r)
    }

    /// The array a generator explodes.
    pub(crate) fn generator_input(&self, r: &Resolve<'_>) -> PyResult<Expr> {
        (self.build)(r)
    }

    /// The expression as an item of a select or aggregation list, named as Spark names it: a
    /// column keeps its name, a struct field is named after the field, anything else after its
    /// text (`sum(n)`, `(a + 1)`, `count(1)`), unless aliased.
    pub(crate) fn output(&self, r: &Resolve<'_>) -> PyResult<Expr> {
        let e = self.resolve(r)?;
        let name = match &e {
            Expr::Column(_) | Expr::Alias(_) => return Ok(e),
            Expr::ScalarFunction(f) if f.func.name() == "get_field" => self
                .text
                .rsplit('.')
                .next()
                .unwrap_or(&self.text)
                .to_string(),
            _ => self.name.as_deref().unwrap_or(&self.text).to_string(),
        };
        Ok(e.alias(name))
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) fn generator(mut self, g: Generator) -> Self {
        self.generator = Some(g);
        self
    }

    fn map(
        &self,
        text: String,
        f: impl Fn(Expr) -> PyResult<Expr> + Send + Sync + 'static,
    ) -> Self {
        let inner = self.clone();
        Self::new(text, move |r| f(inner.resolve(r)?))
    }

    fn combine(
        &self,
        other: &PyColumn,
        text: String,
        f: impl Fn(Expr, Expr) -> PyResult<Expr> + Send + Sync + 'static,
    ) -> Self {
        let (a, b) = (self.clone(), other.clone());
        Self::new(text, move |r| f(a.resolve(r)?, b.resolve(r)?))
    }

    /// A column by name: `a`, `` `a.b` `` (one name), `window.start` (a struct field when
    /// no column has the whole name), `*`.
    pub(crate) fn named(name: &str) -> Self {
        let name = name.to_string();
        Self::new(name.clone(), move |r| column_expr(&name, r.schema))
    }

    /// A Python value as a literal (`lit`), or the column itself.
    pub(crate) fn of(v: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(c) = v.extract::<PyColumn>() {
            return Ok(c);
        }
        let value = literal(v)?;
        let text = v.str()?.to_string();
        Ok(Self::new(text, move |_| {
            Ok(Expr::Literal(value.clone(), None))
        }))
    }

    /// A column given as a name or a Column (PySpark's `ColumnOrName`).
    pub(crate) fn of_name(v: &Bound<'_, PyAny>) -> PyResult<Self> {
        match v.extract::<String>() {
            Ok(s) => Ok(Self::named(&s)),
            Err(_) => v.extract::<PyColumn>().map_err(Into::into),
        }
    }
}

/// A Python scalar as a SQL literal.
pub(crate) fn literal(v: &Bound<'_, PyAny>) -> PyResult<ScalarValue> {
    if v.is_none() {
        return Ok(ScalarValue::Null);
    }
    if v.is_instance_of::<PyBool>() {
        return Ok(ScalarValue::Boolean(Some(v.extract()?)));
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(match v.extract::<i64>() {
            Ok(i) if i32::try_from(i).is_ok() => ScalarValue::Int32(Some(i as i32)),
            Ok(i) => ScalarValue::Int64(Some(i)),
            Err(_) => return Err(analysis(format!("lit: {v} does not fit a BIGINT"))),
        });
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(ScalarValue::Float64(Some(v.extract()?)));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(ScalarValue::Utf8(Some(v.extract()?)));
    }
    Err(analysis(format!(
        "lit: unsupported literal {} of type {}",
        v.repr()?,
        v.get_type().name()?
    )))
}

/// The expression of a column name against a schema (Spark's resolution of `a`, `t.a`,
/// `` `a.b` ``, `s.field`).
fn column_expr(name: &str, schema: &DFSchema) -> PyResult<Expr> {
    if let Some(quoted) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) {
        return Ok(Expr::Column(unqualified(quoted, schema)?));
    }
    if name == "*" {
        return Ok(Expr::Column(sluice::datafusion::common::Column::from_name(
            "*",
        )));
    }
    if let Ok(c) = unqualified(name, schema) {
        return Ok(Expr::Column(c));
    }
    if let Some((head, rest)) = name.split_once('.') {
        // `t.a` (a qualified column) or `s.field` (a struct field)
        if let Ok((q, fld)) = schema.qualified_field_with_name(
            Some(&sluice::datafusion::common::TableReference::bare(head)),
            rest,
        ) {
            return Ok(Expr::Column(sluice::datafusion::common::Column::from((
                q, fld,
            ))));
        }
        let mut e = Expr::Column(unqualified(head, schema)?);
        for part in rest.split('.') {
            e = f::get_field(e, part);
        }
        return Ok(e);
    }
    Err(unknown_column(name, schema))
}

/// A column by its unqualified name, checked to exist (DataFusion resolves it when planning;
/// an ambiguous one is refused there). Unqualified so that derived names are Spark's:
/// `sum(n)`, not `sum(json.n)`.
fn unqualified(name: &str, schema: &DFSchema) -> PyResult<sluice::datafusion::common::Column> {
    schema
        .qualified_field_with_unqualified_name(name)
        .map(|_| sluice::datafusion::common::Column::from_name(name))
        .map_err(|_| unknown_column(name, schema))
}

/// Spark's `UNRESOLVED_COLUMN` message.
pub(crate) fn unknown_column(name: &str, schema: &DFSchema) -> PyErr {
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect();
    analysis(format!(
        "[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column or function parameter with name `{name}` \
         cannot be resolved. Did you mean one of the following? [{}]",
        names.join(", ")
    ))
}

fn binary_op(op: &str) -> PyResult<Operator> {
    Ok(match op {
        "==" => Operator::Eq,
        "!=" => Operator::NotEq,
        "<" => Operator::Lt,
        "<=" => Operator::LtEq,
        ">" => Operator::Gt,
        ">=" => Operator::GtEq,
        "+" => Operator::Plus,
        "-" => Operator::Minus,
        "*" => Operator::Multiply,
        "/" => Operator::Divide,
        "%" => Operator::Modulo,
        "&" => Operator::And,
        "|" => Operator::Or,
        "<=>" => Operator::IsNotDistinctFrom,
        "||" => Operator::StringConcat,
        other => return Err(analysis(format!("unknown operator {other}"))),
    })
}

#[pymethods]
impl PyColumn {
    /// `col(name)`.
    #[staticmethod]
    fn col(name: &str) -> Self {
        Self::named(name)
    }

    /// `lit(value)`.
    #[staticmethod]
    fn lit(value: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::of(value)
    }

    /// `expr(sql)`: a SQL expression, parsed against the DataFrame's schema when used.
    #[staticmethod]
    fn expr(sql: String) -> Self {
        Self::new(sql.clone(), move |r| {
            r.ctx
                .parse_sql_expr(&sql, r.schema)
                .map_err(|e| analysis(format!("expr('{sql}'): {e}")))
        })
    }

    /// A function by Spark's name over columns (`functions.py` calls this).
    #[staticmethod]
    fn call(name: &str, args: Vec<PyColumn>) -> PyResult<Self> {
        call_function(name, args)
    }

    /// `a <op> b` for Python's operators; `reverse` for `1 + col`.
    #[pyo3(signature = (op, other, reverse=false))]
    fn binary(&self, op: &str, other: &Bound<'_, PyAny>, reverse: bool) -> PyResult<Self> {
        let operator = binary_op(op)?;
        let other = Self::of(other)?;
        let (l, r) = if reverse {
            (&other, self)
        } else {
            (self, &other)
        };
        let text = format!("({} {op} {})", l.text, r.text);
        Ok(l.combine(r, text, move |a, b| {
            Ok(Expr::BinaryExpr(
                sluice::datafusion::logical_expr::BinaryExpr::new(
                    Box::new(a),
                    operator,
                    Box::new(b),
                ),
            ))
        }))
    }

    /// `~col`.
    fn not_(&self) -> Self {
        self.map(format!("(NOT {})", self.text), |e| Ok(!e))
    }

    /// `-col`.
    fn neg(&self) -> Self {
        self.map(format!("(- {})", self.text), |e| Ok(-e))
    }

    /// `col.alias(name)` (also a generator's names: `posexplode(x).alias("p", "v")`).
    #[pyo3(signature = (*names))]
    fn alias(&self, names: Vec<String>) -> PyResult<Self> {
        if self.generator.is_some() {
            let mut c = self.clone();
            c.aliases = names;
            return Ok(c);
        }
        let [name] = names.as_slice() else {
            return Err(analysis("alias: one name for a column".to_string()));
        };
        let n = name.clone();
        Ok(self.map(name.clone(), move |e| Ok(e.alias(n.clone()))))
    }

    /// `col.cast(type)`: a DDL type name (`"int"`, `"timestamp"`, `"decimal(10,2)"`).
    fn cast(&self, ddl: &str) -> PyResult<Self> {
        let to = crate::dataframe::ddl_type(ddl)?;
        Ok(self.map(
            format!("CAST({} AS {})", self.text, ddl.to_uppercase()),
            move |e| Ok(f::cast(e, to.clone())),
        ))
    }

    /// `col.isNull()`.
    fn is_null(&self) -> Self {
        self.map(format!("({} IS NULL)", self.text), |e| Ok(e.is_null()))
    }

    /// `col.isNotNull()`.
    fn is_not_null(&self) -> Self {
        self.map(format!("({} IS NOT NULL)", self.text), |e| {
            Ok(e.is_not_null())
        })
    }

    /// `col.isin(values)`.
    fn isin(&self, values: Vec<Bound<'_, PyAny>>) -> PyResult<Self> {
        let list = values.iter().map(Self::of).collect::<PyResult<Vec<_>>>()?;
        let inner = self.clone();
        Ok(Self::new(format!("({} IN (...))", self.text), move |r| {
            let items = list
                .iter()
                .map(|c| c.resolve(r))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(inner.resolve(r)?.in_list(items, false))
        }))
    }

    /// `col.between(lo, hi)`.
    fn between(&self, lo: &Bound<'_, PyAny>, hi: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (lo, hi) = (Self::of(lo)?, Self::of(hi)?);
        let inner = self.clone();
        Ok(Self::new(
            format!("({} BETWEEN ...)", self.text),
            move |r| Ok(inner.resolve(r)?.between(lo.resolve(r)?, hi.resolve(r)?)),
        ))
    }

    /// `col.getField(name)` / `col["name"]` / `col.name` for struct fields.
    fn get_field(&self, name: String) -> Self {
        self.map(format!("{}.{name}", self.text), move |e| {
            Ok(f::get_field(e, name.clone()))
        })
    }

    /// `col.like(pattern)`.
    fn like(&self, pattern: String) -> Self {
        self.map(format!("{} LIKE {pattern}", self.text), move |e| {
            Ok(e.like(Expr::Literal(
                ScalarValue::Utf8(Some(pattern.clone())),
                None,
            )))
        })
    }

    /// The column's text (its name when it is a column reference).
    #[getter]
    fn text_(&self) -> String {
        self.text.to_string()
    }

    /// The name Spark shows for the column.
    fn __str__(&self) -> String {
        format!("Column<'{}'>", self.text)
    }

    fn __repr__(&self) -> String {
        self.__str__()
    }
}
