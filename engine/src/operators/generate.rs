//! Spark's generators on a stream: `explode`, `explode_outer`, `posexplode`, `posexplode_outer`
//! — one output row per element of an array column, the other columns repeated. A stateless
//! node ([`GenerateNode`] in the logical plan, `Node::Generate` in the streaming plan), run over
//! whole batches with Arrow's `take` (no row-at-a-time path).
//!
//! Spark's rules: a NULL or empty array gives no row (`_outer`: one row with a NULL element and
//! a NULL position); `posexplode` puts the 0-based position (INT) before the element.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, OffsetSizeTrait, RecordBatch, UInt32Array,
};
use arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::common::{Column, DFSchema, DFSchemaRef, Result as DfResult};
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNodeCore};

use crate::error::{EngineError, Result};

/// The generator node of the logical plan: `column` (an array) replaced by its elements, with
/// a position column named `position` before it when given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GenerateNode {
    /// Input.
    pub input: LogicalPlan,
    /// The array column exploded (its name is kept for the element column).
    pub column: Column,
    /// `posexplode`: the name of the position column.
    pub position: Option<String>,
    /// `_outer`: a NULL or empty array gives one row of NULLs.
    pub outer: bool,
    schema: DFSchemaRef,
}

impl GenerateNode {
    /// Wraps `input`; refuses a column that is not an array, naming it and its type.
    pub fn plan(
        input: LogicalPlan,
        column: Column,
        position: Option<String>,
        outer: bool,
    ) -> Result<LogicalPlan> {
        let in_schema = input.schema();
        let idx = in_schema.index_of_column(&column)?;
        let mut fields = Vec::with_capacity(in_schema.fields().len() + 1);
        for (i, (q, f)) in in_schema.iter().enumerate() {
            if i != idx {
                fields.push((q.cloned(), Arc::clone(f)));
                continue;
            }
            let element = match f.data_type() {
                DataType::List(e) | DataType::LargeList(e) => e.data_type().clone(),
                other => {
                    return Err(EngineError::user(format!(
                        "explode: column '{}' is {other}, not an array (explode takes an array, \
                         e.g. split(value, ' '))",
                        f.name()
                    )))
                }
            };
            if let Some(p) = &position {
                fields.push((q.cloned(), Arc::new(Field::new(p, DataType::Int32, outer))));
            }
            fields.push((q.cloned(), Arc::new(Field::new(f.name(), element, true))));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            in_schema.metadata().clone(),
        )?);
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(GenerateNode {
                input,
                column,
                position,
                outer,
                schema,
            }),
        }))
    }
}

// the schema follows from the other fields
impl PartialOrd for GenerateNode {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        (&self.input, &self.column, &self.position, self.outer).partial_cmp(&(
            &o.input,
            &o.column,
            &o.position,
            o.outer,
        ))
    }
}

impl UserDefinedLogicalNodeCore for GenerateNode {
    fn name(&self) -> &str {
        match (self.position.is_some(), self.outer) {
            (false, false) => "Generate explode",
            (false, true) => "Generate explode_outer",
            (true, false) => "Generate posexplode",
            (true, true) => "Generate posexplode_outer",
        }
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        vec![Expr::Column(self.column.clone())]
    }
    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.column)
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        Ok(Self {
            input: inputs.pop().unwrap_or_else(|| self.input.clone()),
            ..self.clone()
        })
    }
}

