//! Small helpers shared by the connectors.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::row::{Row, RowConverter, SortField};
use sluice_engine::Result;

/// One row per key of `keys` (column names of `schema`), the last one in input order: what an
/// upserting sink writes when a batch repeats a key (a stateless stream in update mode), since
/// an upsert may touch a row only once. Rows keep their input order.
pub fn last_per_key(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    keys: &[String],
) -> Result<RecordBatch> {
    let all = arrow::compute::concat_batches(schema, batches)?;
    let key_cols = keys
        .iter()
        .map(|k| Ok(Arc::clone(all.column(schema.index_of(k)?))))
        .collect::<Result<Vec<_>>>()?;
    let conv = RowConverter::new(
        key_cols
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = conv.convert_columns(&key_cols)?;
    let mut last: HashMap<Row<'_>, u32> = HashMap::with_capacity(rows.num_rows());
    for (i, r) in rows.iter().enumerate() {
        last.insert(r, i as u32);
    }
    if last.len() == all.num_rows() {
        return Ok(all);
    }
    let mut idx: Vec<u32> = last.into_values().collect();
    idx.sort_unstable();
    Ok(arrow::compute::take_record_batch(
        &all,
        &UInt32Array::from(idx),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    #[test]
    fn keeps_the_last_row_of_each_key_in_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let b = |k: Vec<&str>, v: Vec<i64>| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from(k)),
                    Arc::new(Int64Array::from(v)),
                ],
            )
            .expect("batch")
        };
        let out = last_per_key(
            &schema,
            &[
                b(vec!["a", "b", "a"], vec![1, 2, 3]),
                b(vec!["c", "b"], vec![4, 5]),
            ],
            &["k".to_string()],
        )
        .expect("dedup");
        let v: Vec<i64> = out.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(v, vec![3, 4, 5]);
    }
}
