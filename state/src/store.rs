//! The state store of stateful operators: traits, with no storage engine in them.
//!
//! One store per partition of a stateful operator (`<checkpoint>/state/<op>/<partition>/`). Keys are the
//! operator's encoded group keys (ordered: operators put the event-time window end first so
//! that eviction is a range scan); values its encoded accumulator states. A store is versioned
//! by batch id: a batch's changes are staged ([`StateStore::stage`]) when the batch computes
//! them and [`StateStore::commit`] makes them, with the batch id, the durable state in one
//! atomic step, so after a crash the store holds exactly the state after some batch N, and
//! [`StateStore::committed_batch`] says which; recovery reconciles N with the commit log.

use std::path::Path;

use crate::Result;

/// The visitor of [`StateStore::scan`]: called with each key and value; `false` stops.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// The changes one micro-batch makes to a store.
#[derive(Debug, Default, Clone)]
pub struct StateChanges {
    /// Keys written (inserted or updated), with their new values.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys removed (evicted or merged away).
    pub deletes: Vec<Vec<u8>>,
    /// Net change in the number of keys (new keys − removed keys), kept as a counter.
    pub rows_delta: i64,
}

/// What a commit did, for progress reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Keys in the store after the commit.
    pub rows_total: u64,
    /// Keys written.
    pub rows_updated: u64,
    /// Keys removed.
    pub rows_removed: u64,
    /// Time the commit held the batch up, ms: waiting for the staged changes' synced write
    /// (which may run in the background from [`StateStore::stage`] on) and making them durable
    /// and visible.
    pub commit_ms: u64,
    /// Estimated memory used by the store, bytes.
    pub memory_used_bytes: u64,
}

/// The state of one stateful operator.
///
/// Called by that operator on its query's thread: reads ([`multi_get`](Self::multi_get),
/// [`scan`](Self::scan)) any time during a batch, [`stage`](Self::stage) of the batch's changes
/// when it has computed them, then one [`commit`](Self::commit) per batch, after the batch's
/// output reached the sink and before its commit-log entry is written. What must hold: a commit
/// is atomic and durable (all of a batch's changes and its id, or none); reads see the last
/// commit (a batch's own staged changes are applied only by its commit).
pub trait StateStore: Send {
    /// The batch whose commit produced the current state; `None` for an empty new store.
    fn committed_batch(&self) -> Option<u64>;

    /// Values of `keys`, in order.
    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Calls `f(key, value)` for keys in `[from, to)` in key order; stops when `f` returns false.
    fn scan(&self, from: &[u8], to: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()>;

    /// Stages the changes of the batch being processed: neither visible to reads nor durable
    /// until [`commit`](Self::commit) (as Spark's RocksDB store records a batch's updates in a
    /// write batch while it runs). Staging again replaces what was staged.
    fn stage(&mut self, changes: StateChanges) -> Result<()>;

    /// Applies the staged changes (none if nothing was staged) as the state after batch
    /// `batch_id`, atomically and durably.
    ///
    /// Callers must commit a batch only once its output is durable downstream: the state may
    /// become durable at `batch_id` before this returns, even when it then fails (an
    /// implementation may apply the changes while making them durable). After a failed commit
    /// (or stage) the store refuses further use; a store opened again on the directory holds
    /// `batch_id` or the batch before it.
    fn commit(&mut self, batch_id: u64) -> Result<CommitStats>;

    /// Number of keys.
    fn rows_total(&self) -> u64;

    /// Writes a consistent snapshot (e.g. to move or inspect a checkpoint) into `dir`.
    fn snapshot(&self, dir: &Path) -> Result<()>;

    /// The batches of the periodic snapshots the store keeps (taken after every
    /// `snapshot_interval`-th commit, the oldest deleted past `min_batches_to_retain`),
    /// ascending.
    fn snapshots(&self) -> Result<Vec<u64>>;

    /// Replaces the state by snapshot `snapshot` (`None`: the empty state). Called by recovery
    /// when the store does not hold the batch the logs need (a state directory restored from
    /// elsewhere, or log entries removed to reprocess); the batches after the snapshot are then
    /// replayed from the offsets log.
    fn restore(&mut self, snapshot: Option<u64>) -> Result<()>;
}

/// Opens state stores: chosen by the application (the `sluice` facade picks RocksDB) and held
/// by its session; every stateful query asks it for one store per operator partition when it
/// starts, with the query's settings.
pub trait StateStoreProvider: Send + Sync {
    /// Opens (creating if missing) the store in `dir`, for writing: one process at a time.
    fn open(&self, dir: &Path, options: &crate::StoreOptions) -> Result<Box<dyn StateStore>>;
}
