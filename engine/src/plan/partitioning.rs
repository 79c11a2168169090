//! Whether a query's state follows its input partitioning: what a query run as tasks (one per
//! input partition, `sluice run --group`) needs. Each task keeps the state of the groups it
//! sees; that is the whole result only when every group's rows sit in one partition, i.e. when
//! every stateful operator groups by the column the input is partitioned on (Kafka's message
//! `key`), traced through aliases, casts, projections and filters to the stream itself.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan};

use crate::error::{EngineError, Result};

/// Whether `e`, over `input`, is the stream column `column` (possibly cast or renamed).
fn traces(e: &Expr, input: &LogicalPlan, column: &str) -> bool {
    match e {
        Expr::Alias(a) => traces(&a.expr, input, column),
        Expr::Cast(c) => traces(&c.expr, input, column),
        Expr::TryCast(c) => traces(&c.expr, input, column),
        Expr::Column(c) => column_traces(&c.name, input, column),
        _ => false,
    }
}

/// Whether output column `name` of `plan` is the stream column `column`.
fn column_traces(name: &str, plan: &LogicalPlan, column: &str) -> bool {
    match plan {
        LogicalPlan::Projection(p) => p
            .schema
            .fields()
            .iter()
            .position(|f| f.name() == name)
            .is_some_and(|i| traces(&p.expr[i], &p.input, column)),
        LogicalPlan::TableScan(scan) => match scan.source.get_logical_plan() {
            Some(view) => column_traces(name, &view, column),
            None => name == column,
        },
        LogicalPlan::Aggregate(_) | LogicalPlan::Join(_) | LogicalPlan::Union(_) => false,
        other => match other.inputs().as_slice() {
            [one] => column_traces(name, one, column),
            _ => false,
        },
    }
}

/// Refuses a plan with a stateful operator whose key does not include the stream column
/// `column` (the message names the operator and says why).
pub fn check_state_follows(plan: &LogicalPlan, column: &str) -> Result<()> {
    let mut bad: Option<String> = None;
    let mut visit = |node: &LogicalPlan| -> datafusion::error::Result<TreeNodeRecursion> {
        let ok = match node {
            LogicalPlan::Aggregate(a) => a.group_expr.iter().any(|g| traces(g, &a.input, column)),
            LogicalPlan::Distinct(Distinct::All(input)) => input
                .schema()
                .fields()
                .iter()
                .any(|f| column_traces(f.name(), input, column)),
            LogicalPlan::Distinct(Distinct::On(d)) => {
                d.on_expr.iter().any(|g| traces(g, &d.input, column))
            }
            LogicalPlan::Extension(e) => {
                match e
                    .node
                    .as_any()
                    .downcast_ref::<crate::operators::dedup::DedupNode>()
                {
                    Some(d) => d
                        .columns
                        .iter()
                        .any(|c| column_traces(&c.name, &d.input, column)),
                    None => true,
                }
            }
            LogicalPlan::Join(_) => {
                bad = Some(
                    "a join (its sides' rows meet only if they share a partition; joins \
                    are not run as tasks yet)"
                        .into(),
                );
                return Ok(TreeNodeRecursion::Stop);
            }
            _ => true,
        };
        if !ok {
            bad = Some(format!(
                "{} groups by keys that do not include the input's `{column}` column",
                node.display()
            ));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    };
    plan.apply_with_subqueries(&mut visit)?;
    match bad {
        None => Ok(()),
        Some(what) => Err(EngineError::user(format!(
            "this query cannot run as tasks of a group: {what}. Each task reads one input \
             partition and keeps the state of the groups it sees, so every stateful operator \
             must group by `{column}` (cast or renamed is fine: GROUP BY CAST(key AS STRING), \
             window(...)), so that all of a group's rows are in one partition. Producers must \
             partition by that key (Kafka's default partitioner does)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_grouping_by_the_partition_key_runs_as_tasks() {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.sql("CREATE TABLE events (\"key\" BYTEA, action VARCHAR, ts TIMESTAMP)")
            .await
            .expect("table");
        ctx.sql("CREATE VIEW v AS SELECT CAST(key AS VARCHAR) AS k, action FROM events")
            .await
            .expect("view");
        // (query, runs as tasks)
        let cases = [
            ("SELECT key, count(*) FROM events GROUP BY key", true),
            ("SELECT CAST(key AS VARCHAR) AS k, action, count(*) FROM events GROUP BY CAST(key AS VARCHAR), action", true),
            ("SELECT k, count(*) FROM v WHERE action = 'x' GROUP BY k", true),
            ("SELECT * FROM events WHERE action = 'x'", true),
            ("SELECT action, count(*) FROM events GROUP BY action", false),
            ("SELECT upper(CAST(key AS VARCHAR)) AS k, count(*) FROM events GROUP BY upper(CAST(key AS VARCHAR))", false),
            ("SELECT action, count(*) FROM v GROUP BY action", false),
            ("SELECT DISTINCT action FROM events", false),
            ("SELECT DISTINCT key, action FROM events", true),
        ];
        for (sql, ok) in cases {
            let plan = ctx.state().create_logical_plan(sql).await.expect(sql);
            let got = check_state_follows(&plan, "key");
            assert_eq!(got.is_ok(), ok, "{sql}: {got:?}");
        }
    }
}
