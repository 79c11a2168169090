//! `pyspark.sql.functions` over DataFusion's function registry: a function is looked up by
//! Spark's name (a few renamed to DataFusion's, in [`SPARK_NAMES`]) in the session's scalar
//! functions, then its aggregates, when the column is resolved. The functions whose arguments
//! are not columns (`window`'s durations, `from_json`'s schema) have their own entries.

use std::sync::Arc;

use pyo3::prelude::*;
use sluice::datafusion::common::ScalarValue;
use sluice::datafusion::execution::FunctionRegistry;
use sluice::datafusion::logical_expr::{Expr, ExprFunctionExt, ExprSchemable};
use sluice::functions as f;

use crate::column::{Generator, PyColumn, Resolve};
use crate::errors::analysis;

/// Spark's function names that DataFusion spells differently: (Spark, DataFusion).
const SPARK_NAMES: &[(&str, &str)] = &[
    ("mean", "avg"),
    ("length", "character_length"),
    ("char_length", "character_length"),
    ("size", "cardinality"),
    ("trim", "btrim"),
    ("stddev", "stddev_samp"),
    ("variance", "var_samp"),
    ("ifnull", "coalesce"),
    ("nvl", "coalesce"),
];

/// Spark's date-part functions: (Spark, the part `date_part` takes).
const DATE_PARTS: &[(&str, &str)] = &[
    ("year", "year"),
    ("month", "month"),
    ("dayofmonth", "day"),
    ("day", "day"),
    ("hour", "hour"),
    ("minute", "minute"),
    ("second", "second"),
    ("quarter", "quarter"),
];

fn text_lit(s: &str) -> Expr {
    Expr::Literal(ScalarValue::Utf8(Some(s.to_string())), None)
}

fn resolve_args(args: &[PyColumn], r: &Resolve<'_>) -> PyResult<Vec<Expr>> {
    args.iter().map(|c| c.resolve(r)).collect()
}

