//! What a Kafka source is told: its options (Spark's names), the librdkafka settings Sluice
//! owns, how Kafka errors are classified, and the factory that checks and creates sources.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
use sluice_engine::{
    EngineError, Options, Result, Source, SourceContext, SourceFactory, SourceSpec,
};

use crate::formats::ParseSettings;

use super::records::{kafka_schema, shortcut_meta};
use super::source::{KafkaSource, Offsets};
use crate::formats::shortcut::Shortcut;

pub(crate) const OPTIONS: &[&str] = &[
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

#[derive(Debug, Clone)]
pub(crate) enum Subscription {
    Topics(Vec<String>),
    Pattern(regex::Regex),
    Assign(BTreeMap<String, Vec<i32>>),
}

#[derive(Debug, Clone)]
pub(crate) enum Starting {
    Earliest,
    Latest,
    Json(Offsets),
    ByTimestamp(Offsets),
}

/// librdkafka settings Sluice owns, and why (Spark refuses the same ones for its consumer).
pub(crate) const OWNED: &[(&str, &str)] = &[
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
pub(crate) fn client_config(o: &Options) -> Result<ClientConfig> {
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
pub(crate) fn check_broker(o: &Options) -> Result<BTreeMap<String, usize>> {
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
pub(crate) fn kafka_err(what: &str, e: KafkaError) -> EngineError {
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

pub(crate) fn parse_offsets(text: &str, what: &str) -> Result<Offsets> {
    serde_json::from_str(text).map_err(|e| {
        EngineError::user(format!(
            "option '{what}' must be JSON like {{\"topic\": {{\"0\": 23, \"1\": -2}}}}: {e}"
        ))
    })
}

/// Creates Kafka sources.
#[derive(Debug, Default)]
pub struct KafkaSourceFactory;

pub(crate) struct Settings {
    pub(super) sub: Subscription,
    pub(super) starting: Starting,
    pub(super) max_offsets: Option<u64>,
    pub(super) min_offsets: Option<u64>,
    pub(super) max_trigger_delay: Duration,
    pub(super) fail_on_data_loss: bool,
    pub(super) include_headers: bool,
    pub(super) timeout: Duration,
}

pub(crate) fn settings(o: &Options) -> Result<Settings> {
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
                ParseSettings::new(Arc::clone(user), &spec.options)?;
                Shortcut::output_schema(user, shortcut_meta(), "kafka")
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
            Some(user) => Some(Shortcut::new(user, &spec.options)?),
            None => None,
        };
        Ok(Box::new(KafkaSource {
            cfg,
            consumer,
            s,
            schema,
            initial: None,
            initial_path: ctx.file("initial-offsets.json"),
            new_starts: None,
            new_starts_path: ctx.file("partition-starts.json"),
            last_trigger: Instant::now(),
            parse,
            watcher: None,
            backlog: None,
            malformed: 0,
            available_now: None,
        }))
    }
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
