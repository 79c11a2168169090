//! The stream-static join: each batch's stream rows probe a hash table of the static side,
//! built once per refresh of the static table (every batch by default, as Spark re-reads it;
//! `refresh = "once"` or an interval keeps it), never per row. Stateless: nothing is buffered
//! and the watermark does not apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions,
    UInt32Array,
};
use arrow::compute::{cast, concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{EngineError, Result};
use crate::options::parse_duration;

/// When the static side is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Before every batch (Spark's behaviour; the default).
    EveryBatch,
    /// Once, when the query first needs it.
    Once,
    /// When the last read is older than this.
    Every(Duration),
}

impl Refresh {
    /// From the `refresh` option: `every-batch` (default), `once`, or a duration (`5 minutes`).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value.map(str::trim) {
            None => Ok(Refresh::EveryBatch),
            Some(v) if v.eq_ignore_ascii_case("every-batch") => Ok(Refresh::EveryBatch),
            Some(v) if v.eq_ignore_ascii_case("once") => Ok(Refresh::Once),
            Some(v) => parse_duration(v).map(Refresh::Every).map_err(|e| {
                EngineError::user(format!(
                    "option 'refresh' of a static table must be every-batch, once or a duration \
                     (e.g. '10 minutes'), got '{v}': {e}"
                ))
            }),
        }
    }
}

/// What a stream row does with the static rows it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticJoinKind {
    /// Matching pairs.
    Inner,
    /// Matching pairs, and unmatched stream rows padded with nulls.
    Outer,
    /// Stream rows with a match, once.
    Semi,
    /// Stream rows without a match.
    Anti,
}

/// The stream-static join of one query (built once per query).
pub struct StaticJoin {
    kind: StaticJoinKind,
    /// Whether the stream is the join's left input (its columns come first).
    stream_left: bool,
    stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    static_keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    keys: RowConverter,
    /// The condition besides the equality keys, over left ++ right columns.
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left ++ right columns, nullable.
    joined: SchemaRef,
    /// What the join emits (`joined`, or the stream's columns for semi/anti).
    output: SchemaRef,
    refresh: Refresh,
    cache: Mutex<Option<Built>>,
}

impl std::fmt::Debug for StaticJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticJoin")
            .field("kind", &self.kind)
            .field("refresh", &self.refresh)
            .finish()
    }
}

/// The static side's rows and their hash table.
struct Built {
    at: Instant,
    rows: RecordBatch,
    table: HashMap<Box<[u8]>, Vec<u32>>,
}

/// How the plan describes a stream-static join.
pub struct StaticJoinSpec {
    /// What the join does with stream rows.
    pub kind: StaticJoinKind,
    /// The stream is the left input.
    pub stream_left: bool,
    /// Equality keys over the stream's rows.
    pub stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Equality keys over the static rows.
    pub static_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The keys' common types.
    pub key_types: Vec<DataType>,
    /// The rest of the condition, over left ++ right.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left ++ right, nullable.
    pub joined: SchemaRef,
    /// The join's output.
    pub output: SchemaRef,
    /// When to read the static side again.
    pub refresh: Refresh,
}

impl StaticJoin {
    /// Builds the join.
    pub fn new(spec: StaticJoinSpec) -> Result<Self> {
        Ok(Self {
            keys: RowConverter::new(spec.key_types.iter().cloned().map(SortField::new).collect())?,
            kind: spec.kind,
            stream_left: spec.stream_left,
            stream_keys: spec.stream_keys,
            static_keys: spec.static_keys,
            key_types: spec.key_types,
            filter: spec.filter,
            joined: spec.joined,
            output: spec.output,
            refresh: spec.refresh,
            cache: Mutex::new(None),
        })
    }

    fn key_rows(
        &self,
        exprs: &[Arc<dyn PhysicalExpr>],
        batch: &RecordBatch,
    ) -> Result<(Rows, Vec<bool>)> {
        let n = batch.num_rows();
        let mut null = vec![false; n];
        let mut arrays = Vec::with_capacity(exprs.len());
        for (e, t) in exprs.iter().zip(&self.key_types) {
            let mut a = e.evaluate(batch)?.into_array(n)?;
            if a.data_type() != t {
                a = cast(&a, t)?;
            }
            if a.null_count() > 0 {
                for (i, slot) in null.iter_mut().enumerate() {
                    *slot |= a.is_null(i);
                }
            }
            arrays.push(a);
        }
        Ok((self.keys.convert_columns(&arrays)?, null))
    }

    /// Whether the static side must be read before this batch.
    fn due(&self, built: &Option<Built>) -> bool {
        match (built, self.refresh) {
            (None, _) => true,
            (Some(_), Refresh::EveryBatch) => true,
            (Some(_), Refresh::Once) => false,
            (Some(b), Refresh::Every(iv)) => b.at.elapsed() >= iv,
        }
    }

