//! Small helpers shared by the connectors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::row::{Row, RowConverter, SortField};
use sluice_engine::{Notifier, Result};

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

/// Whether a file-system event can mean a new file to read: a file created, renamed into
/// place, or closed after writing (or, from the polling watcher, any change it saw). Opening,
/// reading or listing a directory is not: the query's own listing opens the directory, and
/// waking on that made an idle query list it again and again. Pure; table-tested.
pub fn may_mean_new_file(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::EventKind as E;
    match kind {
        E::Create(CreateKind::File | CreateKind::Any | CreateKind::Other) => true,
        E::Create(CreateKind::Folder) => true, // a partition directory (`a=1/`) may hold files
        E::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both | RenameMode::Any)) => true,
        E::Modify(ModifyKind::Data(_) | ModifyKind::Any) => true,
        E::Access(AccessKind::Close(AccessMode::Write)) => true,
        // the polling watcher reports what it cannot tell apart as Any
        E::Any => true,
        _ => false,
    }
}

#[cfg(test)]
mod watch_tests {
    use super::may_mean_new_file;
    use notify::event::{
        AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
        RenameMode,
    };
    use notify::EventKind as E;

    #[test]
    fn only_events_that_can_mean_a_new_file_wake_the_query() {
        // (event, wakes)
        let table = [
            (E::Create(CreateKind::File), true),
            (E::Modify(ModifyKind::Name(RenameMode::To)), true),
            (E::Modify(ModifyKind::Name(RenameMode::Both)), true),
            (E::Modify(ModifyKind::Name(RenameMode::From)), false),
            (E::Access(AccessKind::Close(AccessMode::Write)), true),
            (E::Modify(ModifyKind::Data(DataChange::Any)), true),
            (E::Access(AccessKind::Open(AccessMode::Any)), false),
            (E::Access(AccessKind::Read), false),
            (E::Access(AccessKind::Close(AccessMode::Read)), false),
            (E::Modify(ModifyKind::Metadata(MetadataKind::Any)), false),
            (E::Remove(RemoveKind::File), false),
        ];
        for (k, want) in table {
            assert_eq!(may_mean_new_file(&k), want, "{k:?}");
        }
    }
}

/// Wakes the query every interval while it lives (a bucket has no inotify: it is listed
/// again at each tick). Dropping it stops the thread within one tick.
#[derive(Debug)]
pub(crate) struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Ticker {
    pub(crate) fn start(every: Duration, notifier: Notifier) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("bucket-listing".into())
            .spawn(move || {
                while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(every);
                    notifier.notify();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the bucket listing timer: {e}");
        }
        Self(stop)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
