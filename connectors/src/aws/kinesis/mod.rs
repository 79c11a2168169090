//! The Kinesis source (`format("kinesis")`), with Databricks' option names.
//!
//! Options: `streamName` (required), `region`, `endpoint`, `initialPosition` (`latest`
//! default, `trim_horizon`/`earliest`, or `{"at_timestamp": "2026-12-04T10:00:00Z"}`),
//! `maxRecordsPerFetch` (records read per shard per batch, default 10000),
//! `shardFetchInterval` (how often an idle query looks for records, default 1s),
//! `awsAccessKey`/`awsSecretKey`/`awsSessionToken` (else the environment), and with a schema
//! the JSON shortcut's `mode` and `columnNameOfCorruptRecord`.
//!
//! Rows: `data` (binary), `partitionKey`, `sequenceNumber`, `approximateArrivalTimestamp`,
//! `stream`, `shardId`; with a schema, `data` is parsed as JSON into its columns instead
//! (the other five kept), as the Kafka source's shortcut does.
//!
//! Offsets: per shard, where the query started it, the last sequence number read, and whether
//! it is finished (`shards.rs`). A batch re-run after a crash reads each shard again from the
//! previous batch's position up to its recorded sequence number: the same records. The shards
//! are listed at every batch: a split or merge closes its parents, and a child is read only
//! once every parent is finished. `latest` is resolved once, at the first start, to "records
//! that arrived from this time on", kept in the source's checkpoint directory.

mod fetch;
pub mod shards;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sluice_engine::connector::storage::write_atomic;
use sluice_engine::{
    EngineError, Notifier, Offset, Options, ReadLimit, Result, Source, SourceContext,
    SourceFactory, SourceSpec,
};

use super::ClientSettings;
use crate::formats::shortcut::Shortcut;
use fetch::{Client, Rec};
use shards::{finished, next_read, Pos, Positions, ShardPos};

const KNOWN: &[&str] = &[
    "streamName",
    "region",
    "endpoint",
    "initialPosition",
    "maxRecordsPerFetch",
    "shardFetchInterval",
    "awsAccessKey",
    "awsSecretKey",
    "awsSessionToken",
    "mode",
    "columnNameOfCorruptRecord",
];

/// The columns beside the data (or beside the parsed columns with a schema).
fn meta_fields() -> Vec<Field> {
    vec![
        Field::new("partitionKey", DataType::Utf8, true),
        Field::new("sequenceNumber", DataType::Utf8, true),
        Field::new(
            "approximateArrivalTimestamp",
            sluice_engine::timestamp_type(),
            true,
        ),
        Field::new("stream", DataType::Utf8, true),
        Field::new("shardId", DataType::Utf8, true),
    ]
}

/// Creates Kinesis sources.
#[derive(Debug, Default)]
pub struct KinesisSourceFactory;

fn stream_name(o: &Options) -> Result<String> {
    o.get("streamName")
        .map(str::to_string)
        .ok_or_else(|| EngineError::user("the kinesis source needs option 'streamName'"))
}

fn client(o: &Options) -> Result<Client> {
    let stream = stream_name(o)?;
    let s = ClientSettings::from(o, "", "KINESIS", &format!("kinesis stream {stream}"))?;
    let mut b = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new(s.region.clone()))
        .credentials_provider(s.credentials());
    if let Some(e) = &s.endpoint {
        b = b.endpoint_url(e);
    }
    Ok(Client {
        client: aws_sdk_kinesis::Client::from_conf(b.build()),
        stream,
    })
}

