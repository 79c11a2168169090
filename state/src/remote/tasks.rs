//! The checkpoint of a query run as tasks by a group of processes (`sluice run --group`):
//!
//! ```text
//! <checkpoint>/tasks/_layout       v1 + TaskLayout: the task count and topics, written once
//! <checkpoint>/tasks/<t>/          task t's own checkpoint (metadata, offsets, commits, state)
//! <checkpoint>/epochs/<t>/<e>      the lease of epoch e of task t (its owner), created once
//! ```
//!
//! A process that is given task t takes the next epoch: it creates `epochs/<t>/<e>` for the
//! smallest `e` above every epoch there, with a conditional create (the file system's exclusive
//! create, or `If-None-Match: *` in a bucket), so two processes never hold the same epoch. From
//! then on, whatever the task writes carries `e`, and a holder of an older epoch is refused:
//! its checkpoint uploads by [`TaskFence::check`], its sink writes by the sink's own check (the
//! epoch is in the JDBC marker row and in the Delta table's transactions).
//!
//! The checkpoint location may be a path (every process must see the same directory: one
//! machine, or a network file system) or a bucket URL; a task's checkpoint is always worked on
//! through a local copy ([`super::CheckpointMirror`]), so that two processes never open the
//! same RocksDB directory.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{is_remote, local_path, Location, StorageOptions};
use crate::{Result, StateError};

/// What is fixed when a group checkpoint is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLayout {
    /// The query's id (the group's default name is derived from it).
    pub id: String,
    /// How many tasks: the partition count of the input topics.
    pub tasks: u32,
    /// The input topics, sorted.
    pub topics: Vec<String>,
}

/// Who took an epoch of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochOwner {
    /// The process's member name (host and pid).
    pub owner: String,
    /// When it took the epoch, ms since the epoch.
    pub taken_ms: i64,
}

/// A group checkpoint (see the module's notes).
#[derive(Debug, Clone)]
pub struct GroupCheckpoint {
    root: Location,
    /// The location as the user wrote it (a path or a URL).
    shown: String,
}

/// The epoch a process holds on a task, and how to learn that it lost it.
#[derive(Debug, Clone)]
pub struct TaskFence {
    epochs: Location,
    checkpoint: Location,
    /// The task.
    pub task: u32,
    /// The epoch held.
    pub epoch: u64,
}

const LAYOUT: &str = "tasks/_layout";

/// The next epoch to take given those that exist (pure).
pub fn next_epoch(existing: &[u64]) -> u64 {
    existing.iter().max().map_or(1, |m| m + 1)
}

/// Whether a holder of `mine` has lost the task to a newer epoch among `existing` (pure).
pub fn superseded(existing: &[u64], mine: u64) -> Option<u64> {
    existing.iter().copied().filter(|e| *e > mine).max()
}

/// Whether a recorded layout may be used with what the input has now (pure): the task count
/// and the topics must not change.
pub fn check_layout(recorded: &TaskLayout, now_tasks: u32, now_topics: &[String]) -> Result<()> {
    if recorded.topics != now_topics {
        return Err(StateError::Config {
            what: "the group checkpoint".into(),
            reason: format!(
                "it was created for topics {:?} and the query now reads {:?}; a group \
                 checkpoint's tasks are those topics' partitions: use a new checkpoint location",
                recorded.topics, now_topics
            ),
        });
    }
    if recorded.tasks != now_tasks {
        return Err(StateError::Config {
            what: "the group checkpoint".into(),
            reason: format!(
                "it was created with {} tasks (the partitions of {:?} then) and the topics now \
                 have {now_tasks} partitions; the task count cannot change (as Spark refuses a \
                 changed spark.sql.shuffle.partitions): keep the partition count, or start \
                 the query on a new checkpoint location",
                recorded.tasks, recorded.topics
            ),
        });
    }
    Ok(())
}

fn json_entry<T: Serialize>(v: &T) -> Result<Bytes> {
    let json = serde_json::to_string(v).map_err(|e| StateError::Bug {
        dir: std::path::PathBuf::new(),
        reason: format!("to JSON: {e}"),
    })?;
    Ok(Bytes::from(format!("{}\n{json}", crate::log::LOG_VERSION)))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    crate::log::parse_entry::<T>(std::path::Path::new(what), bytes)
}

impl GroupCheckpoint {
    /// Opens the group checkpoint at `location` (a path or a bucket URL), creating nothing.
    pub fn open(location: &str, options: &StorageOptions) -> Result<Self> {
        let root = if is_remote(location) {
            Location::parse(location, options)?
        } else {
            let path = local_path(location).unwrap_or_else(|| location.into());
            Location::local_dir(&path)?
        };
        if root.allows_unsafe_create() {
            return Err(StateError::Config {
                what: location.to_string(),
                reason: format!(
                    "a query run as tasks needs conditional puts for its lease epochs; the \
                     storage option {} cannot be used for it",
                    super::location::ALLOW_UNSAFE_CREATE
                ),
            });
        }
        Ok(Self {
            root,
            shown: location.to_string(),
        })
    }

    /// The layout recorded, if any.
    pub fn layout(&self) -> Result<Option<TaskLayout>> {
        match self.root.get(LAYOUT)? {
            None => Ok(None),
            Some(b) => Ok(Some(parse(&self.root.url_of_key(LAYOUT), &b)?)),
        }
    }

