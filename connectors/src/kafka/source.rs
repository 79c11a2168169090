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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, Int32Array, Int64Array, ListBuilder, RecordBatch,
    StringArray, StructBuilder, TimestampMicrosecondArray,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset as KOffset, Timestamp, TopicPartitionList};
use sluice_engine::{
    EngineError, Notifier, Offset, Options, ReadLimit, Result, Source, SourceContext,
    SourceFactory, SourceSpec,
};

use crate::formats::{decode_records, Mode, ParseSettings};

/// Offsets per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

const OPTIONS: &[&str] = &[
    "subscribe",
    "subscribePattern",
    "assign",
    "startingOffsets",
    "startingOffsetsByTimestamp",
    "maxOffsetsPerTrigger",
    "minOffsetsPerTrigger",
    "maxTriggerDelay",
    "failOnDataLoss",
    "includeHeaders",
    "kafkaTimeout",
    "mode",
    "columnNameOfCorruptRecord",
];

/// Spark's Kafka row schema (headers when `includeHeaders`).
pub fn kafka_schema(headers: bool) -> Schema {
    let mut f = vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp", sluice_engine::timestamp_type(), true),
        Field::new("timestampType", DataType::Int32, true),
    ];
    if headers {
        f.push(Field::new("headers", headers_type(), true));
    }
    Schema::new(f)
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Binary, true),
    ])
}

fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        true,
    )))
}

/// Metadata columns kept beside the parsed value in the schema shortcut.
fn shortcut_meta() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp", sluice_engine::timestamp_type(), true),
    ]
}

#[derive(Debug, Clone)]
enum Subscription {
    Topics(Vec<String>),
    Pattern(regex::Regex),
    Assign(BTreeMap<String, Vec<i32>>),
}

#[derive(Debug, Clone)]
enum Starting {
    Earliest,
    Latest,
    Json(Offsets),
    ByTimestamp(Offsets),
}

/// librdkafka settings Sluice owns, and why (Spark refuses the same ones for its consumer).
const OWNED: &[(&str, &str)] = &[
    (
        "auto.offset.reset",
        "use startingOffsets (and failOnDataLoss)",
    ),
    (
        "enable.auto.commit",
        "offsets are kept in the checkpoint, never committed to Kafka",
    ),
    (
        "enable.auto.offset.store",
        "offsets are kept in the checkpoint",
    ),
    (
        "enable.partition.eof",
        "the source needs end-of-partition events",
    ),
    (
        "transactional.id",
        "the exactly-once sink derives it from the query id (to fence zombies)",
    ),
    ("enable.idempotence", "set by deliveryGuarantee"),
];

/// The librdkafka configuration: `kafka.*` options (the prefix in any case) without the
/// prefix; a setting Sluice owns is refused with the reason.
pub fn client_config(o: &Options) -> Result<ClientConfig> {
    let mut cfg = ClientConfig::new();
    let mut servers = false;
    for (k, v) in o.iter() {
        if k.len() > 6 && k.is_char_boundary(6) && k[..6].eq_ignore_ascii_case("kafka.") {
            let key = &k[6..];
            if let Some((_, why)) = OWNED.iter().find(|(o, _)| o.eq_ignore_ascii_case(key)) {
                return Err(EngineError::user(format!(
                    "kafka: option '{k}' is not supported: {why}"
                )));
            }
            if key == "bootstrap.servers" {
                servers = true;
            }
            cfg.set(key, v);
        }
    }
    if !servers {
        return Err(EngineError::user(
            "kafka: option 'kafka.bootstrap.servers' is required (e.g. 127.0.0.1:9092)",
        ));
    }
    Ok(cfg)
}

/// Asks the brokers of `kafka.bootstrap.servers` for their metadata (for `sluice validate`):
/// the topics that exist, with their partition counts.
pub fn check_broker(o: &Options) -> Result<BTreeMap<String, usize>> {
    let cfg = client_config(o)?;
    let c: BaseConsumer = cfg
        .create()
        .map_err(|e| kafka_err("creating a client", e))?;
    let servers = o
        .get("kafka.bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let md = c
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| kafka_err(&format!("reaching the brokers {servers}"), e))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect())
}