/// `initialPosition` as a position, `latest` at `now_ms`.
fn initial_position(o: &Options, now_ms: i64) -> Result<Pos> {
    let v = o.get("initialPosition").unwrap_or("latest").trim();
    let bad = |why: &str| {
        EngineError::user(format!(
            "option 'initialPosition' = '{v}': {why} (latest, trim_horizon, earliest, or \
             {{\"at_timestamp\": \"2026-12-04T10:00:00Z\"}})"
        ))
    };
    match v.to_ascii_lowercase().as_str() {
        "latest" => Ok(Pos::AtMs(now_ms)),
        "trim_horizon" | "earliest" => Ok(Pos::TrimHorizon),
        _ => {
            let j: serde_json::Value =
                serde_json::from_str(v).map_err(|_| bad("not a position"))?;
            let t = j
                .get("at_timestamp")
                .ok_or_else(|| bad("a JSON position needs at_timestamp"))?;
            match t {
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(Pos::AtMs)
                    .ok_or_else(|| bad("at_timestamp must be ms since the epoch or a time")),
                serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| Pos::AtMs(t.timestamp_millis()))
                    .map_err(|_| bad("at_timestamp is not an RFC 3339 time")),
                _ => Err(bad("at_timestamp must be ms since the epoch or a time")),
            }
        }
    }
}

impl SourceFactory for KinesisSourceFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["kinesis"]
    }

    fn replayable(&self, _spec: &SourceSpec) -> bool {
        true // sequence numbers in the offsets log (within the stream's retention)
    }

    fn check_reachable(&self, spec: &SourceSpec) -> Result<()> {
        client(&spec.options)?.shards().map(|_| ())
    }

    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let o = &spec.options;
        o.check_known("the kinesis source", KNOWN, &[])?;
        stream_name(o)?;
        initial_position(o, 0)?;
        o.get_u64("maxRecordsPerFetch")?;
        o.get_duration("shardFetchInterval")?;
        match &spec.schema {
            None => {
                let mut fields = vec![Field::new("data", DataType::Binary, true)];
                fields.extend(meta_fields());
                Ok(Arc::new(Schema::new(fields)))
            }
            Some(user) => {
                Shortcut::new(user, o)?;
                Shortcut::output_schema(user, meta_fields(), "kinesis")
            }
        }
    }

    fn create(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>> {
        let o = &spec.options;
        let client = client(o)?;
        // `latest` means "from the first start on", also for a re-run of batch 0
        let path = ctx.file("initial-position.json");
        let initial = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                EngineError::user(format!("{} is not a Kinesis position: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let p = initial_position(o, chrono::Utc::now().timestamp_millis())?;
                let text = serde_json::to_vec(&p)
                    .map_err(|e| EngineError::bug(format!("position to JSON: {e}")))?;
                write_atomic(&path, &text)?;
                p
            }
            Err(e) => return Err(EngineError::io(&path, e)),
        };
        Ok(Box::new(KinesisSource {
            description: format!("KinesisSource[{}]", client.stream),
            client,
            shortcut: match &spec.schema {
                Some(user) => Some(Shortcut::new(user, o)?),
                None => None,
            },
            schema,
            initial,
            max_records: o.get_u64("maxRecordsPerFetch")?.unwrap_or(10_000).max(1) as usize,
            interval: o
                .get_duration("shardFetchInterval")?
                .unwrap_or(Duration::from_secs(1)),
            planned: None,
            ticker: None,
        }))
    }
}

/// A running Kinesis source.
pub struct KinesisSource {
    description: String,
    client: Client,
    schema: SchemaRef,
    shortcut: Option<Shortcut>,
    initial: Pos,
    max_records: usize,
    interval: Duration,
    /// The records `latest_offset` read for the batch it planned: (start, end, records).
    planned: Option<(Option<Offset>, Offset, Vec<Rec>)>,
    ticker: Option<crate::util::Ticker>,
}

fn positions(o: Option<&Offset>) -> Result<Positions> {
    match o {
        None => Ok(Positions::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| EngineError::user(format!("not a kinesis source offset: {v}: {e}"))),
    }
}

fn to_offset(p: &Positions) -> Result<Offset> {
    serde_json::to_value(p).map_err(|e| EngineError::bug(format!("kinesis offset to JSON: {e}")))
}