/// Runs a generator over one batch: `column` of `batch` exploded into `schema`'s layout.
pub(crate) fn generate(
    batch: &RecordBatch,
    column: usize,
    position: bool,
    outer: bool,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let list = batch.column(column);
    let (rows, elements, positions) = match list.data_type() {
        DataType::List(_) => indices(list.as_list::<i32>(), outer),
        DataType::LargeList(_) => indices(list.as_list::<i64>(), outer),
        other => return Err(EngineError::bug(format!("generate over {other}"))),
    }?;
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, c) in batch.columns().iter().enumerate() {
        if i != column {
            cols.push(arrow::compute::take(c.as_ref(), &rows, None)?);
            continue;
        }
        if position {
            cols.push(Arc::new(positions.clone()));
        }
        let values = match list.data_type() {
            DataType::List(_) => list.as_list::<i32>().values(),
            _ => list.as_list::<i64>().values(),
        };
        cols.push(arrow::compute::take(values.as_ref(), &elements, None)?);
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        cols,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

/// For each output row: the input row, the element's index in the list's values (NULL for an
/// outer row), and its position in the list.
fn indices<O: OffsetSizeTrait>(
    list: &arrow::array::GenericListArray<O>,
    outer: bool,
) -> Result<(UInt32Array, arrow::array::UInt64Array, Int32Array)> {
    let offsets = list.value_offsets();
    let total =
        offsets.last().map_or(0, |o| o.as_usize()) - offsets.first().map_or(0, |o| o.as_usize());
    let mut rows = Vec::with_capacity(total);
    let mut elements = Vec::with_capacity(total);
    let mut positions = Vec::with_capacity(total);
    for i in 0..list.len() {
        let row = u32::try_from(i).map_err(|_| EngineError::bug("batch over 4G rows"))?;
        let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
        let n = if list.is_null(i) { 0 } else { end - start };
        if n == 0 {
            if outer {
                rows.push(row);
                elements.push(None);
                positions.push(None);
            }
            continue;
        }
        if i32::try_from(n).is_err() {
            return Err(EngineError::user(format!(
                "posexplode: an array of {n} elements has positions beyond INT"
            )));
        }
        for (p, e) in (start..end).enumerate() {
            rows.push(row);
            elements.push(Some(e as u64));
            positions.push(Some(p as i32));
        }
    }
    Ok((
        UInt32Array::from(rows),
        arrow::array::UInt64Array::from(elements),
        Int32Array::from(positions),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ListArray, StringArray};
    use arrow::datatypes::{Int32Type, Schema};

    fn batch() -> RecordBatch {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
            Some(vec![]),
            Some(vec![Some(3), None]),
        ]);
        let id = StringArray::from(vec!["a", "b", "c", "d"]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("xs", list.data_type().clone(), true),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(id), Arc::new(list)]).expect("batch")
    }

    fn out_schema(position: bool) -> SchemaRef {
        let mut f = vec![Field::new("id", DataType::Utf8, false)];
        if position {
            f.push(Field::new("pos", DataType::Int32, true));
        }
        f.push(Field::new("xs", DataType::Int32, true));
        Arc::new(Schema::new(f))
    }

    fn rows(b: &RecordBatch) -> Vec<String> {
        let s = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b))
            .expect("format")
            .to_string();
        s.lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn spark_rules_for_null_empty_and_outer() {
        // (position, outer) -> rows, as Spark's explode / posexplode (_outer) give them
        let cases: [(bool, bool, &[&str]); 4] = [
            (
                false,
                false,
                &["| a | 1 |", "| a | 2 |", "| d | 3 |", "| d | |"],
            ),
            (
                false,
                true,
                &[
                    "| a | 1 |",
                    "| a | 2 |",
                    "| b | |",
                    "| c | |",
                    "| d | 3 |",
                    "| d | |",
                ],
            ),
            (
                true,
                false,
                &[
                    "| a | 0 | 1 |",
                    "| a | 1 | 2 |",
                    "| d | 0 | 3 |",
                    "| d | 1 | |",
                ],
            ),
            (
                true,
                true,
                &[
                    "| a | 0 | 1 |",
                    "| a | 1 | 2 |",
                    "| b | | |",
                    "| c | | |",
                    "| d | 0 | 3 |",
                    "| d | 1 | |",
                ],
            ),
        ];
        for (position, outer, want) in cases {
            let out =
                generate(&batch(), 1, position, outer, &out_schema(position)).expect("generate");
            assert_eq!(rows(&out), want, "position={position} outer={outer}");
        }
    }
}
