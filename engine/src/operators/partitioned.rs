//! The one batch-processing skeleton every stateful operator shares: its input split into
//! partitions by key hash, each partition processed with its own state store on a pool of
//! worker threads, the changes staged, and later the partitions committed.
//!
//! Routing: each row's encoded key (see [`StatefulOperator::partition_key`]) is hashed with
//! XXH64 (seed 42), a hash fixed by its specification, so a key lands in the same partition on
//! every machine and every version; each row is copied once, by Arrow's `interleave`, straight
//! from the batch it came in into its partition's batch (keeping input order).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, interleave_record_batch};
use arrow::datatypes::SchemaRef;
use sluice_state::store::{CommitStats, StateStore};

use crate::error::{EngineError, Result};
use crate::operators::stateful::{OperatorOutput, StatefulOperator, Watermarks};

/// The seed of the partition hash (changing it moves every key: never).
const PARTITION_HASH_SEED: u64 = 42;

/// The partition of an encoded key among `n`.
pub fn partition_of(key: &[u8], n: usize) -> usize {
    (twox_hash::XxHash64::oneshot(PARTITION_HASH_SEED, key) % n.max(1) as u64) as usize
}

/// The state of one stateful operator: one store per partition, owned by the execution.
pub struct OperatorState {
    /// The partitions' stores, by partition index.
    pub stores: Vec<Box<dyn StateStore>>,
}

impl std::fmt::Debug for OperatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorState")
            .field("partitions", &self.stores.len())
            .finish()
    }
}

impl OperatorState {
    /// The batch each partition last committed.
    pub fn committed(&self) -> Vec<Option<u64>> {
        self.stores.iter().map(|s| s.committed_batch()).collect()
    }
}

/// Splits the operator's input `input` (`batches`, of `schema`) into `n` batches, one per
/// partition, by the hash of the operator's key: the rows are copied once, straight into their
/// partition's batch (Arrow's `interleave`), in input order within each partition. One
/// partition, or an operator without a key: the input concatenated, in partition 0.
pub fn split(
    op: &dyn StatefulOperator,
    input: usize,
    batches: &[RecordBatch],
    schema: &SchemaRef,
    n: usize,
) -> Result<Vec<RecordBatch>> {
    let whole = |n: usize| -> Result<Vec<RecordBatch>> {
        let mut out = vec![concat_batches(schema, batches)?];
        out.extend((1..n).map(|_| RecordBatch::new_empty(Arc::clone(schema))));
        Ok(out)
    };
    if n <= 1 {
        return whole(1);
    }
    let mut parts: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (b, batch) in batches.iter().enumerate() {
        let Some(keys) = op.partition_key(input, batch)? else {
            // no key to split by: everything in partition 0
            return whole(n);
        };
        for i in 0..batch.num_rows() {
            parts[partition_of(keys.row(i).data(), n)].push((b, i));
        }
    }
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    parts
        .iter()
        .map(|idx| {
            if idx.is_empty() {
                Ok(RecordBatch::new_empty(Arc::clone(schema)))
            } else {
                Ok(interleave_record_batch(&refs, idx)?)
            }
        })
        .collect()
}

/// Runs `f` over `items` on at most `threads` threads (the calling thread alone when one
/// suffices), returning the results in item order.
pub fn on_workers<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let n = items.len();
    let mut lanes: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % threads].push((i, item));
    }
    let f = &f;
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                s.spawn(move || {
                    lane.into_iter()
                        .map(|(i, item)| (i, f(item)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results.into_iter().flatten().collect()
}

/// Processes one batch of `op`: partition `p` runs `inputs[p]` (one batch per input of the
/// operator) against its store and stages
/// the changes, unless `run[p]` is false (it already committed this batch: its output reached
/// the sink before). Returns each partition's output (`None` where skipped), the changes moved
/// into the store.
pub fn process(
    op: &dyn StatefulOperator,
    state: &mut OperatorState,
    inputs: Vec<Vec<RecordBatch>>,
    run: &[bool],
    watermarks: Watermarks,
    threads: usize,
) -> Result<Vec<Option<OperatorOutput>>> {
    if inputs.len() != state.stores.len() || run.len() != state.stores.len() {
        return Err(EngineError::bug("partition count of a stateful operator"));
    }
    let work: Vec<_> = state
        .stores
        .iter_mut()
        .zip(inputs)
        .zip(run.iter().copied())
        .collect();
    on_workers(work, threads, |((store, input), run)| {
        if !run {
            return Ok(None);
        }
        let mut out = op.process(store.as_ref(), &input, watermarks)?;
        // staged at once: the store encodes and syncs the changes in the background while the
        // output goes on to the next operator and the sink
        store.stage(std::mem::take(&mut out.changes))?;
        Ok(Some(out))
    })
    .into_iter()
    .collect()
}

/// Commits batch `batch_id` in the partitions where `run[p]` (those that staged it), in
/// parallel; the others report their store as it is.
pub fn commit(
    state: &mut OperatorState,
    batch_id: u64,
    run: &[bool],
    threads: usize,
) -> Result<Vec<CommitStats>> {
    let work: Vec<_> = state.stores.iter_mut().zip(run.iter().copied()).collect();
    on_workers(work, threads, |(store, run)| {
        if run {
            Ok(store.commit(batch_id)?)
        } else {
            Ok(CommitStats {
                rows_total: store.rows_total(),
                ..CommitStats::default()
            })
        }
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_of_a_key_is_fixed_by_its_bytes() {
        // one partition takes every key; the hash is XXH64, fixed by its specification, so a
        // key's partition never changes with the machine or the version
        for key in [&b""[..], b"a", b"some longer key"] {
            assert_eq!(partition_of(key, 1), 0);
            assert_eq!(partition_of(key, 0), 0, "0 partitions is taken as 1");
        }
        assert_eq!(
            twox_hash::XxHash64::oneshot(0, b""),
            0xEF46_DB37_51D8_E999,
            "XXH64 of the empty input with seed 0 (the specification's test vector)"
        );
        // keys spread over the partitions
        let mut seen = [0usize; 8];
        for i in 0u32..8000 {
            seen[partition_of(&i.to_be_bytes(), 8)] += 1;
        }
        assert!(seen.iter().all(|c| (800..1200).contains(c)), "{seen:?}");
    }

    #[test]
    fn workers_keep_the_order_of_items() {
        for threads in [1, 2, 3, 8] {
            let out = on_workers((0..10).collect(), threads, |i: i32| i * 2);
            assert_eq!(out, (0..10).map(|i| i * 2).collect::<Vec<_>>(), "{threads}");
        }
    }
}