/// Maps an rdkafka error: the broker or network (retry) or the user.
pub fn kafka_err(what: &str, e: KafkaError) -> EngineError {
    let code = e.rdkafka_error_code();
    let msg = format!("kafka: {what}: {e}");
    match code {
        // UnknownTopicOrPartition is retriable in Kafka's protocol (a topic being created, a
        // leader moving): retried, visibly; `sluice validate` names a topic that does not exist
        Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::InvalidConfig) => {
            EngineError::user(msg)
        }
        _ => match e {
            KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => EngineError::user(msg),
            _ => EngineError::external(msg),
        },
    }
}

fn parse_offsets(text: &str, what: &str) -> Result<Offsets> {
    serde_json::from_str(text).map_err(|e| {
        EngineError::user(format!(
            "option '{what}' must be JSON like {{\"topic\": {{\"0\": 23, \"1\": -2}}}}: {e}"
        ))
    })
}

/// Creates Kafka sources.
#[derive(Debug, Default)]
pub struct KafkaSourceFactory;

struct Settings {
    sub: Subscription,
    starting: Starting,
    max_offsets: Option<u64>,
    min_offsets: Option<u64>,
    max_trigger_delay: Duration,
    fail_on_data_loss: bool,
    include_headers: bool,
    timeout: Duration,
}

fn settings(o: &Options) -> Result<Settings> {
    o.check_known("the kafka source", OPTIONS, &["kafka."])?;
    client_config(o)?;
    let subs: Vec<&str> = ["subscribe", "subscribePattern", "assign"]
        .into_iter()
        .filter(|k| o.get(k).is_some())
        .collect();
    if subs.len() != 1 {
        return Err(EngineError::user(format!(
            "the kafka source needs exactly one of 'subscribe', 'subscribePattern', 'assign'; got {}",
            if subs.is_empty() { "none".to_string() } else { subs.join(", ") }
        )));
    }
    let sub = if let Some(t) = o.get("subscribe") {
        Subscription::Topics(
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    } else if let Some(p) = o.get("subscribePattern") {
        Subscription::Pattern(
            regex::Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| EngineError::user(format!("option 'subscribePattern': {e}")))?,
        )
    } else {
        let a = o.get("assign").unwrap_or_default();
        Subscription::Assign(serde_json::from_str(a).map_err(|e| {
            EngineError::user(format!(
                "option 'assign' must be JSON like {{\"topic\": [0, 1]}}: {e}"
            ))
        })?)
    };
    let starting = match (
        o.get("startingOffsets"),
        o.get("startingOffsetsByTimestamp"),
    ) {
        (Some(_), Some(_)) => {
            return Err(EngineError::user(
                "give only one of 'startingOffsets' and 'startingOffsetsByTimestamp'",
            ))
        }
        (None, Some(t)) => Starting::ByTimestamp(parse_offsets(t, "startingOffsetsByTimestamp")?),
        (Some(s), None) if s.eq_ignore_ascii_case("earliest") => Starting::Earliest,
        (Some(s), None) if s.eq_ignore_ascii_case("latest") => Starting::Latest,
        (Some(s), None) => Starting::Json(parse_offsets(s, "startingOffsets")?),
        (None, None) => Starting::Latest,
    };
    Ok(Settings {
        sub,
        starting,
        max_offsets: o.get_u64("maxOffsetsPerTrigger")?,
        min_offsets: o.get_u64("minOffsetsPerTrigger")?,
        max_trigger_delay: o
            .get_duration("maxTriggerDelay")?
            .unwrap_or(Duration::from_secs(15 * 60)),
        fail_on_data_loss: o.get_bool("failOnDataLoss", true)?,
        include_headers: o.get_bool("includeHeaders", false)?,
        timeout: o
            .get_duration("kafkaTimeout")?
            .unwrap_or(Duration::from_secs(10)),
    })
}