impl KinesisSource {
    fn batch(&self, recs: &[Rec]) -> Result<Vec<RecordBatch>> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let meta: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|r| r.partition_key.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|r| r.seq.as_str()),
            )),
            Arc::new(
                recs.iter()
                    .map(|r| r.arrival_us)
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|_| self.client.stream.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|r| r.shard.as_str()),
            )),
        ];
        let Some(sc) = &self.shortcut else {
            let mut cols: Vec<ArrayRef> = vec![Arc::new(BinaryArray::from_iter_values(
                recs.iter().map(|r| r.data.as_slice()),
            ))];
            cols.extend(meta);
            return Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), cols)?]);
        };
        // per shard, so a FAILFAST error names the shard
        let mut parts = Vec::new();
        let mut i = 0;
        while i < recs.len() {
            let j = recs[i..]
                .iter()
                .position(|r| r.shard != recs[i].shard)
                .map_or(recs.len(), |k| i + k);
            let payloads: Vec<(usize, Option<&[u8]>)> = recs[i..j]
                .iter()
                .enumerate()
                .map(|(k, r)| (k + 1, Some(r.data.as_slice())))
                .collect();
            let what = format!(
                "kinesis stream {} shard {} (records after sequence number {})",
                self.client.stream, recs[i].shard, recs[i].seq
            );
            parts.extend(sc.decode(&what, "record", &payloads)?);
            i = j;
        }
        Ok(vec![sc.assemble(&self.schema, &parts, meta)?])
    }
}

impl Source for KinesisSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn description(&self) -> String {
        self.description.clone()
    }

    fn latest_offset(
        &mut self,
        start: Option<&Offset>,
        _limit: ReadLimit,
    ) -> Result<Option<Offset>> {
        let state = positions(start)?;
        let listing = self.client.shards()?;
        let mut end = state.clone();
        let mut recs = Vec::new();
        for s in &listing {
            let Some((from, pos)) = next_read(s, &listing, &state, &self.initial) else {
                continue;
            };
            let f = self.client.read(&s.id, &pos, self.max_records, None)?;
            let pos = f.records.last().map_or(pos, |r| Pos::After(r.seq.clone()));
            let done = finished(s, &pos, f.records.len(), f.next_iterator);
            end.insert(s.id.clone(), ShardPos { from, pos, done });
            recs.extend(f.records);
        }
        if end == state {
            return Ok(None);
        }
        let end = to_offset(&end)?;
        self.planned = Some((start.cloned(), end.clone(), recs));
        Ok(Some(end))
    }

    fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Vec<RecordBatch>> {
        if let Some((s, e, recs)) = self.planned.take() {
            if s.as_ref() == start && &e == end {
                return self.batch(&recs);
            }
        }
        // a batch run again (after a restart): each shard from the previous batch's position
        // up to the sequence number this batch recorded
        let before = positions(start)?;
        let mut recs = Vec::new();
        for (id, e) in positions(Some(end))? {
            let from = before
                .get(&id)
                .map_or_else(|| e.from.clone(), |p| p.pos.clone());
            let Pos::After(until) = &e.pos else {
                continue; // nothing read from it yet
            };
            if from == e.pos {
                continue;
            }
            recs.extend(
                self.client
                    .read(&id, &from, usize::MAX, Some(until))?
                    .records,
            );
        }
        self.batch(&recs)
    }

    fn watch(&mut self, notifier: Notifier) -> Result<bool> {
        self.ticker = Some(crate::util::Ticker::start(self.interval, notifier));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_positions_are_spark_names_or_a_time() {
        let o = |v: &str| {
            let mut o = Options::new();
            o.set("initialPosition", v);
            o
        };
        // (option, position at now = 7)
        let table: &[(&str, Option<Pos>)] = &[
            ("latest", Some(Pos::AtMs(7))),
            ("TRIM_HORIZON", Some(Pos::TrimHorizon)),
            ("earliest", Some(Pos::TrimHorizon)),
            (
                r#"{"at_timestamp": "2026-12-04T10:00:00Z"}"#,
                Some(Pos::AtMs(1_796_378_400_000)),
            ),
            (r#"{"at_timestamp": 1234}"#, Some(Pos::AtMs(1234))),
            ("yesterday", None),
            (r#"{"at": 1}"#, None),
        ];
        for (v, want) in table {
            assert_eq!(initial_position(&o(v), 7).ok(), *want, "{v}");
        }
    }
}
