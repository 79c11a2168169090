//! The Kafka source (librdkafka through rdkafka): Spark's options and row schema, offsets kept
//! in Sluice's checkpoint (never in consumer-group commits).
//!
//! An offset is Spark's JSON `{"topic": {"0": next, "1": next}}`: for each partition the offset
//! after the last record of the batch. The first batch starts at `startingOffsets` (earliest |
//! latest (default) | JSON, -2 = earliest, -1 = latest) or `startingOffsetsByTimestamp`, resolved
//! once and recorded in the source's checkpoint folder, so a re-run reads the same range.
//! Partitions that appear later (new partitions, topics matching `subscribePattern`) start at
//! their earliest offset, recorded in the checkpoint (`partition-starts.json`) before the batch
//! that first reads them is planned, so a re-run of that batch reads the same range. `maxOffsetsPerTrigger` is split across partitions in proportion to their
//! lag (Spark's rule); `minOffsetsPerTrigger` holds a batch back until that many offsets wait or
//! `maxTriggerDelay` has passed. `failOnDataLoss` (default true): offsets that are gone (retention,
//! deleted records) fail the query naming the partition and the range; false: logged, skipped.
//!
//! Low latency: a watcher thread keeps a consumer at the end of every partition and wakes the
//! query the moment a record arrives (no polling interval).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset as KOffset, TopicPartitionList};
use sluice_engine::{EngineError, Notifier, Offset, ReadLimit, Result, Source};

/// Offsets per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

use super::settings::*;
use super::watch::*;

/// Reads records of a set of topic partitions.
pub struct KafkaSource {
    pub(super) cfg: ClientConfig,
    pub(super) consumer: BaseConsumer,
    pub(super) s: Settings,
    pub(super) schema: SchemaRef,
    pub(super) initial: Option<Offsets>,
    pub(super) initial_path: PathBuf,
    /// Where each partition that appeared after the first batch started (read lazily).
    pub(super) new_starts: Option<Offsets>,
    pub(super) new_starts_path: PathBuf,
    pub(super) last_trigger: Instant,
    pub(super) parse: Option<crate::formats::shortcut::Shortcut>,
    pub(super) watcher: Option<Watcher>,
    pub(super) backlog: Option<u64>,
    /// Malformed values in the last batch read (the JSON shortcut).
    pub(super) malformed: u64,
    /// `Trigger::AvailableNow`: the end offsets when the query started; never read past them.
    pub(super) available_now: Option<Offsets>,
}

/// Spark's rule for `maxOffsetsPerTrigger`: each partition gets a share of `limit` in proportion
/// to its lag (rounded down, but at least one offset when its share is below one). Pure.
pub fn rate_limit(from: &Offsets, until: &Offsets, limit: u64) -> Offsets {
    let lag =
        |t: &str, p: i32, u: i64| u - from.get(t).and_then(|m| m.get(&p)).copied().unwrap_or(u);
    let total: i64 = until
        .iter()
        .flat_map(|(t, m)| m.iter().map(move |(p, u)| lag(t, *p, *u)))
        .filter(|l| *l > 0)
        .sum();
    if total <= limit as i64 {
        return until.clone();
    }
    let mut out = Offsets::new();
    for (t, m) in until {
        for (p, u) in m {
            let begin = from.get(t).and_then(|x| x.get(p)).copied().unwrap_or(*u);
            let size = (u - begin).max(0);
            let prorate = limit as f64 * (size as f64 / total as f64);
            let take = if prorate < 1.0 {
                prorate.ceil()
            } else {
                prorate.floor()
            } as i64;
            out.entry(t.clone())
                .or_default()
                .insert(*p, (begin + take).min(*u));
        }
    }
    out
}

