//! Stream-stream joins (Spark's `StreamingSymmetricHashJoinExec`, state format 2) and
//! stream-static joins.
//!
//! A stream-stream join buffers the rows of both sides in the partitioned state store (rows of
//! one join key meet in one partition, whichever side they come from). Per batch and partition:
//! 1. each side's rows at or before the previous batch's watermark are late: dropped before the
//!    join, counted, and handed to the late-data sink;
//! 2. the left rows are joined with the right side's buffered rows and buffered themselves; then
//!    the right rows are joined with the left side's buffered rows (this batch's included, so
//!    a pair arriving together is emitted once) and buffered;
//! 3. rows at or before their side's state watermark (derived from the join condition:
//!    [`bounds`]) are evicted; an outer side's row that never matched is emitted padded with
//!    nulls as it goes.
//!
//! Left semi joins emit a left row once, at its first match, and never buffer a matched one.
//! The stream-static join ([`static_join`]) is stateless: the static side is read into a hash
//! table once per refresh and each stream row probes it.

pub mod bounds;
pub mod keys;
mod process;
pub mod static_join;

use std::fmt;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::PhysicalExpr;
use sluice_state::store::StateStore;

use crate::error::{EngineError, Result};
use crate::operators::stateful::{OperatorOutput, StatefulOperator, Watermarks};

/// The join types a stream-stream join runs (Spark's names in [`fmt::Display`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamJoinType {
    /// `inner`.
    Inner,
    /// `left_outer`.
    LeftOuter,
    /// `right_outer`.
    RightOuter,
    /// `full_outer`.
    FullOuter,
    /// `left_semi`.
    LeftSemi,
}

impl StreamJoinType {
    /// Whether unmatched rows of `side` (0 = left) are emitted padded with nulls.
    pub fn outer(self, side: usize) -> bool {
        matches!(
            (self, side),
            (StreamJoinType::LeftOuter, 0)
                | (StreamJoinType::RightOuter, 1)
                | (StreamJoinType::FullOuter, _)
        )
    }
}

impl fmt::Display for StreamJoinType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamJoinType::Inner => "inner",
            StreamJoinType::LeftOuter => "left_outer",
            StreamJoinType::RightOuter => "right_outer",
            StreamJoinType::FullOuter => "full_outer",
            StreamJoinType::LeftSemi => "left_semi",
        })
    }
}

/// One side of a stream-stream join, as the plan gives it.
#[derive(Debug)]
pub struct JoinSide {
    /// The side's input schema.
    pub schema: SchemaRef,
    /// The equality keys over the side's rows (same order as the other side's).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The side's watermarked event-time column: rows at or before the previous watermark are
    /// late. `None`: the side has no watermark.
    pub late_time: Option<Arc<dyn PhysicalExpr>>,
    /// The time the side's buffered rows are evicted by and the offset of the side's state
    /// watermark from the input watermark, µs. `None`: kept forever.
    pub evict: Option<(Arc<dyn PhysicalExpr>, i64)>,
}

struct Side {
    spec: JoinSide,
    /// All columns of the side, for buffering rows.
    rows: RowConverter,
}

/// The stream-stream join operator (Spark's `symmetricHashJoin`).
pub struct JoinOp {
    kind: StreamJoinType,
    sides: [Side; 2],
    key_types: Vec<DataType>,
    keys: RowConverter,
    /// The whole join condition besides the equality keys, over left ++ right columns.
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left ++ right columns, all nullable.
    joined: SchemaRef,
}

impl fmt::Debug for JoinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinOp")
            .field("kind", &self.kind)
            .field("keys", &self.key_types)
            .finish()
    }
}

fn nullable(fields: &Fields) -> Vec<Field> {
    fields
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect()
}

impl JoinOp {
    /// Builds the operator. `key_types`: the equality keys' types (both sides' keys are cast
    /// to them).
    pub fn new(
        kind: StreamJoinType,
        left: JoinSide,
        right: JoinSide,
        key_types: Vec<DataType>,
        filter: Option<Arc<dyn PhysicalExpr>>,
    ) -> Result<Self> {
        if key_types.is_empty() {
            return Err(EngineError::bug(
                "a stream-stream join without equality keys",
            ));
        }
        let side = |spec: JoinSide| -> Result<Side> {
            let fields = spec
                .schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect();
            Ok(Side {
                rows: RowConverter::new(fields)?,
                spec,
            })
        };
        let mut fields = nullable(left.schema.fields());
        fields.extend(nullable(right.schema.fields()));
        Ok(Self {
            kind,
            keys: RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?,
            key_types,
            sides: [side(left)?, side(right)?],
            filter,
            joined: Arc::new(Schema::new(fields)),
        })
    }

    /// The join type.
    pub fn kind(&self) -> StreamJoinType {
        self.kind
    }