    /// The recorded layout, or `proposed` written as the layout when there is none; a recorded
    /// one must fit `proposed`'s task count and topics.
    pub fn layout_or_create(&self, proposed: &TaskLayout) -> Result<TaskLayout> {
        if let Some(l) = self.layout()? {
            check_layout(&l, proposed.tasks, &proposed.topics)?;
            return Ok(l);
        }
        if self.root.get("metadata")?.is_some() {
            return Err(StateError::Config {
                what: self.shown.clone(),
                reason: "this is the checkpoint of a query run by one process; run as tasks, \
                         the query would start again from its starting offsets. Give the \
                         tasks a new checkpoint location"
                    .into(),
            });
        }
        if self.root.put_new(LAYOUT, json_entry(proposed)?)? {
            return Ok(proposed.clone());
        }
        // another member created it first
        let l = self.layout()?.ok_or_else(|| StateError::Inconsistent {
            dir: self.shown.clone().into(),
            reason: format!("{LAYOUT} exists and cannot be read"),
        })?;
        check_layout(&l, proposed.tasks, &proposed.topics)?;
        Ok(l)
    }

    fn epochs_of(&self, task: u32) -> Location {
        self.root.child(&format!("epochs/{task}"))
    }

    /// The epochs taken on task `t`, with their owners, oldest first.
    pub fn epochs(&self, task: u32) -> Result<Vec<(u64, Option<EpochOwner>)>> {
        let loc = self.epochs_of(task);
        let mut out: Vec<u64> = list_epochs(&loc)?;
        out.sort_unstable();
        out.into_iter()
            .map(|e| {
                let owner = match loc.get(&e.to_string())? {
                    Some(b) => parse::<EpochOwner>(&loc.url_of_key(&e.to_string()), &b).ok(),
                    None => None,
                };
                Ok((e, owner))
            })
            .collect()
    }

    /// Takes the next epoch of task `t` for `owner` (see the module's notes).
    pub fn take_epoch(&self, task: u32, owner: &str) -> Result<TaskFence> {
        let loc = self.epochs_of(task);
        let entry = json_entry(&EpochOwner {
            owner: owner.to_string(),
            taken_ms: chrono_now_ms(),
        })?;
        for _ in 0..100 {
            let e = next_epoch(&list_epochs(&loc)?);
            if loc.put_new(&e.to_string(), entry.clone())? {
                return Ok(TaskFence {
                    epochs: loc,
                    checkpoint: self.root.child(&format!("tasks/{task}")),
                    task,
                    epoch: e,
                });
            }
        }
        Err(StateError::Inconsistent {
            dir: self.shown.clone().into(),
            reason: format!("could not take an epoch of task {task} in 100 attempts"),
        })
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn list_epochs(loc: &Location) -> Result<Vec<u64>> {
    Ok(loc
        .list_below(None)?
        .iter()
        .filter_map(|m| loc.rel_of(&m.location))
        .filter_map(|r| r.parse::<u64>().ok())
        .collect())
}

impl TaskFence {
    /// Refuses when a newer epoch of the task exists: this process lost the task (it was
    /// paused or cut off past the group's session timeout) and must write nothing more.
    pub fn check(&self) -> Result<()> {
        match superseded(&list_epochs(&self.epochs)?, self.epoch) {
            None => Ok(()),
            Some(newer) => Err(StateError::Fenced {
                task: self.task,
                epoch: self.epoch,
                newer,
            }),
        }
    }

    /// The task's own checkpoint location.
    pub fn checkpoint(&self) -> &Location {
        &self.checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_grow_and_a_newer_one_fences() {
        // (existing, next)
        for (existing, next) in [(vec![], 1), (vec![1], 2), (vec![3, 1, 2], 4), (vec![7], 8)] {
            assert_eq!(next_epoch(&existing), next, "{existing:?}");
        }
        // (existing, mine, superseded by)
        for (existing, mine, newer) in [
            (vec![1], 1, None),
            (vec![1, 2], 1, Some(2)),
            (vec![1, 2, 3], 2, Some(3)),
            (vec![1, 2], 2, None),
            (vec![4], 5, None),
        ] {
            assert_eq!(superseded(&existing, mine), newer, "{existing:?} {mine}");
        }
    }

    #[test]
    fn the_layout_cannot_change() {
        let rec = TaskLayout {
            id: "q".into(),
            tasks: 6,
            topics: vec!["a".into()],
        };
        // (tasks now, topics now, ok)
        for (tasks, topics, ok) in [
            (6, vec!["a"], true),
            (8, vec!["a"], false),
            (6, vec!["b"], false),
            (6, vec!["a", "b"], false),
        ] {
            let topics: Vec<String> = topics.into_iter().map(String::from).collect();
            let got = check_layout(&rec, tasks, &topics);
            assert_eq!(got.is_ok(), ok, "{tasks} {topics:?}: {got:?}");
            if tasks == 8 {
                let msg = got.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(
                    msg.contains("6 tasks") && msg.contains("8 partitions"),
                    "{msg}"
                );
            }
        }
    }

    #[test]
    fn two_takers_never_share_an_epoch_and_the_older_is_fenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = GroupCheckpoint::open(&dir.path().display().to_string(), &Default::default())
            .expect("open");
        let a = g.take_epoch(3, "a").expect("a");
        let b = g.take_epoch(3, "b").expect("b");
        assert_eq!((a.epoch, b.epoch), (1, 2));
        assert!(matches!(
            a.check(),
            Err(StateError::Fenced { newer: 2, .. })
        ));
        b.check().expect("the newest holds");
        let owners = g.epochs(3).expect("epochs");
        assert_eq!(owners.len(), 2);
        assert_eq!(owners[1].1.as_ref().map(|o| o.owner.as_str()), Some("b"));
        assert!(g.epochs(4).expect("none").is_empty());
    }
}
