//! The crate's error type.

use std::path::PathBuf;

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user: a bad option, a checkpoint that belongs to something else, bad data.
    User,
    /// An external system: the disk, the network, a broker or database. Retrying may help.
    External,
    /// Sluice itself: an invariant was broken.
    Bug,
}

/// Errors of the checkpoint directory and state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation on a checkpoint file failed.
    #[error("checkpoint I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint file exists but cannot be parsed.
    #[error("corrupt checkpoint file {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint file was written by something else or by an unknown format version.
    #[error("checkpoint file {path} has format {found:?}, expected {expected:?}: it was not written by this version of Sluice (or not by Sluice at all); if this is the query's checkpoint, run it with the Sluice version that wrote it (a new checkpoint location would give the query a new id, and its exactly-once sinks would not recognise its batches)")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The version line found.
        found: String,
        /// The version line expected.
        expected: String,
    },
    /// The logs are in a state recovery cannot resolve.
    #[error("inconsistent checkpoint in {dir}: {reason}")]
    Inconsistent {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// An invariant of Sluice's was broken (e.g. RocksDB refused an argument Sluice passed).
    #[error("internal error (a bug in Sluice) in {dir}: {reason}")]
    Bug {
        /// The directory involved.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A setting or location is wrong (a bad URL, an unknown option, refused credentials).
    #[error("{what}: {reason}")]
    Config {
        /// The URL or option.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An object store did not answer as it should (network, server error); retrying may help.
    #[error("object store error on {url}: {reason}")]
    Remote {
        /// The object's URL.
        url: String,
        /// The store's answer.
        reason: String,
    },
    /// Another query wrote an entry of this checkpoint: two queries run on one checkpoint.
    #[error("checkpoint {url}: entry {entry} was written by another query running on the same checkpoint location (the conditional put was refused); this query stops so that no batch is written twice. Run one query per checkpoint location")]
    ConcurrentWriter {
        /// The checkpoint's URL.
        url: String,
        /// The entry (e.g. `offsets/7`).
        entry: String,
    },
    /// Another live process holds the checkpoint's lease.
    #[error("checkpoint {url} is in use by {holder}: another query runs on this checkpoint location; stop it first (if it is dead, delete {url}/_lease)")]
    InUse {
        /// The checkpoint's URL.
        url: String,
        /// Who holds it.
        holder: String,
    },
    /// A process of a group lost a task: a newer epoch of it exists (its new owner took it
    /// after this process was paused or cut off past the group's session timeout).
    #[error("task {task} was taken over (epoch {newer} exists; this process holds epoch {epoch}): it runs in another process of the group now, and this one writes nothing more for it")]
    Fenced {
        /// The task.
        task: u32,
        /// The epoch this process holds.
        epoch: u64,
        /// The newer epoch found.
        newer: u64,
    },
    /// An entry that must not exist twice was written again with other content.
    #[error("log entry {path} already exists with different content")]
    Conflict {
        /// The entry's file.
        path: PathBuf,
    },
}

impl StateError {
    /// Who must act on this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::Io { .. } => ErrorKind::External,
            StateError::Corrupt { .. } | StateError::Foreign { .. } => ErrorKind::User,
            StateError::Inconsistent { .. } => ErrorKind::User,
            StateError::Config { .. }
            | StateError::ConcurrentWriter { .. }
            | StateError::InUse { .. } => ErrorKind::User,
            StateError::Remote { .. } | StateError::Fenced { .. } => ErrorKind::External,
            StateError::Conflict { .. } | StateError::Bug { .. } => ErrorKind::Bug,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.into(),
            source,
        }
    }
}