    /// The encoded join keys of `batch`'s rows (of side `side`), and which rows have a null
    /// key (they match nothing).
    fn key_rows(&self, side: usize, batch: &RecordBatch) -> Result<(Rows, Option<Vec<bool>>)> {
        let n = batch.num_rows();
        let mut nulls: Option<Vec<bool>> = None;
        let mut arrays = Vec::with_capacity(self.key_types.len());
        for (k, t) in self.sides[side].spec.keys.iter().zip(&self.key_types) {
            let mut a = k.evaluate(batch)?.into_array(n)?;
            if a.data_type() != t {
                a = cast(&a, t)?;
            }
            if a.null_count() > 0 {
                let v = nulls.get_or_insert_with(|| vec![false; n]);
                for (i, slot) in v.iter_mut().enumerate() {
                    *slot |= a.is_null(i);
                }
            }
            arrays.push(a);
        }
        Ok((self.keys.convert_columns(&arrays)?, nulls))
    }

    /// A batch of the join's columns from the left and right columns.
    fn joined_batch(
        &self,
        left: Vec<ArrayRef>,
        right: Vec<ArrayRef>,
        n: usize,
    ) -> Result<RecordBatch> {
        let mut cols = left;
        cols.extend(right);
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.joined),
            cols,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }

    /// Null columns for side `side`, `n` rows.
    fn nulls_of(&self, side: usize, n: usize) -> Vec<ArrayRef> {
        self.sides[side]
            .spec
            .schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect()
    }

    /// Rows of side `side` padded with nulls for the other side's columns (left ++ right).
    fn padded(&self, side: usize, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
        let other = self.nulls_of(1 - side, n);
        match side {
            0 => self.joined_batch(cols, other, n),
            _ => self.joined_batch(other, cols, n),
        }
    }

    /// Late rows of side `side` in the late-data sink's shape: a `left` and a `right` struct
    /// column, the other side's null.
    fn late_shape(&self, side: usize, late: &RecordBatch) -> Result<RecordBatch> {
        let schema = self.late_schema();
        let n = late.num_rows();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(2);
        for (s, f) in schema.fields().iter().enumerate() {
            let DataType::Struct(fields) = f.data_type() else {
                return Err(EngineError::bug("late-row schema of a join"));
            };
            cols.push(if s == side {
                Arc::new(StructArray::try_new(
                    fields.clone(),
                    late.columns().to_vec(),
                    None,
                )?)
            } else {
                new_null_array(f.data_type(), n)
            });
        }
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    fn late_schema(&self) -> SchemaRef {
        let side = |s: usize, name: &str| {
            Field::new(
                name,
                DataType::Struct(Fields::from(nullable(self.sides[s].spec.schema.fields()))),
                true,
            )
        };
        Arc::new(Schema::new(vec![side(0, "left"), side(1, "right")]))
    }
}

impl StatefulOperator for JoinOp {
    fn name(&self) -> &'static str {
        "symmetricHashJoin"
    }

    fn fingerprint(&self) -> Result<String> {
        let side = |s: usize| -> Vec<String> {
            self.sides[s]
                .spec
                .schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect()
        };
        Ok(serde_json::json!({
            "v": 2,
            "join": self.kind.to_string(),
            "keys": self.key_types.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "left": side(0),
            "right": side(1),
        })
        .to_string())
    }

    fn uses_watermark(&self) -> bool {
        self.sides.iter().any(|s| s.spec.late_time.is_some())
    }

    fn drops_late(&self) -> bool {
        self.uses_watermark()
    }

    fn inputs(&self) -> usize {
        2
    }

    /// The equality keys: rows of both sides with one key meet in one partition.
    fn partition_key(&self, input: usize, batch: &RecordBatch) -> Result<Option<Rows>> {
        Ok(Some(self.key_rows(input.min(1), batch)?.0))
    }

    fn process(
        &self,
        store: &dyn StateStore,
        inputs: &[RecordBatch],
        watermarks: Watermarks,
    ) -> Result<OperatorOutput> {
        let [left, right] = inputs else {
            return Err(EngineError::bug("a join needs two inputs"));
        };
        process::run(self, store, [left, right], watermarks)
    }

    fn late_rows_schema(&self, _inputs: &[SchemaRef]) -> SchemaRef {
        self.late_schema()
    }

    /// Spark: the minimum of both sides' state watermarks and the input watermark (a joined
    /// row can be as old as the oldest row a side still holds).
    fn output_watermark(&self, input_us: i64) -> i64 {
        if input_us <= 0 {
            return input_us;
        }
        self.sides
            .iter()
            .filter_map(|s| s.spec.evict.as_ref().map(|(_, off)| input_us + off))
            .fold(input_us, i64::min)
    }
}