impl SourceFactory for KafkaSourceFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["kafka"]
    }

    fn check_reachable(&self, spec: &SourceSpec) -> Result<()> {
        let topics = check_broker(&spec.options)?;
        // a subscribed topic that does not exist: the query would wait for it (its errors are
        // retried, as Kafka says): most often a typo, so validate names it
        let missing: Vec<String> = match &settings(&spec.options)?.sub {
            Subscription::Topics(ts) => ts
                .iter()
                .filter(|t| !topics.contains_key(*t))
                .cloned()
                .collect(),
            // assigned partitions must exist too
            Subscription::Assign(a) => a
                .iter()
                .flat_map(|(t, ps)| {
                    let n = topics.get(t).copied().unwrap_or(0);
                    ps.iter()
                        .filter(move |p| !usize::try_from(**p).is_ok_and(|p| p < n))
                        .map(move |p| format!("{t}-{p}"))
                })
                .collect(),
            Subscription::Pattern(_) => Vec::new(),
        };
        if !missing.is_empty() {
            return Err(EngineError::user(format!(
                "kafka source: topic(s) or partition(s) {} do not exist on the brokers (a query \
                 would wait for them); existing topics: {}",
                missing.join(", "),
                topics.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    fn replayable(&self, _spec: &SourceSpec) -> bool {
        true // offset ranges in the offsets log
    }
    fn resolve_schema(&self, spec: &SourceSpec) -> Result<SchemaRef> {
        let s = settings(&spec.options)?;
        match &spec.schema {
            None => {
                for k in ["mode", "columnNameOfCorruptRecord"] {
                    if spec.options.get(k).is_some() {
                        return Err(EngineError::user(format!(
                            "kafka source: option '{k}' applies to values parsed with a schema; \
                             without one the rows are the raw records (use from_json(value, ...) \
                             with a mode, or give the source a schema)"
                        )));
                    }
                }
                Ok(Arc::new(kafka_schema(s.include_headers)))
            }
            Some(_) if s.include_headers => Err(EngineError::user(
                "kafka source: includeHeaders with a value schema is not supported: the parsed \
                 rows have no headers column. Read without a schema (rows with `headers`) and \
                 parse with from_json(CAST(value AS STRING), ...)",
            )),
            Some(user) => {
                for f in shortcut_meta() {
                    if user.field_with_name(f.name()).is_ok() {
                        return Err(EngineError::user(format!(
                            "kafka source: the value schema has a column '{}', which the source adds itself \
                             (key, topic, partition, offset, timestamp); rename it",
                            f.name()
                        )));
                    }
                }
                ParseSettings::new(Arc::clone(user), &spec.options)?;
                let mut fields: Vec<Field> =
                    user.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.extend(shortcut_meta());
                Ok(Arc::new(Schema::new(fields)))
            }
        }
    }

    fn create(
        &self,
        spec: &SourceSpec,
        schema: SchemaRef,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>> {
        let s = settings(&spec.options)?;
        let mut cfg = client_config(&spec.options)?;
        // a group id of the user's (Spark's kafka.group.id) is used as given: offsets are never
        // committed to it
        if cfg.get("group.id").is_none() {
            cfg.set(
                "group.id",
                format!("sluice-{}-source-{}", ctx.query_id, ctx.index),
            );
        }
        cfg.set("enable.auto.commit", "false");
        cfg.set("enable.auto.offset.store", "false");
        cfg.set("enable.partition.eof", "true");
        if cfg.get("fetch.error.backoff.ms").is_none() {
            cfg.set("fetch.error.backoff.ms", "10");
        }
        if cfg.get("fetch.wait.max.ms").is_none() {
            cfg.set("fetch.wait.max.ms", "50");
        }
        cfg.set(
            "auto.offset.reset",
            if s.fail_on_data_loss {
                "error"
            } else {
                "earliest"
            },
        );
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_err("creating the consumer", e))?;
        let parse = match &spec.schema {
            Some(user) => {
                // decode permissively with a corrupt column, then apply the user's mode: keeps
                // each parsed row beside its record's key/topic/partition/offset
                let mode = Mode::from_options(&spec.options)?;
                let corrupt = spec
                    .options
                    .get("columnNameOfCorruptRecord")
                    .unwrap_or("_corrupt_record")
                    .to_string();
                let has_corrupt = user.field_with_name(&corrupt).is_ok();
                let mut fields: Vec<Field> =
                    user.fields().iter().map(|f| f.as_ref().clone()).collect();
                if !has_corrupt {
                    fields.push(Field::new(&corrupt, DataType::Utf8, true));
                }
                let mut o = Options::new();
                o.set("columnNameOfCorruptRecord", &corrupt);
                let mut settings = ParseSettings::new(Arc::new(Schema::new(fields)), &o)?;
                settings.mode = if mode == Mode::FailFast {
                    Mode::FailFast
                } else {
                    Mode::Permissive
                };
                Some(Shortcut {
                    settings,
                    mode,
                    keep_corrupt: has_corrupt,
                })
            }
            None => None,
        };
        Ok(Box::new(KafkaSource {
            cfg,
            consumer,
            s,
            schema,
            initial: None,
            initial_path: ctx.checkpoint_dir.join("initial-offsets.json"),
            new_starts: None,
            new_starts_path: ctx.checkpoint_dir.join("partition-starts.json"),
            last_trigger: Instant::now(),
            parse,
            watcher: None,
            backlog: None,
            malformed: 0,
            available_now: None,
        }))
    }
}

struct Shortcut {
    settings: ParseSettings,
    mode: Mode,
    keep_corrupt: bool,
}

struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads records of a set of topic partitions.
pub struct KafkaSource {
    cfg: ClientConfig,
    consumer: BaseConsumer,
    s: Settings,
    schema: SchemaRef,
    initial: Option<Offsets>,
    initial_path: PathBuf,
    /// Where each partition that appeared after the first batch started (read lazily).
    new_starts: Option<Offsets>,
    new_starts_path: PathBuf,
    last_trigger: Instant,
    parse: Option<Shortcut>,
    watcher: Option<Watcher>,
    backlog: Option<u64>,
    /// Malformed values in the last batch read (the JSON shortcut).
    malformed: u64,
    /// `Trigger::AvailableNow`: the end offsets when the query started; never read past them.
    available_now: Option<Offsets>,
}

/// One record, copied out of librdkafka.
struct Rec {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    ts_ms: Option<i64>,
    ts_type: i32,
    headers: Vec<(String, Option<Vec<u8>>)>,
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
    fn topic_partitions(&self) -> Result<Vec<(String, i32)>> {
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

    fn watermarks(&self, t: &str, p: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(t, p, self.s.timeout)
            .map_err(|e| kafka_err(&format!("offsets of {t}-{p}"), e))
    }

    /// The offsets the first batch starts from, resolved once and kept in the checkpoint.
    fn initial_offsets(&mut self) -> Result<Offsets> {
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
        sluice_state::atomic::write_atomic(&self.initial_path, text.as_bytes())?;
        self.initial = Some(o.clone());
        Ok(o)
    }

    /// Partitions that appeared after the first batch, and the offset each started from.
    fn new_starts(&mut self) -> Result<&Offsets> {
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
    fn start_of_new_partition(&mut self, t: &str, p: i32, low: i64) -> Result<i64> {
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
        sluice_state::atomic::write_atomic(&self.new_starts_path, text.as_bytes())?;
        self.new_starts = Some(all);
        Ok(low)
    }

    fn offsets_of(&mut self, o: Option<&Offset>) -> Result<Offsets> {
        match o {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| EngineError::user(format!("kafka source: bad offset {v}: {e}"))),
            None => self.initial_offsets(),
        }
    }

    fn data_loss(&self, t: &str, p: i32, from: i64, low: i64) -> Result<()> {
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

    /// Reads `[from, until)` of each partition.
    fn read(&mut self, ranges: &[(String, i32, i64, i64)]) -> Result<Vec<Rec>> {
        let mut tpl = TopicPartitionList::new();
        let mut left: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (t, p, s, e) in ranges {
            if s < e {
                tpl.add_partition_offset(t, *p, KOffset::Offset(*s))
                    .map_err(|e| kafka_err("assigning", e))?;
                left.insert((t.clone(), *p), *e);
            }
        }
        let mut out = Vec::new();
        if left.is_empty() {
            return Ok(out);
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assigning partitions", e))?;
        // an idle timeout: a large range takes as long as it takes, a silent broker does not
        let idle = self.s.timeout * 3;
        let mut deadline = Instant::now() + idle;
        let result = loop {
            if left.is_empty() {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(EngineError::external(format!(
                    "kafka: no record for {idle:?} while reading {:?}",
                    left.keys().collect::<Vec<_>>()
                )));
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    deadline = Instant::now() + idle;
                    let k = (m.topic().to_string(), m.partition());
                    let Some(&e) = left.get(&k) else { continue };
                    if m.offset() < e {
                        let (ts_ms, ts_type) = match m.timestamp() {
                            Timestamp::CreateTime(t) => (Some(t), 0),
                            Timestamp::LogAppendTime(t) => (Some(t), 1),
                            Timestamp::NotAvailable => (None, -1),
                        };
                        let headers = if self.s.include_headers {
                            m.headers()
                                .map(|h| {
                                    h.iter()
                                        .map(|hd| {
                                            (hd.key.to_string(), hd.value.map(<[u8]>::to_vec))
                                        })
                                        .collect()
                                })
                                .unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        out.push(Rec {
                            topic: k.0.clone(),
                            partition: k.1,
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                            ts_ms,
                            ts_type,
                            headers,
                        });
                    }
                    if m.offset() + 1 >= e {
                        left.remove(&k);
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // records deleted while reading: find the partition
                    let mut lost = None;
                    for ((t, p), _) in left.iter() {
                        let from = out
                            .iter()
                            .filter(|r| &r.topic == t && r.partition == *p)
                            .map(|r| r.offset + 1)
                            .max()
                            .or_else(|| ranges.iter().find(|r| &r.0 == t && r.1 == *p).map(|r| r.2))
                            .unwrap_or(0);
                        if let Ok((low, _)) = self.watermarks(t, *p) {
                            if low > from {
                                lost = Some((t.clone(), *p, from, low));
                            }
                        }
                    }
                    match lost {
                        Some((t, p, from, low)) => break self.data_loss(&t, p, from, low),
                        None => {
                            break Err(EngineError::external(
                                "kafka: offset out of range while reading".to_string(),
                            ))
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // gaps (transaction markers, compaction): the position passes them
                    if let Ok(pos) = self.consumer.position() {
                        for el in pos.elements() {
                            if let KOffset::Offset(p) = el.offset() {
                                let k = (el.topic().to_string(), el.partition());
                                if left.get(&k).is_some_and(|&e| p >= e) {
                                    left.remove(&k);
                                }
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("kafka: consumer: {e}");
                    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                        break Err(kafka_err("reading", e));
                    }
                }
            }
        };
        let _ = self.consumer.unassign();
        result?;
        out.sort_by(|a, b| {
            (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
        });
        Ok(out)
    }

    fn raw_batch(&self, recs: &[Rec]) -> Result<RecordBatch> {
        let key: ArrayRef = Arc::new(
            recs.iter()
                .map(|r| r.key.as_deref())
                .collect::<arrow::array::BinaryArray>(),
        );
        let value: ArrayRef = Arc::new(
            recs.iter()
                .map(|r| r.value.as_deref())
                .collect::<arrow::array::BinaryArray>(),
        );
        let topic: ArrayRef = Arc::new(StringArray::from_iter_values(
            recs.iter().map(|r| r.topic.as_str()),
        ));
        let partition: ArrayRef = Arc::new(Int32Array::from_iter_values(
            recs.iter().map(|r| r.partition),
        ));
        let offset: ArrayRef =
            Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.offset)));
        let ts: ArrayRef = Arc::new(
            recs.iter()
                .map(|r| r.ts_ms.and_then(|t| t.checked_mul(1000)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        );
        let ts_type: ArrayRef =
            Arc::new(Int32Array::from_iter_values(recs.iter().map(|r| r.ts_type)));
        let mut cols = vec![key, value, topic, partition, offset, ts, ts_type];
        if self.s.include_headers {
            let mut b = ListBuilder::new(StructBuilder::from_fields(header_fields(), recs.len()));
            for r in recs {
                for (k, v) in &r.headers {
                    let s = b.values();
                    s.field_builder::<arrow::array::StringBuilder>(0)
                        .ok_or_else(|| EngineError::bug("header key builder"))?
                        .append_value(k);
                    let vb = s
                        .field_builder::<BinaryBuilder>(1)
                        .ok_or_else(|| EngineError::bug("header value builder"))?;
                    match v {
                        Some(v) => vb.append_value(v),
                        None => vb.append_null(),
                    }
                    s.append(true);
                }
                b.append(true);
            }
            cols.push(Arc::new(b.finish()));
        }
        let _ = TimeUnit::Microsecond;
        Ok(RecordBatch::try_new(
            Arc::new(kafka_schema(self.s.include_headers)),
            cols,
        )?)
    }

    /// The schema shortcut: values parsed as JSON into the user's columns, plus metadata.
    fn parsed_batch(&self, sc: &Shortcut, recs: &[Rec]) -> Result<RecordBatch> {
        let schema = Arc::clone(&sc.settings.data_schema);
        let mut parts: Vec<RecordBatch> = Vec::new();
        // per partition, so a FAILFAST error names the partition and offset
        let mut i = 0;
        while i < recs.len() {
            let mut j = i;
            while j < recs.len()
                && recs[j].topic == recs[i].topic
                && recs[j].partition == recs[i].partition
            {
                j += 1;
            }
            let cleaned: Vec<Vec<u8>> = recs[i..j]
                .iter()
                .map(|r| {
                    let v = r.value.as_deref().unwrap_or(b"null");
                    let v: Vec<u8> = v
                        .iter()
                        .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b })
                        .collect();
                    if v.iter().all(u8::is_ascii_whitespace) {
                        b"null".to_vec()
                    } else {
                        v
                    }
                })
                .collect();
            let lines: Vec<(usize, &[u8])> = recs[i..j]
                .iter()
                .zip(&cleaned)
                .map(|(r, v)| (r.offset.max(0) as usize, v.as_slice()))
                .collect();
            let decode = crate::formats::json::line_decoder(Arc::clone(&schema));
            let what = format!(
                "kafka topic {} partition {}",
                recs[i].topic, recs[i].partition
            );
            parts.extend(decode_records(
                &what,
                "offset",
                &lines,
                &sc.settings,
                &decode,
            )?);
            i = j;
        }
        let parsed = arrow::compute::concat_batches(&sc.settings.schema, &parts)?;
        let corrupt_idx = sc
            .settings
            .corrupt_index
            .ok_or_else(|| EngineError::bug("kafka shortcut without corrupt column"))?;
        let keep: BooleanArray = match sc.mode {
            Mode::DropMalformed => parsed
                .column(corrupt_idx)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|c| c.iter().map(|v| Some(v.is_none())).collect())
                .ok_or_else(|| EngineError::bug("corrupt column type"))?,
            _ => BooleanArray::from(vec![true; parsed.num_rows()]),
        };
        let mut cols: Vec<ArrayRef> = Vec::new();
        for (k, c) in parsed.columns().iter().enumerate() {
            if k == corrupt_idx && !sc.keep_corrupt {
                continue;
            }
            cols.push(Arc::clone(c));
        }
        cols.push(Arc::new(
            recs.iter()
                .map(|r| {
                    r.key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                })
                .collect::<StringArray>(),
        ));
        cols.push(Arc::new(StringArray::from_iter_values(
            recs.iter().map(|r| r.topic.as_str()),
        )));
        cols.push(Arc::new(Int32Array::from_iter_values(
            recs.iter().map(|r| r.partition),
        )));
        cols.push(Arc::new(Int64Array::from_iter_values(
            recs.iter().map(|r| r.offset),
        )));
        cols.push(Arc::new(
            recs.iter()
                .map(|r| r.ts_ms.and_then(|t| t.checked_mul(1000)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), cols)?;
        Ok(filter_record_batch(&batch, &keep)?)
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

/// Where the watcher parks on each partition: its current end, by offset (`from_start`
/// partitions: their beginning); the symbolic end when the broker cannot say.
fn parked_positions(
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

fn partitions_for(c: &BaseConsumer, sub: &Subscription, timeout: Duration) -> Vec<(String, i32)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_are_retried_configuration_errors_are_the_users() {
        use sluice_engine::ErrorKind::{External, User};
        // (error, who acts)
        let table = [
            (
                KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
                External,
            ),
            (
                KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
                External,
            ),
            (
                KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed),
                User,
            ),
            (
                KafkaError::MetadataFetch(RDKafkaErrorCode::InvalidConfig),
                User,
            ),
        ];
        for (e, want) in table {
            let what = e.to_string();
            assert_eq!(kafka_err("fetching metadata", e).kind(), want, "{what}");
        }
    }

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

    #[test]
    fn options_are_checked() {
        let mut o = Options::new();
        o.set("kafka.bootstrap.servers", "x:1");
        assert!(settings(&o).is_err(), "no subscription");
        o.set("subscribe", "a,b");
        assert!(settings(&o).is_ok());
        o.set("assign", "{\"a\": [0]}");
        assert!(settings(&o).is_err(), "two subscriptions");
        let mut o = Options::new();
        o.set("kafka.bootstrap.servers", "x:1");
        o.set("subscribe", "a");
        o.set("startingOffsets", "{\"a\": {\"0\": 5, \"1\": -2}}");
        let s = settings(&o).expect("ok");
        assert!(matches!(s.starting, Starting::Json(ref j) if j["a"][&1] == -2));
        o.set("startingOffsets", "nonsense");
        assert!(settings(&o).is_err());
        let mut o = Options::new();
        o.set("subscribe", "a");
        assert!(settings(&o).is_err(), "bootstrap servers required");
    }
}