impl KafkaSource {
    pub(super) fn topic_partitions(&self) -> Result<Vec<(String, i32)>> {
        let to = self.s.timeout;
        let mut out = Vec::new();
        match &self.s.sub {
            Subscription::Assign(a) => {
                for (t, ps) in a {
                    for p in ps {
                        out.push((t.clone(), *p));
                    }
                }
            }
            Subscription::Topics(ts) => {
                for t in ts {
                    let md = self
                        .consumer
                        .fetch_metadata(Some(t), to)
                        .map_err(|e| kafka_err(&format!("metadata of topic {t}"), e))?;
                    for mt in md.topics() {
                        if mt.error().is_some() || mt.partitions().is_empty() {
                            // a subscribed topic that does not exist (yet) has no partitions
                            continue;
                        }
                        for p in mt.partitions() {
                            out.push((t.clone(), p.id()));
                        }
                    }
                }
            }
            Subscription::Pattern(re) => {
                let md = self
                    .consumer
                    .fetch_metadata(None, to)
                    .map_err(|e| kafka_err("listing topics", e))?;
                for mt in md.topics() {
                    if re.is_match(mt.name()) && mt.error().is_none() {
                        for p in mt.partitions() {
                            out.push((mt.name().to_string(), p.id()));
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub(super) fn watermarks(&self, t: &str, p: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(t, p, self.s.timeout)
            .map_err(|e| kafka_err(&format!("offsets of {t}-{p}"), e))
    }

    /// The offsets the first batch starts from, resolved once and kept in the checkpoint.
    pub(super) fn initial_offsets(&mut self) -> Result<Offsets> {
        if let Some(o) = &self.initial {
            return Ok(o.clone());
        }
        if self.initial_path.exists() {
            let text = std::fs::read_to_string(&self.initial_path)
                .map_err(|e| EngineError::io(&self.initial_path, e))?;
            let o: Offsets = serde_json::from_str(&text).map_err(|e| {
                EngineError::user(format!(
                    "kafka source: corrupt {}: {e}",
                    self.initial_path.display()
                ))
            })?;
            self.initial = Some(o.clone());
            return Ok(o);
        }
        let mut o = Offsets::new();
        for (t, p) in self.topic_partitions()? {
            let (low, high) = self.watermarks(&t, p)?;
            let v = match &self.s.starting {
                Starting::Earliest => low,
                Starting::Latest => high,
                Starting::Json(j) => match j.get(&t).and_then(|m| m.get(&p)) {
                    Some(-2) => low,
                    Some(-1) => high,
                    Some(v) => *v,
                    None => {
                        return Err(EngineError::user(format!(
                            "startingOffsets has no offset for {t}-{p} (give every partition, -2 = earliest, -1 = latest)"
                        )))
                    }
                },
                Starting::ByTimestamp(j) => match j.get(&t).and_then(|m| m.get(&p)) {
                    Some(ts) => {
                        let mut q = TopicPartitionList::new();
                        q.add_partition_offset(&t, p, KOffset::Offset(*ts))
                            .map_err(|e| kafka_err("offsets by timestamp", e))?;
                        let r = self
                            .consumer
                            .offsets_for_times(q, self.s.timeout)
                            .map_err(|e| kafka_err("offsets by timestamp", e))?;
                        match r.find_partition(&t, p).map(|e| e.offset()) {
                            Some(KOffset::Offset(v)) => v,
                            _ => high, // no record at or after the timestamp: start at the end
                        }
                    }
                    None => {
                        return Err(EngineError::user(format!(
                            "startingOffsetsByTimestamp has no timestamp for {t}-{p}"
                        )))
                    }
                },
            };
            o.entry(t).or_default().insert(p, v);
        }
        let text = serde_json::to_string(&o).map_err(|e| EngineError::bug(e.to_string()))?;
        sluice_engine::connector::storage::write_atomic(&self.initial_path, text.as_bytes())?;
        self.initial = Some(o.clone());
        Ok(o)
    }

    /// Partitions that appeared after the first batch, and the offset each started from.
    pub(super) fn new_starts(&mut self) -> Result<&Offsets> {
        if self.new_starts.is_none() {
            let o = match std::fs::read_to_string(&self.new_starts_path) {
                Ok(text) => serde_json::from_str(&text).map_err(|e| {
                    EngineError::user(format!(
                        "kafka source: corrupt {}: {e}",
                        self.new_starts_path.display()
                    ))
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Offsets::new(),
                Err(e) => return Err(EngineError::io(&self.new_starts_path, e)),
            };
            self.new_starts = Some(o);
        }
        self.new_starts
            .as_ref()
            .ok_or_else(|| EngineError::bug("kafka partition starts"))
    }

    /// The offset a partition seen for the first time starts from: the one recorded when a
    /// batch was first planned with it (a re-planned batch gets the same), else its earliest
    /// offset now, recorded before the batch's offsets are.
    pub(super) fn start_of_new_partition(&mut self, t: &str, p: i32, low: i64) -> Result<i64> {
        // a start recorded for a batch that never took the partition (no later batch has it
        // in its start offsets, or it would not be new): moved up to what is there now
        if let Some(b) = self.new_starts()?.get(t).and_then(|x| x.get(&p)) {
            if *b >= low {
                return Ok(*b);
            }
        }
        tracing::info!("kafka: new partition {t}-{p}, reading from its earliest offset {low}");
        let mut all = self.new_starts()?.clone();
        all.entry(t.to_string()).or_default().insert(p, low);
        let text = serde_json::to_string(&all).map_err(|e| EngineError::bug(e.to_string()))?;
        sluice_engine::connector::storage::write_atomic(&self.new_starts_path, text.as_bytes())?;
        self.new_starts = Some(all);
        Ok(low)
    }

    pub(super) fn offsets_of(&mut self, o: Option<&Offset>) -> Result<Offsets> {
        match o {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| EngineError::user(format!("kafka source: bad offset {v}: {e}"))),
            None => self.initial_offsets(),
        }
    }

    pub(super) fn data_loss(&self, t: &str, p: i32, from: i64, low: i64) -> Result<()> {
        let msg = format!(
            "kafka: partition {t}-{p}: offsets {from}..{low} are no longer available (deleted or expired)"
        );
        if self.s.fail_on_data_loss {
            Err(EngineError::user(format!(
                "{msg}; data was lost. Set failOnDataLoss=false to skip it"
            )))
        } else {
            tracing::warn!("{msg}; skipped (failOnDataLoss=false)");
            Ok(())
        }
    }
}

impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn description(&self) -> String {
        match &self.s.sub {
            Subscription::Topics(t) => format!("KafkaV2[Subscribe[{}]]", t.join(",")),
            Subscription::Pattern(p) => format!("KafkaV2[SubscribePattern[{}]]", p.as_str()),
            Subscription::Assign(a) => format!(
                "KafkaV2[Assign[{}]]",
                serde_json::to_string(a).unwrap_or_default()
            ),
        }
    }

    fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let from = self.offsets_of(start)?;
        let mut until = Offsets::new();
        let mut from_all = from.clone();
        for (t, p) in self.topic_partitions()? {
            let (low, high) = self.watermarks(&t, p)?;
            let begin = match from.get(&t).and_then(|m| m.get(&p)) {
                Some(b) => *b,
                None => self.start_of_new_partition(&t, p, low)?,
            };
            let begin = if begin < low {
                self.data_loss(&t, p, begin, low)?;
                low
            } else {
                begin
            };
            let high = match &self.available_now {
                Some(target) => match target.get(&t).and_then(|m| m.get(&p)) {
                    Some(h) => high.min(*h),
                    None => continue, // appeared after the start of an available-now run
                },
                None => high,
            };
            from_all.entry(t.clone()).or_default().insert(p, begin);
            until.entry(t).or_default().insert(p, high.max(begin));
        }
        let lag: i64 = until
            .iter()
            .flat_map(|(t, m)| {
                let from_all = &from_all;
                m.iter().map(move |(p, u)| {
                    u - from_all
                        .get(t)
                        .and_then(|x| x.get(p))
                        .copied()
                        .unwrap_or(*u)
                })
            })
            .sum();
        self.backlog = Some(lag.max(0) as u64);
        if limit == ReadLimit::Configured {
            if let Some(min) = self.s.min_offsets {
                if (lag as u64) < min && self.last_trigger.elapsed() < self.s.max_trigger_delay {
                    return Ok(None);
                }
            }
            if let Some(max) = self.s.max_offsets {
                until = rate_limit(&from_all, &until, max);
            }
        }
        // partitions the brokers do not list now (a topic deleted, or metadata that failed for
        // a moment): kept at their offset, so that if they come back nothing is read twice
        let mut end = Offsets::new();
        for (t, m) in &from {
            for (p, o) in m {
                end.entry(t.clone()).or_default().insert(*p, *o);
                if !until.get(t).is_some_and(|x| x.contains_key(p)) {
                    tracing::warn!(
                        "kafka: partition {t}-{p} is not listed by the brokers (topic deleted, or \
                         its metadata failed); kept at offset {o}"
                    );
                }
            }
        }
        for (t, m) in until {
            for (p, u) in m {
                end.entry(t.clone()).or_default().insert(p, u);
            }
        }
        if end == from {
            return Ok(None);
        }
        self.last_trigger = Instant::now();
        Ok(Some(
            serde_json::to_value(&end).map_err(|e| EngineError::bug(e.to_string()))?,
        ))
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        let from = self.offsets_of(start)?;
        let until = self.offsets_of(Some(end))?;
        let mut ranges = Vec::new();
        for (t, m) in &until {
            for (p, e) in m {
                // a partition new in this batch starts where its planning recorded
                let recorded = match from.get(t).and_then(|x| x.get(p)) {
                    Some(b) => Some(*b),
                    None => self.new_starts()?.get(t).and_then(|x| x.get(p)).copied(),
                };
                let mut s = recorded.unwrap_or(0);
                if s >= *e {
                    continue; // nothing to read (a partition that did not move, or vanished)
                }
                let (low, _) = self.watermarks(t, *p)?;
                if s < low {
                    if recorded.is_some() {
                        self.data_loss(t, *p, s, low)?;
                    }
                    s = low;
                }
                ranges.push((t.clone(), *p, s, *e));
            }
        }
        let recs = self.read(&ranges)?;
        let batch = match &self.parse {
            None => self.raw_batch(&recs)?,
            Some(sc) => {
                crate::formats::take_malformed();
                let b = self.parsed_batch(sc, &recs)?;
                self.malformed = crate::formats::take_malformed();
                b
            }
        };
        Ok(vec![batch])
    }

    fn prepare_for_available_now(&mut self) -> Result<()> {
        let mut target = Offsets::new();
        for (t, p) in self.topic_partitions()? {
            let (_, high) = self.watermarks(&t, p)?;
            target.entry(t).or_default().insert(p, high);
        }
        self.available_now = Some(target);
        Ok(())
    }
    fn watch(&mut self, notifier: Notifier) -> Result<bool> {
        self.start_watch(notifier)
    }

    fn backlog(&self) -> Option<u64> {
        self.backlog
    }

    fn metrics(&self) -> std::collections::BTreeMap<String, String> {
        if self.parse.is_none() {
            return Default::default();
        }
        [(
            crate::file::MALFORMED_METRIC.to_string(),
            self.malformed.to_string(),
        )]
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offs(v: &[(&str, i32, i64)]) -> Offsets {
        let mut o = Offsets::new();
        for (t, p, x) in v {
            o.entry(t.to_string()).or_default().insert(*p, *x);
        }
        o
    }

    #[test]
    fn max_offsets_are_split_by_lag_as_spark_does() {
        let from = offs(&[("a", 0, 0), ("a", 1, 0), ("b", 0, 10)]);
        let until = offs(&[("a", 0, 600), ("a", 1, 300), ("b", 0, 110)]);
        // total lag 1000, limit 100: 60 / 30 / 10
        assert_eq!(
            rate_limit(&from, &until, 100),
            offs(&[("a", 0, 60), ("a", 1, 30), ("b", 0, 20)])
        );
        // under the limit: everything
        assert_eq!(rate_limit(&from, &until, 5000), until);
        // a share below one offset still takes one
        let until = offs(&[("a", 0, 1000), ("a", 1, 1), ("b", 0, 10)]);
        let r = rate_limit(&from, &until, 10);
        assert_eq!(r["a"][&1], 1);
        assert_eq!(r["b"][&0], 10, "no lag, no move");
    }
}
