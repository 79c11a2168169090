//! The Kafka sink: `topic` option or a `topic` column; `key`, `value` (default: the whole row as
//! JSON), `partition` and `headers` columns as Spark has them.
//!
//! Exactly-once (`deliveryGuarantee = exactly-once`, the default) through Kafka transactions:
//! each batch is one transaction holding its records and a marker record
//! `key = <query id>, value = <batch id>` in the Sluice-owned topic `commitTopic` (default
//! `_sluice_commits`, created compacted when missing, with one partition and the broker's default
//! replication factor unless `commitTopicReplicationFactor` says otherwise). When the sink opens it reads the last
//! committed marker of its query (read_committed); a re-run batch at or below it is skipped. The
//! `transactional.id` is derived from the query id, so a restarted query fences its zombie and
//! aborts its open transaction. `at-least-once`: an idempotent producer, each batch flushed and
//! checked; a re-run batch is written again (duplicates only from re-runs).

use std::sync::Mutex;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Message, Offset as KOffset, TopicPartitionList};
use sluice_engine::fault::crash_point;
use sluice_engine::{EngineError, OutputMode, Result, Sink, SinkContext, SinkFactory, SinkSpec};

use super::settings::{check_broker, client_config, kafka_err};

const OPTIONS: &[&str] = &[
    "topic",
    "deliveryGuarantee",
    "commitTopic",
    "commitTopicReplicationFactor",
    "kafkaTimeout",
];

/// Creates Kafka sinks.
#[derive(Debug, Default)]
pub struct KafkaSinkFactory;

impl SinkFactory for KafkaSinkFactory {
    fn formats(&self) -> Vec<&'static str> {
        vec!["kafka"]
    }
    fn supported_modes(&self, _format: &str) -> Vec<OutputMode> {
        vec![OutputMode::Append, OutputMode::Update, OutputMode::Complete]
    }
    fn validate(&self, spec: &SinkSpec) -> Result<()> {
        spec.options
            .check_known("the kafka sink", OPTIONS, &["kafka."])?;
        let cfg = client_config(&spec.options)?;
        if cfg.get("group.id").is_some() {
            return Err(EngineError::user(
                "kafka sink: option 'kafka.group.id' is not supported: the sink has no consumer group",
            ));
        }
        guarantee(spec.options.get("deliveryGuarantee"))?;
        Ok(())
    }
    fn check_reachable(&self, spec: &SinkSpec, _ctx: &SinkContext) -> Result<()> {
        check_broker(&spec.options).map(|_| ())
    }
    fn check(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<()> {
        columns(spec, ctx).map(|_| ())
    }
    fn exactly_once(&self, spec: &SinkSpec) -> bool {
        // transactions with a marker per batch; at-least-once writes a re-run batch again
        guarantee(spec.options.get("deliveryGuarantee")).unwrap_or(false)
    }
    fn create(&self, spec: &SinkSpec, ctx: &SinkContext) -> Result<Box<dyn Sink>> {
        self.validate(spec)?;
        let topic = spec.options.get("topic").map(str::to_string);
        let Columns {
            topic_col,
            key_col,
            value_col,
            partition_col,
            headers_col,
        } = columns(spec, ctx)?;
        let exactly_once = guarantee(spec.options.get("deliveryGuarantee"))?;
        let mut cfg = client_config(&spec.options)?;
        let commit_topic = spec
            .options
            .get("commitTopic")
            .unwrap_or("_sluice_commits")
            .to_string();
        if exactly_once {
            cfg.set("transactional.id", format!("sluice-{}", ctx.query_id));
        } else {
            cfg.set("enable.idempotence", "true");
        }
        Ok(Box::new(KafkaSink {
            cfg,
            topic,
            topic_col,
            key_col,
            value_col,
            partition_col,
            headers_col,
            exactly_once,
            commit_topic,
            commit_replication: match spec.options.get_u64("commitTopicReplicationFactor")? {
                None => -1,
                Some(n @ 1..=32767) => n as i32,
                Some(n) => {
                    return Err(EngineError::user(format!(
                        "kafka sink: commitTopicReplicationFactor {n} must be between 1 and 32767"
                    )))
                }
            },
            query_id: ctx.query_id.clone(),
            producer: None,
            last_committed: None,
            timeout: spec
                .options
                .get_duration("kafkaTimeout")?
                .unwrap_or(Duration::from_secs(30)),
        }))
    }
}

