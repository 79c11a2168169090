//! Object storage: every place that takes a path also takes a URL.
//!
//! - [`location`]: [`Location`], a prefix in an object store named by a URL (`s3://`, `s3a://`,
//!   `gs://`, `az://`, `abfss://`), built with `object_store` from the environment and from
//!   options (Hadoop's `fs.s3a.*` names where Spark has them); its blocking calls.
//! - [`mirror`]: [`CheckpointMirror`], a checkpoint kept in object storage: a local directory
//!   is its working copy (the live RocksDB stays local, as in Spark and Flink), restored from
//!   the bucket at start and mirrored to it at the query's durable points; log entries are
//!   written with conditional puts (`If-None-Match: *`), so two writers cannot both succeed.
//!
//! - [`tasks`]: [`GroupCheckpoint`], the checkpoint of a query run as tasks by a group of
//!   processes: the task layout, each task's checkpoint, and its lease epochs ([`TaskFence`]).
//!
//! Plain paths and `file://` URLs stay local files: nothing here is used for them, except by a
//! group's tasks (a shared directory is then seen as an object store).

pub mod location;
pub mod mirror;
pub mod tasks;

pub use location::{is_remote, local_path, Location, StorageOptions};
pub use mirror::CheckpointMirror;
pub use tasks::{GroupCheckpoint, TaskFence, TaskLayout};