fn text_of(name: &str, args: &[PyColumn]) -> String {
    format!(
        "{name}({})",
        args.iter()
            .map(PyColumn::text)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `name(args...)` by Spark's name.
pub(crate) fn call_function(name: &str, args: Vec<PyColumn>) -> PyResult<PyColumn> {
    let spark = name.to_ascii_lowercase();
    let text = text_of(&spark, &args);
    if let Some((_, part)) = DATE_PARTS.iter().find(|(s, _)| *s == spark) {
        let part = part.to_string();
        return Ok(PyColumn::new(text, move |r| {
            let a = resolve_args(&args, r)?;
            let [x] = <[Expr; 1]>::try_from(a).map_err(|_| analysis("takes one column"))?;
            Ok(f::cast(
                f::date_part(text_lit(&part), x),
                sluice::arrow::datatypes::DataType::Int32,
            ))
        }));
    }
    if spark == "dayofweek" {
        // Spark's is 1 (Sunday) to 7; DataFusion's dow 0 to 6
        return Ok(PyColumn::new(text, move |r| {
            let a = resolve_args(&args, r)?;
            let [x] = <[Expr; 1]>::try_from(a).map_err(|_| analysis("takes one column"))?;
            Ok(f::cast(
                f::date_part(text_lit("dow"), x),
                sluice::arrow::datatypes::DataType::Int32,
            ) + Expr::Literal(ScalarValue::Int32(Some(1)), None))
        }));
    }
    if spark == "collect_list" {
        // Spark's collect_list leaves NULLs out
        return Ok(PyColumn::new(text, move |r| {
            let a = resolve_args(&args, r)?;
            let [x] = <[Expr; 1]>::try_from(a).map_err(|_| analysis("takes one column"))?;
            let t = x
                .get_type(r.schema)
                .map_err(|e| analysis(format!("collect_list: {e}")))?;
            let agg = sluice::datafusion::functions_aggregate::array_agg::array_agg_udaf()
                .call(vec![x.clone()])
                .filter(x.is_not_null())
                .build()
                .map_err(|e| analysis(e.to_string()))?;
            // and an empty list, not NULL, when nothing is left
            let empty = ScalarValue::List(ScalarValue::new_list_nullable(&[], &t));
            Ok(f::coalesce(vec![agg, Expr::Literal(empty, None)]))
        }));
    }
    let df_name = SPARK_NAMES
        .iter()
        .find(|(s, _)| *s == spark)
        .map_or(spark.clone(), |(_, d)| d.to_string());
    Ok(PyColumn::new(text, move |r| {
        let a = resolve_args(&args, r)?;
        if let Ok(udf) = r.ctx.udf(&df_name) {
            return Ok(udf.call(a));
        }
        if let Ok(udaf) = r.ctx.udaf(&df_name) {
            return Ok(udaf.call(a));
        }
        Err(analysis(format!(
            "[UNRESOLVED_ROUTINE] Cannot resolve routine `{spark}`: Sluice has no such function"
        )))
    }))
}

/// `window(time, duration [, slide [, start]])` (Spark's tumbling and sliding windows).
#[pyfunction]
#[pyo3(signature = (time, duration, slide=None, start=None))]
pub(crate) fn window(
    time: PyColumn,
    duration: String,
    slide: Option<String>,
    start: Option<String>,
) -> PyResult<PyColumn> {
    if start.is_some() {
        return Err(analysis(
            "window: startTime is not supported yet; windows start at the epoch",
        ));
    }
    let text = format!("window({}, {duration})", time.text());
    Ok(PyColumn::new(text, move |r| {
        let t = time.resolve(r)?;
        Ok(match &slide {
            Some(s) if s != &duration => f::sliding_window(t, &duration, s),
            _ => f::window(t, &duration),
        })
    }))
}

/// `session_window(time, gap)`.
#[pyfunction]
pub(crate) fn session_window(time: PyColumn, gap: String) -> PyColumn {
    let text = format!("session_window({}, {gap})", time.text());
    PyColumn::new(text, move |r| Ok(f::session_window(time.resolve(r)?, &gap)))
}

/// `window_time(window)`.
#[pyfunction]
pub(crate) fn window_time(w: PyColumn) -> PyColumn {
    let text = format!("window_time({})", w.text());
    PyColumn::new(text, move |r| Ok(f::window_time(w.resolve(r)?)))
}

/// `from_json(col, schema)` with a DDL schema.
#[pyfunction]
pub(crate) fn from_json(c: PyColumn, schema: String) -> PyColumn {
    let text = format!("from_json({})", c.text());
    PyColumn::new(text.clone(), move |r| {
        Ok(f::from_json(c.resolve(r)?, &schema))
    })
    .output_name(text)
}

/// `to_json(col)`.
#[pyfunction]
pub(crate) fn to_json(c: PyColumn) -> PyColumn {
    let text = format!("to_json({})", c.text());
    PyColumn::new(text.clone(), move |r| Ok(f::to_json(c.resolve(r)?))).output_name(text)
}

/// `explode(col)` / `posexplode` / `_outer`: a generator column for `select`.
#[pyfunction]
pub(crate) fn explode(c: PyColumn, position: bool, outer: bool) -> PyColumn {
    c.generator(Generator { position, outer })
}

/// `count("*")`, named `count(1)` as Spark names it.
#[pyfunction]
pub(crate) fn count_star() -> PyColumn {
    PyColumn::new("count(1)", |_| {
        Ok(f::count(Expr::Literal(ScalarValue::Int64(Some(1)), None)))
    })
    .output_name("count(1)")
}

/// `count_distinct(cols...)`, named as Spark names it.
#[pyfunction]
pub(crate) fn count_distinct(cols: Vec<PyColumn>) -> PyColumn {
    let text = format!(
        "count(DISTINCT {})",
        cols.iter()
            .map(PyColumn::text)
            .collect::<Vec<_>>()
            .join(", ")
    );
    PyColumn::new(text.clone(), move |r| {
        let args = resolve_args(&cols, r)?;
        sluice::datafusion::functions_aggregate::count::count_udaf()
            .call(args)
            .distinct()
            .build()
            .map_err(|e| analysis(e.to_string()))
    })
    .output_name(text)
}

/// `when(c1, v1).when(c2, v2).otherwise(v)`: SQL's CASE.
#[pyfunction]
#[pyo3(signature = (branches, otherwise=None))]
pub(crate) fn case(branches: Vec<(PyColumn, PyColumn)>, otherwise: Option<PyColumn>) -> PyColumn {
    let branches = Arc::new(branches);
    PyColumn::new("CASE WHEN ...", move |r| {
        let mut b = None::<sluice::datafusion::logical_expr::conditional_expressions::CaseBuilder>;
        for (c, v) in branches.iter() {
            let (c, v) = (c.resolve(r)?, v.resolve(r)?);
            b = Some(match b {
                None => f::when(c, v),
                Some(mut b) => b.when(c, v),
            });
        }
        let mut b = b.ok_or_else(|| analysis("when: no branch"))?;
        let e = match &otherwise {
            Some(o) => b.otherwise(o.resolve(r)?),
            None => b.end(),
        };
        e.map_err(|e| analysis(e.to_string()))
    })
}