    /// Joins one batch's stream rows; `read` reads the static side (its rows, of `schema`)
    /// when a refresh is due.
    pub fn run(
        &self,
        read: &dyn Fn() -> Result<(SchemaRef, Vec<RecordBatch>)>,
        stream: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.due(&cache) {
            let (schema, batches) = read()?;
            let rows = concat_batches(&schema, &batches)?;
            let (keys, null) = self.key_rows(&self.static_keys, &rows)?;
            let mut table: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
            for (i, is_null) in null.iter().enumerate() {
                if !is_null {
                    table
                        .entry(keys.row(i).data().into())
                        .or_default()
                        .push(i as u32);
                }
            }
            *cache = Some(Built {
                at: Instant::now(),
                rows,
                table,
            });
        }
        let built = cache
            .as_ref()
            .ok_or_else(|| EngineError::bug("static side not read"))?;
        stream
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| self.probe(built, &b))
            .collect()
    }

    fn probe(&self, built: &Built, batch: &RecordBatch) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let (keys, null) = self.key_rows(&self.stream_keys, batch)?;
        let mut s_idx: Vec<u32> = Vec::new();
        let mut t_idx: Vec<u32> = Vec::new();
        for (i, is_null) in null.iter().enumerate() {
            if *is_null {
                continue;
            }
            if let Some(m) = built.table.get(keys.row(i).data()) {
                for &j in m {
                    s_idx.push(i as u32);
                    t_idx.push(j);
                }
            }
        }
        let pairs = s_idx.len();
        let si = UInt32Array::from(s_idx);
        let ti = UInt32Array::from(t_idx);
        let joined = self.assemble(
            take_all(batch.columns(), &si)?,
            take_all(built.rows.columns(), &ti)?,
            pairs,
        )?;
        let pass: Option<BooleanArray> = match &self.filter {
            Some(f) if pairs > 0 => {
                let m = f.evaluate(&joined)?.into_array(pairs)?;
                let m = m.as_boolean_opt().ok_or_else(|| {
                    EngineError::bug(format!("join condition returned {}", m.data_type()))
                })?;
                Some(
                    (0..pairs)
                        .map(|p| Some(m.is_valid(p) && m.value(p)))
                        .collect(),
                )
            }
            _ => None,
        };
        let passes = |p: usize| pass.as_ref().is_none_or(|m| m.value(p));
        let mut matched = vec![false; n];
        for p in 0..pairs {
            if passes(p) {
                matched[si.value(p) as usize] = true;
            }
        }
        let only_stream = |keep: &dyn Fn(usize) -> bool| -> Result<RecordBatch> {
            let idx: UInt32Array = (0..n as u32).filter(|i| keep(*i as usize)).collect();
            let cols = take_all(batch.columns(), &idx)?;
            Ok(RecordBatch::try_new_with_options(
                Arc::clone(&self.output),
                cols,
                &RecordBatchOptions::new().with_row_count(Some(idx.len())),
            )?)
        };
        match self.kind {
            StaticJoinKind::Semi => only_stream(&|i| matched[i]),
            StaticJoinKind::Anti => only_stream(&|i| !matched[i]),
            StaticJoinKind::Inner | StaticJoinKind::Outer => {
                let mut parts = vec![match &pass {
                    Some(m) => filter_record_batch(&joined, m)?,
                    None => joined,
                }];
                if self.kind == StaticJoinKind::Outer {
                    let idx: UInt32Array =
                        (0..n as u32).filter(|i| !matched[*i as usize]).collect();
                    if !idx.is_empty() {
                        let cols = take_all(batch.columns(), &idx)?;
                        let nulls = built
                            .rows
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| new_null_array(f.data_type(), idx.len()))
                            .collect();
                        parts.push(self.assemble(cols, nulls, idx.len())?);
                    }
                }
                Ok(concat_batches(&self.output, &parts)?)
            }
        }
    }

    /// A batch of left ++ right columns from the stream's and the static side's.
    fn assemble(
        &self,
        stream: Vec<ArrayRef>,
        fixed: Vec<ArrayRef>,
        n: usize,
    ) -> Result<RecordBatch> {
        let (mut cols, rest) = match self.stream_left {
            true => (stream, fixed),
            false => (fixed, stream),
        };
        cols.extend(rest);
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.joined),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?)
    }
}

fn take_all(cols: &[ArrayRef], idx: &UInt32Array) -> Result<Vec<ArrayRef>> {
    cols.iter()
        .map(|c| Ok(take(c.as_ref(), idx, None)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_option() {
        assert_eq!(Refresh::parse(None).expect("ok"), Refresh::EveryBatch);
        assert_eq!(
            Refresh::parse(Some("every-batch")).expect("ok"),
            Refresh::EveryBatch
        );
        assert_eq!(Refresh::parse(Some("ONCE")).expect("ok"), Refresh::Once);
        assert_eq!(
            Refresh::parse(Some("10 minutes")).expect("ok"),
            Refresh::Every(Duration::from_secs(600))
        );
        let e = Refresh::parse(Some("sometimes"))
            .expect_err("an error")
            .to_string();
        assert!(e.contains("'refresh'") && e.contains("sometimes"), "{e}");
    }
}
