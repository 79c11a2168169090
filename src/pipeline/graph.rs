//! A pipeline as a graph of tables: which query reads which source, static table or other
//! query's output, the order to run them in, and the text `sluice graph` prints.
//!
//! A query reads another query by its name (`FROM bronze` where `[query.bronze]` writes a Delta
//! table): the graph has an edge bronze → silver. A `[source.NAME]` or `[table.NAME]` of the
//! same name wins over a query (so older pipeline files that declare each upstream table as a
//! source keep their meaning). Unknown names and cycles are refused with the names involved.
//! Which names a query reads comes from its parsed SQL statement.

use std::collections::{BTreeMap, BTreeSet};

use crate::{EngineError, Result};

/// What a name in a query's FROM clause is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A `[source.NAME]`.
    Source(String),
    /// A `[table.NAME]` (static).
    Table(String),
    /// Another query's output, read as a stream.
    Query(String),
}

impl Input {
    /// The name.
    pub fn name(&self) -> &str {
        match self {
            Input::Source(n) | Input::Table(n) | Input::Query(n) => n,
        }
    }
}

/// The pipeline's queries, what each reads, and the order they run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// Per query, what it reads.
    pub inputs: BTreeMap<String, Vec<Input>>,
    /// Stages: every query of a stage reads only sources, tables and queries of earlier
    /// stages. `--available-now` runs them stage after stage.
    pub stages: Vec<Vec<String>>,
}

/// The names a pipeline defines.
pub struct Names<'a> {
    /// `[source.*]`.
    pub sources: BTreeSet<&'a str>,
    /// `[table.*]`.
    pub tables: BTreeSet<&'a str>,
    /// `[query.*]`.
    pub queries: BTreeSet<&'a str>,
}

impl Graph {
    /// Builds the graph from what each query reads (`reads`: query → the names in its SQL).
    /// Pure; table-tested.
    pub fn build(names: &Names<'_>, reads: &BTreeMap<String, Vec<String>>) -> Result<Graph> {
        let find = |set: &BTreeSet<&str>, n: &str| {
            set.iter()
                .find(|s| s.eq_ignore_ascii_case(n))
                .map(|s| s.to_string())
        };
        let mut inputs = BTreeMap::new();
        for (q, names_read) in reads {
            let mut ins: Vec<Input> = Vec::new();
            for n in names_read {
                let input = if let Some(s) = find(&names.sources, n) {
                    Input::Source(s)
                } else if let Some(t) = find(&names.tables, n) {
                    Input::Table(t)
                } else if let Some(other) = find(&names.queries, n) {
                    Input::Query(other)
                } else {
                    return Err(EngineError::user(format!(
                        "query '{q}' reads '{n}', which the pipeline does not define (sources: \
                         {}; tables: {}; queries: {})",
                        list(&names.sources),
                        list(&names.tables),
                        list(&names.queries)
                    )));
                };
                if !ins.contains(&input) {
                    ins.push(input);
                }
            }
            inputs.insert(q.clone(), ins);
        }
        let stages = stages(&inputs)?;
        Ok(Graph { inputs, stages })
    }

