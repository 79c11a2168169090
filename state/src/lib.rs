//! # sluice-state
//!
//! The durable side of a streaming query.
//!
//! | module        | what it holds |
//! |---------------|---------------|
//! | [`error`]     | [`StateError`], the crate's one error enum, with [`ErrorKind`] saying who must act |
//! | [`atomic`]    | atomic file writes (temp name + fsync + rename + directory fsync) |
//! | [`log`]       | [`VersionedLog`]: a directory of numbered, versioned JSON entries, never overwritten |
//! | [`checkpoint`]| [`CheckpointDir`]: `metadata`, `offsets/N`, `commits/N`, `sources/<i>/` of one query |
//! | [`recovery`]  | pure decisions: [`resolve_start`] (where a restarted query resumes), [`plan_state_recovery`] (restore a snapshot and replay), [`first_log_entry_to_keep`] (retention) |
//! | [`partitions`] | pure decisions over partitioned state: [`partition_actions`] (which partitions re-run a batch after a crash between their commits), [`plan_partitioned_recovery`] |
//! | [`read_only`] | [`ReadOnlyStore`]: a partition store opened read-only for the checkpoint commands (RocksDB read-only mode, changelogs applied in memory) |
//! | [`remote`]    | object storage: [`remote::Location`] (a URL's store, credentials from the environment and options) and [`remote::CheckpointMirror`] (a checkpoint in a bucket, worked on through a local copy) |
//! | [`store`]     | [`StateStore`] / [`StateStoreProvider`]: the traits stateful operators use (stage, commit, snapshots, restore) |
//! | [`rocks`]     | [`RocksStateStore`]: the RocksDB implementation with changelog checkpointing and background snapshots (RocksDB stays in this module) |
//!
//! Nothing in this crate knows about Arrow, DataFusion or any connector.

pub mod atomic;
pub mod checkpoint;
pub mod error;
pub mod log;
pub mod partitions;
pub mod read_only;
pub mod recovery;
pub mod remote;
pub mod rocks;
pub mod store;

pub use checkpoint::{
    state_fingerprint_path, state_is_unpartitioned, state_partition_dirs, state_partitions_found,
    CheckpointDir, CommitEntry, OffsetsEntry, QueryMetadata,
};
pub use error::{ErrorKind, StateError};
pub use log::VersionedLog;
pub use partitions::{partition_actions, plan_partitioned_recovery, BatchActions};
pub use read_only::ReadOnlyStore;
pub use recovery::{
    first_log_entry_to_keep, plan_state_recovery, resolve_start, StartDecision, StateRecovery,
};
pub use rocks::{RocksStateStore, RocksStateStoreProvider, StoreOptions};
pub use store::{CommitStats, StateChanges, StateStore, StateStoreProvider};

/// Result type of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;
