//! The Kafka watcher: a consumer parked at the end of every partition wakes the query the
//! moment a record arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset as KOffset, TopicPartitionList};
use sluice_engine::{EngineError, Notifier, Result};

use super::settings::*;
use super::source::KafkaSource;

pub(crate) struct Watcher {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl KafkaSource {
    /// Starts the watcher (see [`Source::watch`]).
    pub(super) fn start_watch(&mut self, notifier: Notifier) -> Result<bool> {
        let mut cfg = self.cfg.clone();
        cfg.set(
            "group.id",
            format!("{}-watch", self.cfg.get("group.id").unwrap_or("sluice")),
        );
        cfg.set("enable.partition.eof", "false");
        // a reset of the watcher's position must not silently skip the records it would have
        // woken the query for: it surfaces as an error, and the watcher re-parks and wakes the
        // query, which reads from its own offsets
        cfg.set("auto.offset.reset", "error");
        cfg.set("fetch.wait.max.ms", "10");
        cfg.set("fetch.error.backoff.ms", "10");
        // after a broker outage, be back within a second or so
        if cfg.get("reconnect.backoff.max.ms").is_none() {
            cfg.set("reconnect.backoff.max.ms", "1000");
        }
        let watcher: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_err("creating the watcher", e))?;
        let parts = self.topic_partitions().unwrap_or_default();
        // park at each partition's end as it is now, by offset: librdkafka resolves a symbolic
        // END later, and a record produced before that (or across a broker outage) would then
        // lie behind the watcher and never wake the query. This runs before the first
        // latest_offset, so every later record is at or after these positions.
        let positions = parked_positions(&watcher, &parts, self.s.timeout, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let sub = self.s.sub.clone();
        let timeout = self.s.timeout;
        let tick = self.s.min_offsets.map(|_| Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name("kafka-watch".into())
            .spawn(move || {
                let assign = |positions: &[(String, i32, KOffset)]| {
                    let mut tpl = TopicPartitionList::new();
                    for (t, p, o) in positions {
                        let _ = tpl.add_partition_offset(t, *p, *o);
                    }
                    let _ = watcher.assign(&tpl);
                };
                assign(&positions);
                let mut known = parts;
                let mut last_refresh = Instant::now();
                let mut last_tick = Instant::now();
                let mut reachable = true;
                while !stop2.load(Ordering::SeqCst) {
                    // a long poll: an idle watcher wakes twice a second, not ten times
                    match watcher.poll(Duration::from_millis(500)) {
                        Some(Ok(_)) => notifier.notify(),
                        Some(Err(KafkaError::MessageConsumption(
                            RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                        ))) => {
                            assign(&parked_positions(&watcher, &known, timeout, &[]));
                            notifier.notify();
                        }
                        _ => {}
                    }
                    if tick.is_some_and(|t| last_tick.elapsed() >= t) {
                        last_tick = Instant::now();
                        notifier.notify();
                    }
                    if last_refresh.elapsed() > Duration::from_secs(2) {
                        last_refresh = Instant::now();
                        let now = partitions_for(&watcher, &sub, timeout);
                        if now.is_empty() {
                            reachable = false;
                            continue;
                        }
                        if now != known {
                            // new partitions or topics: watch them from their beginning (the
                            // query reads them from there too), and wake the query
                            let new: Vec<(String, i32)> =
                                now.iter().filter(|x| !known.contains(x)).cloned().collect();
                            assign(&parked_positions(&watcher, &now, timeout, &new));
                            known = now;
                            notifier.notify();
                        } else if !reachable {
                            // back after an outage: whatever arrived meanwhile is looked at
                            notifier.notify();
                        }
                        reachable = true;
                    }
                }
            })
            .map_err(|e| EngineError::external(format!("cannot start the kafka watcher: {e}")))?;
        self.watcher = Some(Watcher {
            stop,
            thread: Some(thread),
        });
        Ok(true)
    }
}

/// Where the watcher parks on each partition: its current end, by offset (`from_start`
/// partitions: their beginning); the symbolic end when the broker cannot say.
pub(crate) fn parked_positions(
    c: &BaseConsumer,
    parts: &[(String, i32)],
    timeout: Duration,
    from_start: &[(String, i32)],
) -> Vec<(String, i32, KOffset)> {
    parts
        .iter()
        .map(|(t, p)| {
            let o = if from_start.iter().any(|(ft, fp)| ft == t && fp == p) {
                KOffset::Beginning
            } else {
                match c.fetch_watermarks(t, *p, timeout) {
                    Ok((_, high)) => KOffset::Offset(high),
                    Err(_) => KOffset::End,
                }
            };
            (t.clone(), *p, o)
        })
        .collect()
}

pub(crate) fn partitions_for(
    c: &BaseConsumer,
    sub: &Subscription,
    timeout: Duration,
) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    match sub {
        Subscription::Assign(a) => {
            for (t, ps) in a {
                out.extend(ps.iter().map(|p| (t.clone(), *p)));
            }
        }
        Subscription::Topics(ts) => {
            for t in ts {
                if let Ok(md) = c.fetch_metadata(Some(t), timeout) {
                    for mt in md.topics() {
                        out.extend(mt.partitions().iter().map(|p| (t.clone(), p.id())));
                    }
                }
            }
        }
        Subscription::Pattern(re) => {
            if let Ok(md) = c.fetch_metadata(None, timeout) {
                for mt in md.topics() {
                    if re.is_match(mt.name()) {
                        out.extend(
                            mt.partitions()
                                .iter()
                                .map(|p| (mt.name().to_string(), p.id())),
                        );
                    }
                }
            }
        }
    }
    out.sort();
    out
}