/// Where the sink finds each part of a record among the rows it gets.
struct Columns {
    topic_col: Option<usize>,
    key_col: Option<usize>,
    value_col: Option<usize>,
    partition_col: Option<usize>,
    headers_col: Option<usize>,
}

/// The record's columns, checked: a topic (option or column), and `key`, `value`,
/// `partition`, `headers` of the right types when present.
fn columns(spec: &SinkSpec, ctx: &SinkContext) -> Result<Columns> {
    let schema = &ctx.schema;
    let topic_col = schema.index_of("topic").ok();
    if spec.options.get("topic").is_none() && topic_col.is_none() {
        return Err(EngineError::user(
            "the kafka sink needs option 'topic' or a 'topic' column",
        ));
    }
    let col_of =
        |name: &str, ok: &dyn Fn(&DataType) -> bool, want: &str| -> Result<Option<usize>> {
            match schema.index_of(name) {
                Ok(i) if ok(schema.field(i).data_type()) => Ok(Some(i)),
                Ok(i) => Err(EngineError::user(format!(
                    "kafka sink: column '{name}' must be {want}, is {}",
                    schema.field(i).data_type()
                ))),
                Err(_) => Ok(None),
            }
        };
    let bytes = |t: &DataType| {
        matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
        )
    };
    Ok(Columns {
        topic_col,
        key_col: col_of("key", &bytes, "STRING or BINARY")?,
        value_col: col_of("value", &bytes, "STRING or BINARY")?,
        partition_col: col_of("partition", &|t| t.is_integer(), "an integer")?,
        headers_col: col_of(
            "headers",
            &|t| matches!(t, DataType::List(f) if matches!(f.data_type(), DataType::Struct(s) if s.len() == 2)),
            "ARRAY<STRUCT<key: STRING, value: BINARY>>",
        )?,
    })
}

fn guarantee(v: Option<&str>) -> Result<bool> {
    match v.map(|s| s.to_ascii_lowercase().replace('_', "-")) {
        None => Ok(true),
        Some(s) if s == "exactly-once" => Ok(true),
        Some(s) if s == "at-least-once" => Ok(false),
        Some(s) => Err(EngineError::user(format!(
            "option 'deliveryGuarantee' must be exactly-once or at-least-once, got '{s}'"
        ))),
    }
}

/// Collects delivery failures (librdkafka reports them only here).
#[derive(Default)]
struct Ctx {
    errors: Mutex<Vec<String>>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = r {
            if let Ok(mut v) = self.errors.lock() {
                v.push(format!("{}[{}]: {e}", m.topic(), m.partition()));
            }
        }
    }
}

/// Writes batches to Kafka.
pub struct KafkaSink {
    cfg: ClientConfig,
    topic: Option<String>,
    topic_col: Option<usize>,
    key_col: Option<usize>,
    value_col: Option<usize>,
    partition_col: Option<usize>,
    headers_col: Option<usize>,
    exactly_once: bool,
    commit_topic: String,
    /// Replication factor of a commit topic the sink creates (-1: the broker's default).
    commit_replication: i32,
    query_id: String,
    producer: Option<BaseProducer<Ctx>>,
    /// The last batch id committed by this query (exactly-once), read when the sink opens.
    last_committed: Option<Option<u64>>,
    timeout: Duration,
}

