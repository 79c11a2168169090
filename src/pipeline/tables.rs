//! How the queries of a pipeline read each other: the graph (from each query's parsed SQL),
//! the stream view over an upstream query's Delta table, the default schema location of an
//! Auto Loader source, and the graph as text (`sluice graph`) and JSON (the dashboard).

use std::collections::BTreeMap;
use std::path::Path;

use super::graph::{self, Graph, Input};
use super::{option_text, resolve_path, Pipeline, ReadDef, SourceDef};
use crate::{DataFrame, EngineError, Result, Session};

/// Where in a query's checkpoint a pipeline keeps its Auto Loader sources' schema versions by
/// default (`<checkpoint>/_autoloader/<source>/_schemas/<n>`).
pub const AUTOLOADER_DIR: &str = "_autoloader";

impl Pipeline {
    /// The queries as a graph: what each reads (from its parsed SQL), the stages they run in.
    pub fn graph(&self, session: &Session) -> Result<Graph> {
        let mut reads = BTreeMap::new();
        for (name, q) in &self.query {
            let names = session
                .table_references(&q.sql)
                .map_err(|e| e.context(&format!("query '{name}'")))?;
            reads.insert(name.clone(), names);
        }
        let names = graph::Names {
            sources: self.source.keys().map(String::as_str).collect(),
            tables: self.table.keys().map(String::as_str).collect(),
            queries: self.query.keys().map(String::as_str).collect(),
        };
        let g = Graph::build(&names, &reads)?;
        for (q, ins) in &g.inputs {
            for i in ins {
                if let Input::Query(u) = i {
                    let fmt = &self.query[u].sink.format;
                    if !fmt.eq_ignore_ascii_case("delta") {
                        return Err(EngineError::user(format!(
                            "query '{q}' reads query '{u}', which writes {fmt}: a query's output \
                             is read as a stream when it is a Delta table (sink format delta); \
                             otherwise declare it as a [source.{u}]"
                        )));
                    }
                }
            }
        }
        Ok(g)
    }

    /// Whether query `name`'s output table exists yet (its Delta log has a commit).
    pub fn output_exists(&self, name: &str, base: &Path) -> bool {
        let Some(path) = self.query.get(name).and_then(|q| q.sink.path.as_deref()) else {
            return false;
        };
        let log = resolve_path(base, path).join("_delta_log");
        std::fs::read_dir(log).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
    }

    /// The graph as text, for `sluice graph`.
    pub fn render_graph(&self, session: &Session) -> Result<String> {
        let g = self.graph(session)?;
        Ok(g.render(&|i: &Input| match i {
            Input::Source(n) => {
                let s = &self.source[n];
                format!("source, {} {}", s.format, s.path.as_deref().unwrap_or(""))
            }
            Input::Table(n) => {
                let t = &self.table[n];
                format!(
                    "static table, {} {}",
                    t.format,
                    t.path.as_deref().unwrap_or("")
                )
            }
            Input::Query(n) => {
                let q = &self.query[n];
                let mut d = format!("{} {}", q.sink.format, q.sink.path.as_deref().unwrap_or(""));
                if !q.expectations.is_empty() {
                    d.push_str(&format!(", {} expectation(s)", q.expectations.len()));
                }
                d
            }
        }))
    }

    /// Query `u`'s output table as a stream, as query `reader` reads it.
    pub(super) fn upstream_view(
        &self,
        session: &Session,
        base: &Path,
        u: &str,
        schema: arrow::datatypes::SchemaRef,
        read: Option<&ReadDef>,
    ) -> Result<DataFrame> {
        let sink = &self.query[u].sink;
        let path = sink.path.as_deref().ok_or_else(|| {
            EngineError::user(format!("query '{u}' writes a Delta table without a path"))
        })?;
        let mut r = session.read_stream().format("delta").schema(schema);
        if let Some(read) = read {
            for (k, v) in &read.options {
                r = r.option(k, option_text(k, v)?);
            }
        }
        let df = r.load(resolve_path(base, path).to_string_lossy())?;
        match read.and_then(|r| r.watermark.as_ref()) {
            Some(w) => df.with_watermark(&w.column, &w.delay),
            None => Ok(df),
        }
    }

    /// `cloudFiles.schemaLocation` for an Auto Loader source that infers its schema and was not
    /// given one: inside the checkpoint of the one query that reads it, as Databricks'
    /// pipelines keep it in their storage.
    pub(super) fn default_schema_location(
        &self,
        name: &str,
        s: &SourceDef,
        graph: &Graph,
        base: &Path,
        validate_only: bool,
    ) -> Result<Option<String>> {
        let given = s
            .options
            .keys()
            .any(|k| k.eq_ignore_ascii_case("cloudFiles.schemaLocation"));
        if !s.format.eq_ignore_ascii_case("cloudFiles") || given || s.schema.is_some() {
            return Ok(None);
        }
        let readers = graph.readers(name);
        match readers.as_slice() {
            [q] => match &self.query[*q].checkpoint {
                Some(c) => {
                    let checkpoint = resolve_path(base, c);
                    if !validate_only {
                        // the checkpoint exists before the schema is kept inside it
                        sluice_state::CheckpointDir::open_location(
                            &checkpoint.to_string_lossy(),
                            &self.storage_options(),
                        )?;
                    }
                    Ok(Some(
                        checkpoint
                            .join(AUTOLOADER_DIR)
                            .join(name)
                            .to_string_lossy()
                            .into_owned(),
                    ))
                }
                None => Err(EngineError::user(format!(
                    "source '{name}' (cloudFiles) keeps its inferred schema in the checkpoint of \
                     query '{q}', which has none: give the query a checkpoint, or the source \
                     option cloudFiles.schemaLocation"
                ))),
            },
            _ => Err(EngineError::user(format!(
                "source '{name}' (cloudFiles) infers its schema and is read by {} queries ({}): \
                 give it option cloudFiles.schemaLocation (the default, inside the reading \
                 query's checkpoint, needs exactly one reader)",
                readers.len(),
                readers.join(", ")
            ))),
        }
    }
    /// The graph for the dashboard (`GET /api/graph`): nodes (sources, tables, queries, with
    /// their stage) and edges.
    pub fn graph_json(&self, graph: &Graph) -> serde_json::Value {
        let mut nodes = Vec::new();
        let mut edges = Vec::new();
        for (stage, names) in graph.stages.iter().enumerate() {
            for q in names {
                let def = &self.query[q];
                nodes.push(serde_json::json!({
                    "name": q, "kind": "query", "stage": stage + 1,
                    "sink": def.sink.format, "path": def.sink.path,
                    "expectations": def.expectations.iter().map(|e| &e.name).collect::<Vec<_>>(),
                }));
                for i in &graph.inputs[q] {
                    edges.push(serde_json::json!({ "from": i.name(), "to": q }));
                    let kind = match i {
                        Input::Source(_) => "source",
                        Input::Table(_) => "table",
                        Input::Query(_) => continue,
                    };
                    if !nodes.iter().any(|n| n["name"] == i.name()) {
                        nodes.push(
                            serde_json::json!({ "name": i.name(), "kind": kind, "stage": 0 }),
                        );
                    }
                }
            }
        }
        serde_json::json!({ "nodes": nodes, "edges": edges })
    }
}
