//! Membership of a Kafka consumer group: which tasks this process runs.
//!
//! The member subscribes to the query's first input topic in the group; the group protocol
//! (the assignor named by `partition.assignment.strategy`, cooperative-sticky by default)
//! gives it partitions, and partition p is task p. The member never reads records: every
//! partition it is given is paused at once, so its polls only heartbeat and serve rebalances.
//! Rebalance callbacks become [`Membership`] events on the daemon's channel; the member's own
//! thread polls until the process stops, then leaves the group (so that the others take its
//! tasks at once rather than after the session timeout).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use sluice_connectors::rdkafka;

use crate::{EngineError, Result};

/// What the group decided for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// These tasks are this process's now.
    Assigned(Vec<u32>),
    /// These tasks are no longer this process's (revoked, or lost: the session expired).
    Revoked(Vec<u32>),
}

struct Context {
    tx: mpsc::Sender<super::Event>,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<u32> {
    let mut v: Vec<u32> = tpl
        .elements()
        .iter()
        .filter_map(|e| u32::try_from(e.partition()).ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            let _ = self
                .tx
                .send(super::Event::Group(Membership::Revoked(partitions(tpl))));
        }
    }
    fn post_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(tpl) => {
                // never read: the member only holds the assignment
                if let Err(e) = c.pause(tpl) {
                    tracing::warn!("group: pausing the assigned partitions: {e}");
                }
                let _ = self
                    .tx
                    .send(super::Event::Group(Membership::Assigned(partitions(tpl))));
            }
            Rebalance::Error(e) => tracing::warn!("group: rebalance error: {e}"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A member of the group, polled on its own thread.
pub struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The group's consumer configuration: the source's `kafka.*` options, then the group.
pub fn config(kafka_options: &BTreeMap<String, String>, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("partition.assignment.strategy", "cooperative-sticky");
    c.set("session.timeout.ms", "10000");
    for (k, v) in kafka_options {
        c.set(k, v);
    }
    c.set("group.id", group);
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c
}

impl Member {
    /// Joins `group` over `topic`; `partition_count` is the topic's partition count (read
    /// with `config`'s connection, for the task layout).
    pub(crate) fn join(
        config: &ClientConfig,
        topic: &str,
        tx: mpsc::Sender<super::Event>,
    ) -> Result<Self> {
        let consumer: BaseConsumer<Context> = config
            .create_with_context(Context { tx })
            .map_err(|e| EngineError::user(format!("group: cannot create its consumer: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| EngineError::external(format!("group: subscribing to {topic}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sluice-group".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    // paused partitions: a poll returns no record, only events
                    if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::warn!("group: {e}");
                    }
                }
                consumer.unsubscribe();
                // leaving the group: the others get this member's tasks without waiting for
                // the session to expire
                drop(consumer);
            })
            .map_err(|e| EngineError::external(format!("group: cannot start its thread: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves the group.
    pub fn leave(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The partition count of each topic (all must be equal: co-partitioned inputs).
pub fn partition_counts(config: &ClientConfig, topics: &[String]) -> Result<Vec<u32>> {
    let c: BaseConsumer = config
        .create()
        .map_err(|e| EngineError::user(format!("group: cannot create a client: {e}")))?;
    topics
        .iter()
        .map(|t| {
            let md = c
                .fetch_metadata(Some(t), Duration::from_secs(10))
                .map_err(|e| EngineError::external(format!("group: metadata of {t}: {e}")))?;
            let n = md
                .topics()
                .iter()
                .find(|x| x.name() == t)
                .map_or(0, |x| x.partitions().len());
            if n == 0 {
                return Err(EngineError::user(format!(
                    "group: topic {t} does not exist (or has no partitions)"
                )));
            }
            Ok(n as u32)
        })
        .collect()
}
