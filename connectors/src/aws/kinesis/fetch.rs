//! Kinesis over the AWS SDK: the stream's shards, and a shard's records from a position.

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use sluice_engine::{EngineError, Result};

use super::shards::{seq_cmp, Pos, ShardInfo};
use crate::aws::{block_on, sdk_error};

/// Empty answers in a row a read goes through before it gives up (a stretch without records).
const MAX_EMPTY_READS: usize = 50;

/// One record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub shard: String,
    pub seq: String,
    pub partition_key: String,
    pub data: Vec<u8>,
    /// Approximate arrival, µs since the epoch.
    pub arrival_us: Option<i64>,
}

/// What one read of a shard found.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<Rec>,
    /// Whether the service gave a next iterator (none: the shard is closed and read to its end).
    pub next_iterator: bool,
    pub behind_ms: Option<i64>,
}

/// A client for one stream.
pub struct Client {
    pub(super) client: aws_sdk_kinesis::Client,
    pub(super) stream: String,
}

impl Client {
    /// Every shard of the stream, open and closed.
    pub fn shards(&self) -> Result<Vec<ShardInfo>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let resp = block_on(async move { req.send().await })?.map_err(|e| {
                EngineError::external(format!(
                    "kinesis stream {}: listing its shards: {}",
                    self.stream,
                    sdk_error(&e)
                ))
            })?;
            for s in resp.shards() {
                out.push(ShardInfo {
                    id: s.shard_id().to_string(),
                    parents: [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                        .into_iter()
                        .flatten()
                        .map(str::to_string)
                        .collect(),
                    starting: s
                        .sequence_number_range()
                        .map(|r| r.starting_sequence_number().to_string()),
                    ending: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_string),
                });
            }
            token = resp.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// The records of `shard` after `from`, at most `limit` of them, none after `until` (a
    /// batch read again stops where its first attempt stopped).
    pub fn read(
        &self,
        shard: &str,
        from: &Pos,
        limit: usize,
        until: Option<&str>,
    ) -> Result<Fetched> {
        let what = |e: String| {
            EngineError::external(format!("kinesis stream {} shard {shard}: {e}", self.stream))
        };
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard);
        req = match from {
            Pos::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Pos::AtMs(t) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*t)),
            Pos::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        let resp = block_on(async move { req.send().await })?
            .map_err(|e| what(format!("getting an iterator: {}", sdk_error(&e))))?;
        let mut iterator = resp.shard_iterator().map(str::to_string);
        let mut out = Fetched::default();
        let mut empty_reads = 0;
        while let Some(it) = iterator.take() {
            let want = limit.saturating_sub(out.records.len()).clamp(1, 10_000) as i32;
            let req = self.client.get_records().shard_iterator(it).limit(want);
            let resp = block_on(async move { req.send().await })?
                .map_err(|e| what(format!("reading records: {}", sdk_error(&e))))?;
            out.behind_ms = resp.millis_behind_latest();
            let got = resp.records();
            let mut past_until = false;
            for r in got {
                let seq = r.sequence_number().to_string();
                if until.is_some_and(|u| seq_cmp(&seq, u).is_gt()) {
                    past_until = true;
                    break;
                }
                out.records.push(Rec {
                    shard: shard.to_string(),
                    partition_key: r.partition_key().unwrap_or_default().to_string(),
                    data: r.data().as_ref().to_vec(),
                    arrival_us: r
                        .approximate_arrival_timestamp()
                        .and_then(|t| t.to_millis().ok())
                        .and_then(|ms| ms.checked_mul(1000)),
                    seq,
                });
            }
            iterator = resp.next_shard_iterator().map(str::to_string);
            out.next_iterator = iterator.is_some();
            let reached = until.is_some_and(|u| {
                out.records
                    .last()
                    .is_some_and(|r| seq_cmp(&r.seq, u) != std::cmp::Ordering::Less)
            });
            if past_until || reached || out.records.len() >= limit {
                break;
            }
            if got.is_empty() {
                // an empty answer: caught up, or (when behind) a stretch without records
                empty_reads += 1;
                let caught_up = out.behind_ms.unwrap_or(0) == 0 && until.is_none();
                if caught_up || empty_reads > MAX_EMPTY_READS {
                    break;
                }
                // Kinesis serves five reads a second per shard
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        if let Some(u) = until {
            let reached = out
                .records
                .last()
                .is_some_and(|r| seq_cmp(&r.seq, u) != std::cmp::Ordering::Less);
            if !reached {
                return Err(EngineError::user(format!(
                    "kinesis stream {} shard {shard}: the batch read up to sequence number {u} \
                     before, and those records cannot be read again (past the stream's \
                     retention?); the batch cannot be re-run exactly",
                    self.stream
                )));
            }
        }
        Ok(out)
    }
}
