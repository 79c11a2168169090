//! A query as tasks: what a group needs of the pipeline, and the pipeline of one task.
//!
//! Task t reads partition t of every input topic (Spark's `assign` option replaces
//! `subscribe`), keeps its checkpoint under `<checkpoint>/tasks/<t>/` and runs as a complete
//! micro-batch query. Inputs must be Kafka topics named with `subscribe` and have the same
//! partition count (co-partitioned).

use std::collections::BTreeMap;

use crate::pipeline::Pipeline;
use crate::{EngineError, Result};

/// What the group learns from the pipeline before joining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    /// The query run.
    pub query: String,
    /// The input topics, sorted.
    pub topics: Vec<String>,
    /// The `kafka.*` options of the first source (prefix removed): the group's connection.
    pub kafka: BTreeMap<String, String>,
    /// The query's checkpoint location, as written.
    pub checkpoint: String,
}

fn text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks that `query` of `p` can run as tasks and says what the group needs (pure).
pub fn group_plan(p: &Pipeline, only: &[String]) -> Result<GroupPlan> {
    let query = match only {
        [one] => one.clone(),
        [] if p.query.len() == 1 => p.query.keys().next().cloned().unwrap_or_default(),
        _ => {
            return Err(EngineError::user(format!(
                "--group runs one query: name it with --query (the file has {})",
                p.query.keys().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let q = p
        .query
        .get(&query)
        .ok_or_else(|| EngineError::user(format!("--query {query}: no [query.{query}]")))?;
    let checkpoint = q.checkpoint.clone().ok_or_else(|| {
        EngineError::user(format!(
            "query '{query}' runs as tasks of a group and needs a checkpoint location every \
             process reaches (a shared directory or a bucket URL)"
        ))
    })?;
    if let Some(t) = &q.trigger {
        if matches!(
            t.parse::<crate::Trigger>(),
            Ok(crate::Trigger::Once | crate::Trigger::AvailableNow)
        ) {
            return Err(EngineError::user(format!(
                "query '{query}': trigger {t} stops the query; its tasks run continuously \
                 (a processing-time trigger, or none)"
            )));
        }
    }
    if p.source.is_empty() {
        return Err(EngineError::user(
            "--group: the pipeline has no [source.NAME]; a group shares Kafka partitions",
        ));
    }
    let mut topics = Vec::new();
    let mut kafka = BTreeMap::new();
    for (name, s) in &p.source {
        if !s.format.eq_ignore_ascii_case("kafka") {
            return Err(EngineError::user(format!(
                "source '{name}' is {}: a query runs as tasks of a group only over Kafka \
                 topics (its tasks are their partitions)",
                s.format
            )));
        }
        for k in ["subscribePattern", "assign"] {
            if s.options.contains_key(k) {
                return Err(EngineError::user(format!(
                    "source '{name}': option {k} cannot be used with --group; name the topics \
                     with 'subscribe' (each task reads one partition of each)"
                )));
            }
        }
        let sub =
            s.options.get("subscribe").map(text).ok_or_else(|| {
                EngineError::user(format!("source '{name}': set option 'subscribe'"))
            })?;
        topics.extend(sub.split(',').map(|t| t.trim().to_string()));
        if kafka.is_empty() {
            kafka = s
                .options
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("kafka.")?.to_string(), text(v))))
                .collect();
        }
    }
    topics.sort();
    topics.dedup();
    Ok(GroupPlan {
        query,
        topics,
        kafka,
        checkpoint,
    })
}

/// The `assign` option of task `t` over `topics`: `{"a":[t],"b":[t]}`.
pub fn assign_option(topics: &[String], t: u32) -> String {
    let m: serde_json::Map<String, serde_json::Value> = topics
        .iter()
        .map(|x| (x.clone(), serde_json::json!([t])))
        .collect();
    serde_json::Value::Object(m).to_string()
}

/// The pipeline task `t` runs: every source reads partition t of its topics.
pub fn task_pipeline(p: &Pipeline, t: u32) -> Pipeline {
    let mut p = p.clone();
    for s in p.source.values_mut() {
        if let Some(sub) = s.options.remove("subscribe") {
            let topics: Vec<String> = text(&sub)
                .split(',')
                .map(|x| x.trim().to_string())
                .collect();
            s.options.insert(
                "assign".into(),
                toml::Value::String(assign_option(&topics, t)),
            );
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(text: &str) -> Pipeline {
        toml::from_str(text).expect("pipeline")
    }

    const OK: &str = r#"
[source.events]
format = "kafka"
options = { subscribe = "a, b", "kafka.bootstrap.servers" = "h:1", "kafka.session.timeout.ms" = 6000 }
[query.q]
sql = "SELECT * FROM events"
checkpoint = "chk"
sink = { format = "jdbc" }
"#;

    #[test]
    fn a_kafka_query_becomes_tasks_over_its_partitions() {
        let p = pipeline(OK);
        let g = group_plan(&p, &[]).expect("plan");
        assert_eq!(g.topics, vec!["a", "b"]);
        assert_eq!(
            g.kafka.get("session.timeout.ms").map(String::as_str),
            Some("6000")
        );
        assert_eq!(
            g.kafka.get("bootstrap.servers").map(String::as_str),
            Some("h:1")
        );
        let t = task_pipeline(&p, 4);
        let o = &t.source["events"].options;
        assert!(!o.contains_key("subscribe"));
        assert_eq!(
            o.get("assign").map(text).as_deref(),
            Some(r#"{"a":[4],"b":[4]}"#)
        );
    }

    #[test]
    fn what_cannot_run_as_tasks_is_refused_with_the_reason() {
        // (pipeline text with one change, what the message must name)
        let cases = [
            (
                OK.replace("format = \"kafka\"", "format = \"json\""),
                "only over Kafka",
            ),
            (
                OK.replace("subscribe = \"a, b\"", "subscribePattern = \"a.*\""),
                "subscribePattern",
            ),
            (
                OK.replace("checkpoint = \"chk\"\n", ""),
                "checkpoint location",
            ),
            (
                format!("{OK}\n[query.r]\nsql = \"SELECT 1\"\nsink = {{ format = \"jdbc\" }}\n"),
                "--query",
            ),
        ];
        for (text, want) in cases {
            let err = group_plan(&pipeline(&text), &[])
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains(want)),
                "{want}: {err:?}"
            );
        }
    }
}
