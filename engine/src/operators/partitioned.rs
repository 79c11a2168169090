//! The one batch-processing skeleton every stateful operator shares: its input split into
//! partitions by key hash, each partition processed with its own state store on a pool of
//! worker threads, the changes staged, and later the partitions committed.
//!
//! Routing: each row's encoded key (see [`StatefulOperator::partition_key`]) is hashed with
//! XXH64 (seed 42), a hash fixed by its specification, so a key lands in the same partition on
//! every machine and every version; the rows are then grouped with one counting pass and one
//! Arrow `take` (each partition's rows keep their input order), and the partitions are
//! zero-copy slices of that.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
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

/// Splits `batch` into `n` batches, one per partition, by the hash of the operator's key.
pub fn split(op: &dyn StatefulOperator, batch: &RecordBatch, n: usize) -> Result<Vec<RecordBatch>> {
    if n <= 1 {
        return Ok(vec![batch.clone()]);
    }
    let empty = || batch.slice(0, 0);
    let Some(keys) = op.partition_key(batch)? else {
        // no key to split by: everything in partition 0
        let mut out = vec![batch.clone()];
        out.extend((1..n).map(|_| empty()));
        return Ok(out);
    };
    let rows = batch.num_rows();
    let mut part = Vec::with_capacity(rows);
    let mut counts = vec![0usize; n];
    for i in 0..rows {
        let p = partition_of(keys.row(i).data(), n);
        counts[p] += 1;
        part.push(p as u32);
    }
    // counting sort: the take indices grouped by partition, input order kept within each
    let mut next = Vec::with_capacity(n);
    let mut at = 0usize;
    for c in &counts {
        next.push(at);
        at += c;
    }
    let mut idx = vec![0u32; rows];
    for (i, p) in part.iter().enumerate() {
        let slot = &mut next[*p as usize];
        idx[*slot] = i as u32;
        *slot += 1;
    }
    let grouped = take_record_batch(batch, &UInt32Array::from(idx))?;
    let mut out = Vec::with_capacity(n);
    let mut offset = 0usize;
    for c in counts {
        out.push(grouped.slice(offset, c));
        offset += c;
    }
    Ok(out)
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

/// Processes one batch of `op`: partition `p` runs `inputs[p]` against its store and stages
/// the changes, unless `run[p]` is false (it already committed this batch: its output reached
/// the sink before). Returns each partition's output (`None` where skipped), the changes moved
/// into the store.
pub fn process(
    op: &dyn StatefulOperator,
    state: &mut OperatorState,
    inputs: Vec<RecordBatch>,
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