    /// The queries `query` reads.
    pub fn upstream(&self, query: &str) -> Vec<&str> {
        self.inputs
            .get(query)
            .map(|ins| {
                ins.iter()
                    .filter_map(|i| match i {
                        Input::Query(q) => Some(q.as_str()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The queries that read `name` (a source, table or query).
    pub fn readers(&self, name: &str) -> Vec<&str> {
        self.inputs
            .iter()
            .filter(|(_, ins)| ins.iter().any(|i| i.name() == name))
            .map(|(q, _)| q.as_str())
            .collect()
    }

    /// The queries that read `name`'s output, directly or through other queries.
    pub fn downstream(&self, name: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut todo = vec![name];
        while let Some(n) = todo.pop() {
            for (q, ins) in &self.inputs {
                let reads = ins.iter().any(|i| matches!(i, Input::Query(u) if u == n));
                if reads && !out.contains(&q.as_str()) {
                    out.push(q);
                    todo.push(q);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// The queries in an order where each comes after every query it reads.
    pub fn order(&self) -> Vec<&str> {
        self.stages.iter().flatten().map(String::as_str).collect()
    }

    /// The graph as text, stage by stage (`sluice graph`); `describe` names each query's sink
    /// and each source's format.
    pub fn render(&self, describe: &dyn Fn(&Input) -> String) -> String {
        let mut out = String::new();
        let mut leaves: Vec<Input> = Vec::new();
        for ins in self.inputs.values() {
            for i in ins {
                if !matches!(i, Input::Query(_)) && !leaves.contains(i) {
                    leaves.push(i.clone());
                }
            }
        }
        leaves.sort_by(|a, b| a.name().cmp(b.name()));
        out.push_str("inputs:\n");
        for l in &leaves {
            out.push_str(&format!("  {} ({})\n", l.name(), describe(l)));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            out.push_str(&format!("stage {}:\n", i + 1));
            for q in stage {
                let from: Vec<&str> = self.inputs[q].iter().map(Input::name).collect();
                out.push_str(&format!(
                    "  {} <- {}  => {}\n",
                    q,
                    if from.is_empty() {
                        "(nothing)".to_string()
                    } else {
                        from.join(", ")
                    },
                    describe(&Input::Query(q.clone()))
                ));
            }
        }
        out
    }
}

fn list(set: &BTreeSet<&str>) -> String {
    if set.is_empty() {
        "none".to_string()
    } else {
        set.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// Kahn's algorithm, stage by stage; a cycle is refused naming its queries in order.
fn stages(inputs: &BTreeMap<String, Vec<Input>>) -> Result<Vec<Vec<String>>> {
    let upstream = |q: &str| -> Vec<&str> {
        inputs[q]
            .iter()
            .filter_map(|i| match i {
                Input::Query(u) => Some(u.as_str()),
                _ => None,
            })
            .collect()
    };
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < inputs.len() {
        let ready: Vec<&str> = inputs
            .keys()
            .map(String::as_str)
            .filter(|q| !done.contains(q) && upstream(q).iter().all(|u| done.contains(u)))
            .collect();
        if ready.is_empty() {
            let left: Vec<&str> = inputs
                .keys()
                .map(String::as_str)
                .filter(|q| !done.contains(q))
                .collect();
            return Err(EngineError::user(format!(
                "the pipeline's queries read each other in a cycle: {}; a query cannot read \
                 (directly or through others) its own output",
                cycle(&left, &upstream).join(" -> ")
            )));
        }
        done.extend(ready.iter().copied());
        out.push(ready.into_iter().map(str::to_string).collect());
    }
    Ok(out)
}

/// One cycle among `left` (every query there is on a cycle or downstream of one).
fn cycle<'a>(left: &[&'a str], upstream: &dyn Fn(&str) -> Vec<&'a str>) -> Vec<&'a str> {
    let mut path = vec![left[0]];
    loop {
        let last = *path.last().unwrap_or(&left[0]);
        let Some(next) = upstream(last).into_iter().find(|u| left.contains(u)) else {
            return path;
        };
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut c: Vec<&str> = path[i..].to_vec();
            c.push(next);
            // upstream order: show it as data flows
            c.reverse();
            return c;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(s: &[&'a str], t: &[&'a str], q: &[&'a str]) -> Names<'a> {
        Names {
            sources: s.iter().copied().collect(),
            tables: t.iter().copied().collect(),
            queries: q.iter().copied().collect(),
        }
    }

    fn reads(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(q, r)| (q.to_string(), r.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn stages_follow_the_reads() {
        let n = names(&["raw"], &["dim"], &["bronze", "silver", "gold", "audit"]);
        let g = Graph::build(
            &n,
            &reads(&[
                ("gold", &["silver", "dim"]),
                ("silver", &["bronze"]),
                ("bronze", &["raw"]),
                ("audit", &["bronze", "raw"]),
            ]),
        )
        .expect("ok");
        assert_eq!(
            g.stages,
            vec![
                vec!["bronze".to_string()],
                vec!["audit".to_string(), "silver".to_string()],
                vec!["gold".to_string()]
            ]
        );
        assert_eq!(g.upstream("gold"), ["silver"]);
        assert_eq!(g.readers("bronze"), ["audit", "silver"]);
        assert_eq!(g.order(), ["bronze", "audit", "silver", "gold"]);
        assert_eq!(g.downstream("bronze"), ["audit", "gold", "silver"]);
        assert_eq!(g.downstream("silver"), ["gold"]);
        assert!(g.downstream("gold").is_empty());
    }

    #[test]
    fn a_source_of_the_same_name_wins_over_a_query() {
        let n = names(&["raw", "bronze"], &[], &["bronze", "silver"]);
        let g =
            Graph::build(&n, &reads(&[("bronze", &["raw"]), ("silver", &["bronze"])])).expect("ok");
        assert_eq!(g.inputs["silver"], [Input::Source("bronze".into())]);
        assert_eq!(g.stages.len(), 1);
    }

    #[test]
    fn unknown_names_and_cycles_are_refused() {
        let n = names(&["raw"], &[], &["a", "b", "c"]);
        let err = Graph::build(&n, &reads(&[("a", &["raw"]), ("b", &["nope"]), ("c", &[])]))
            .expect_err("an error")
            .to_string();
        assert!(
            err.contains("query 'b' reads 'nope'") && err.contains("queries: a, b, c"),
            "{err}"
        );
        let err = Graph::build(&n, &reads(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"])]))
            .expect_err("an error")
            .to_string();
        assert!(
            err.contains("cycle") && err.contains("a -> b -> c -> a"),
            "{err}"
        );
        let err = Graph::build(&n, &reads(&[("a", &["a"]), ("b", &[]), ("c", &[])]))
            .expect_err("an error")
            .to_string();
        assert!(err.contains("a -> a"), "{err}");
    }
}