fn as_bytes(a: &ArrayRef, i: usize) -> Option<Vec<u8>> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i).as_bytes().to_vec()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).as_bytes().to_vec()),
        DataType::Utf8View => Some(a.as_string_view().value(i).as_bytes().to_vec()),
        DataType::Binary => Some(a.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Some(a.as_binary::<i64>().value(i).to_vec()),
        _ => None,
    }
}

impl KafkaSink {
    fn producer(&mut self) -> Result<&BaseProducer<Ctx>> {
        if self.producer.is_none() {
            let p: BaseProducer<Ctx> = self
                .cfg
                .create_with_context(Ctx::default())
                .map_err(|e| kafka_err("creating the producer", e))?;
            if self.exactly_once {
                // fences an older producer of this query and aborts its open transaction
                p.init_transactions(self.timeout)
                    .map_err(|e| kafka_err("initialising transactions", e))?;
            }
            self.producer = Some(p);
        }
        self.producer
            .as_ref()
            .ok_or_else(|| EngineError::bug("kafka producer"))
    }

    /// Creates the commit topic when it is missing and waits until the broker's metadata lists
    /// it (a topic just created answers UnknownPartition for a moment).
    fn ensure_commit_topic(&self) -> Result<()> {
        let mut cfg = self.cfg.clone();
        cfg.remove("transactional.id");
        cfg.set("allow.auto.create.topics", "false");
        let c: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_err("creating a metadata client", e))?;
        let exists = || {
            c.fetch_metadata(Some(&self.commit_topic), self.timeout)
                .is_ok_and(|md| {
                    md.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
        };
        if exists() {
            return Ok(());
        }
        let admin = self
            .cfg
            .create::<AdminClient<DefaultClientContext>>()
            .map_err(|e| kafka_err("creating an admin client", e))?;
        let t = NewTopic::new(
            &self.commit_topic,
            1,
            TopicReplication::Fixed(self.commit_replication),
        )
        .set("cleanup.policy", "compact");
        let opts = AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout));
        let results =
            futures::executor::block_on(admin.create_topics([&t], &opts)).map_err(|e| {
                kafka_err(
                    &format!("creating the commit topic {}", self.commit_topic),
                    e,
                )
            })?;
        for r in results {
            match r {
                Ok(_) => tracing::info!("kafka: created the commit topic {}", self.commit_topic),
                // created meanwhile by another query: fine
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(kafka_err(
                        &format!("creating the commit topic {}", self.commit_topic),
                        KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        let deadline = std::time::Instant::now() + self.timeout;
        while !exists() {
            if std::time::Instant::now() > deadline {
                return Err(EngineError::external(format!(
                    "kafka: the commit topic {} was created but the brokers do not list it yet",
                    self.commit_topic
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The last batch id this query committed, from the markers in the commit topic.
    fn read_last_committed(&self) -> Result<Option<u64>> {
        let mut cfg = self.cfg.clone();
        cfg.remove("transactional.id");
        cfg.set("group.id", format!("sluice-{}-markers", self.query_id));
        cfg.set("enable.auto.commit", "false");
        cfg.set("isolation.level", "read_committed");
        cfg.set("enable.partition.eof", "true");
        cfg.set("auto.offset.reset", "earliest");
        let c: BaseConsumer = cfg
            .create()
            .map_err(|e| kafka_err("creating the marker reader", e))?;
        // the high watermark itself, not the last stable offset (which read_committed gives)
        let mut wcfg = cfg.clone();
        wcfg.set("isolation.level", "read_uncommitted");
        wcfg.set("group.id", format!("sluice-{}-markers-hw", self.query_id));
        let wc: BaseConsumer = wcfg
            .create()
            .map_err(|e| kafka_err("creating the marker reader", e))?;
        let (low, high) = match wc.fetch_watermarks(&self.commit_topic, 0, self.timeout) {
            Ok(w) => w,
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
                return Ok(None)
            }
            Err(e) => return Err(kafka_err("reading the commit topic", e)),
        };
        if high <= low {
            return Ok(None);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.commit_topic, 0, KOffset::Offset(low))
            .map_err(|e| kafka_err("assigning the commit topic", e))?;
        c.assign(&tpl)
            .map_err(|e| kafka_err("assigning the commit topic", e))?;
        let mut last = None;
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            if std::time::Instant::now() > deadline {
                return Err(EngineError::external(format!(
                    "kafka: timed out reading the commit topic {}",
                    self.commit_topic
                )));
            }
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if m.key() == Some(self.query_id.as_bytes()) {
                        if let Some(v) = m.payload().and_then(|p| std::str::from_utf8(p).ok()) {
                            if let Ok(b) = v.parse::<u64>() {
                                last = Some(last.map_or(b, |l: u64| l.max(b)));
                            }
                        }
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                // read_committed stops at the last stable offset: an open transaction (another
                // query's, or a zombie's) holds it back. Only the position reaching `high` says
                // every committed marker was seen; until then keep polling (or time out: retry).
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    if let Ok(pos) = c.position() {
                        if pos
                            .elements()
                            .iter()
                            .any(|e| matches!(e.offset(), KOffset::Offset(p) if p >= high))
                        {
                            break;
                        }
                    }
                }
                Some(Err(e)) => return Err(kafka_err("reading the commit topic", e)),
            }
        }
        Ok(last)
    }

    fn send_all(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let rows_json: Vec<Vec<String>> = if self.value_col.is_none() {
            batches
                .iter()
                .map(sluice_engine::json_fn::rows_to_json)
                .collect::<datafusion::error::Result<_>>()?
        } else {
            vec![Vec::new(); batches.len()]
        };
        let (topic_col, key_col, value_col, partition_col, headers_col) = (
            self.topic_col,
            self.key_col,
            self.value_col,
            self.partition_col,
            self.headers_col,
        );
        let default_topic = self.topic.clone();
        let p = self.producer()?;
        for (b, json) in batches.iter().zip(&rows_json) {
            let partitions = partition_col
                .map(|i| arrow::compute::cast(b.column(i), &DataType::Int32))
                .transpose()?;
            for r in 0..b.num_rows() {
                // Spark: the 'topic' option overrides the topic column
                let topic = match (topic_col, &default_topic) {
                    (_, Some(t)) => t.clone(),
                    (Some(i), None) if b.column(i).is_valid(r) => {
                        String::from_utf8_lossy(&as_bytes(b.column(i), r).unwrap_or_default())
                            .into_owned()
                    }
                    _ => {
                        return Err(EngineError::user(format!(
                            "kafka sink: row {r} has a NULL topic and no 'topic' option is set"
                        )))
                    }
                };
                let key = key_col.and_then(|i| as_bytes(b.column(i), r));
                let value = match value_col {
                    Some(i) => as_bytes(b.column(i), r),
                    None => json.get(r).map(|s| s.as_bytes().to_vec()),
                };
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&topic);
                if let Some(k) = &key {
                    rec = rec.key(k.as_slice());
                }
                if let Some(v) = &value {
                    rec = rec.payload(v.as_slice());
                }
                if let Some(ps) = &partitions {
                    let ps = ps.as_primitive::<arrow::datatypes::Int32Type>();
                    if ps.is_valid(r) {
                        rec = rec.partition(ps.value(r));
                    }
                }
                if let Some(h) = headers_col {
                    let list = b.column(h).as_list::<i32>();
                    if list.is_valid(r) {
                        let entries = list.value(r);
                        let s = entries.as_struct();
                        let mut hs = OwnedHeaders::new_with_capacity(s.len());
                        for e in 0..s.len() {
                            let k = as_bytes(s.column(0), e).unwrap_or_default();
                            let v = as_bytes(s.column(1), e);
                            hs = hs.insert(Header {
                                key: &String::from_utf8_lossy(&k),
                                value: v.as_deref(),
                            });
                        }
                        rec = rec.headers(hs);
                    }
                }
                let mut rec = rec;
                loop {
                    match p.send(rec) {
                        Ok(()) => {
                            p.poll(Duration::ZERO);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            rec = back;
                            p.poll(Duration::from_millis(10));
                        }
                        Err((e, _)) => return Err(kafka_err(&format!("producing to {topic}"), e)),
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<bool> {
        if self.exactly_once {
            if self.last_committed.is_none() {
                self.ensure_commit_topic()?;
                self.producer()?;
                self.last_committed = Some(self.read_last_committed()?);
            }
            if self.last_committed.flatten().is_some_and(|l| l >= batch_id) {
                return Ok(false);
            }
            let timeout = self.timeout;
            if let Err(e) = self.producer()?.begin_transaction() {
                // a fenced or broken producer: start over with a new one on the retry
                self.producer = None;
                self.last_committed = None;
                return Err(EngineError::external(format!(
                    "kafka: beginning a transaction: {e}"
                )));
            }
            let sent = self.send_all(batches);
            let marker = sent.and_then(|_| {
                let key = self.query_id.clone();
                let value = batch_id.to_string();
                let commit_topic = self.commit_topic.clone();
                let p = self.producer()?;
                let rec: BaseRecord<'_, str, str> = BaseRecord::to(&commit_topic)
                    .partition(0)
                    .key(key.as_str())
                    .payload(value.as_str());
                p.send(rec)
                    .map_err(|(e, _)| kafka_err("producing the batch marker", e))
            });
            // the records reach the broker inside the open transaction (the commit would flush
            // them anyway): a crash here leaves an open transaction the next producer aborts
            let marker = marker.and_then(|_| {
                self.producer()?
                    .flush(timeout)
                    .map_err(|e| kafka_err("sending the batch", e))
            });
            crash_point("mid-sink", batch_id);
            let committed = marker.and_then(|_| {
                self.producer()?
                    .commit_transaction(timeout)
                    .map_err(|e| kafka_err("committing the transaction", e))
            });
            if let Err(e) = committed {
                // abort (or drop a fenced / broken producer) so that the retry starts clean
                if let Some(p) = &self.producer {
                    if p.abort_transaction(timeout).is_err() {
                        self.producer = None;
                        self.last_committed = None;
                    }
                }
                return Err(match e {
                    EngineError::User(m) => EngineError::User(m),
                    other => EngineError::external(other.to_string()),
                });
            }
            self.last_committed = Some(Some(batch_id));
            Ok(true)
        } else {
            self.send_all(batches)?;
            crash_point("mid-sink", batch_id);
            let timeout = self.timeout;
            let p = self.producer()?;
            p.flush(timeout)
                .map_err(|e| kafka_err("flushing the batch", e))?;
            let errors: Vec<String> = p
                .context()
                .errors
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            if !errors.is_empty() {
                return Err(EngineError::external(format!(
                    "kafka: {} records of batch {batch_id} were not delivered (the batch is written again): {}",
                    errors.len(),
                    errors.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                )));
            }
            Ok(true)
        }
    }
}

impl Sink for KafkaSink {
    fn description(&self) -> String {
        format!(
            "KafkaSink[{}{}]",
            self.topic.as_deref().unwrap_or("<topic column>"),
            if self.exactly_once {
                ", exactly-once"
            } else {
                ", at-least-once"
            }
        )
    }

    fn add_batch(&mut self, batch_id: u64, batches: &[RecordBatch]) -> Result<()> {
        if !self.write(batch_id, batches)? {
            tracing::info!(
                batch_id,
                "{}: batch already committed, skipped",
                self.description()
            );
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(p) = &self.producer {
            let _ = p.flush(Duration::from_secs(5));
        }
        self.producer = None;
        Ok(())
    }
}
