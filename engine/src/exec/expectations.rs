//! Expectations: data-quality rules on the rows a query writes (Databricks' `@dlt.expect`,
//! `expect_or_drop`, `expect_or_fail`).
//!
//! Each condition is a SQL boolean expression, planned once per query against the output
//! schema and evaluated per batch, vectorised. A row fails an expectation when the condition
//! is FALSE; NULL passes, as a SQL CHECK constraint does. Every expectation is evaluated on
//! every row of the batch (so its counts are over all written rows); then `warn` keeps the
//! rows, `drop` removes the rows failing any drop expectation (to the quarantine sink if one
//! is set), and `fail` stops the query before the sink is called (the batch is not committed;
//! a restart runs it again and stops again until the input or the rule changes).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::kernels::boolean;
use arrow::compute::{filter_record_batch, is_not_null};
use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::execution::SessionState;
use datafusion::physical_expr::PhysicalExpr;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// What a failed expectation does (the pipeline file's `on_violation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Keep the row, count it.
    Warn,
    /// Remove the row before the sink, count it.
    Drop,
    /// Stop the query without committing the batch.
    Fail,
}

impl std::str::FromStr for OnViolation {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "warn" => Ok(Self::Warn),
            "drop" => Ok(Self::Drop),
            "fail" => Ok(Self::Fail),
            _ => Err(EngineError::user(format!(
                "on_violation must be warn, drop or fail, got '{s}'"
            ))),
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// Its name (unique in the query), as reported.
    pub name: String,
    /// A SQL boolean expression over the written columns.
    pub condition: String,
    /// What a failing row does.
    pub on_violation: OnViolation,
}

/// One expectation's counts in a batch (Databricks' `flow_progress.data_quality.expectations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectationMetrics {
    /// The expectation.
    pub name: String,
    /// The query (dataset) it checks.
    pub dataset: String,
    /// Rows where the condition held (or was NULL).
    pub passed_records: u64,
    /// Rows where it was FALSE.
    pub failed_records: u64,
}

/// A batch's data quality (the progress report's `dataQuality`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataQuality {
    /// Rows removed by `drop` expectations.
    pub dropped_records: u64,
    /// Per expectation, in declaration order.
    pub expectations: Vec<ExpectationMetrics>,
}

/// Expectations planned for one query.
pub(crate) struct Checks {
    dataset: String,
    rules: Vec<(Expectation, Arc<dyn PhysicalExpr>)>,
}

/// What the checks leave of a batch.
#[derive(Debug)]
pub(crate) struct Checked {
    /// Rows for the sink.
    pub rows: Vec<RecordBatch>,
    /// Rows removed by `drop` expectations.
    pub dropped: Vec<RecordBatch>,
    pub quality: DataQuality,
}

impl Checks {
    /// Plans every condition against the rows the query writes; a bad condition is the user's
    /// error naming the expectation.
    pub fn plan(
        expectations: &[Expectation],
        schema: &SchemaRef,
        state: &SessionState,
        dataset: &str,
    ) -> Result<Option<Self>> {
        if expectations.is_empty() {
            return Ok(None);
        }
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let mut rules = Vec::with_capacity(expectations.len());
        for (i, e) in expectations.iter().enumerate() {
            if expectations[..i].iter().any(|o| o.name == e.name) {
                return Err(EngineError::user(format!(
                    "two expectations are named '{}'; name each once",
                    e.name
                )));
            }
            let bad = |what: &dyn std::fmt::Display| {
                EngineError::user(format!(
                    "expectation '{}' ({}): {what}; conditions are SQL boolean expressions over \
                     the columns the query writes: {}",
                    e.name,
                    e.condition,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            };
            let expr = state
                .create_logical_expr(&e.condition, &df_schema)
                .map_err(|err| bad(&err))?;
            let physical = state
                .create_physical_expr(expr, &df_schema)
                .map_err(|err| bad(&err))?;
            let dt = physical.data_type(schema).map_err(|err| bad(&err))?;
            if dt != arrow::datatypes::DataType::Boolean {
                return Err(bad(&format!("it is of type {dt}, not BOOLEAN")));
            }
            rules.push((e.clone(), physical));
        }
        Ok(Some(Self {
            dataset: dataset.to_string(),
            rules,
        }))
    }

    /// The same checks reporting `dataset` as their dataset if they had no name (a query
    /// without a name is known by its id, found when its checkpoint opens).
    pub fn named_if_unnamed(mut self, dataset: &str) -> Self {
        if self.dataset.is_empty() {
            self.dataset = dataset.to_string();
        }
        self
    }

    /// Whether any rule drops rows (a quarantine sink needs one).
    pub fn drops(&self) -> bool {
        self.rules
            .iter()
            .any(|(e, _)| e.on_violation == OnViolation::Drop)
    }

    /// Checks batch `batch_id`'s rows.
    pub fn apply(&self, batch_id: u64, rows: Vec<RecordBatch>) -> Result<Checked> {
        let mut quality = DataQuality {
            dropped_records: 0,
            expectations: self
                .rules
                .iter()
                .map(|(e, _)| ExpectationMetrics {
                    name: e.name.clone(),
                    dataset: self.dataset.clone(),
                    passed_records: 0,
                    failed_records: 0,
                })
                .collect(),
        };
        let mut kept = Vec::with_capacity(rows.len());
        let mut dropped = Vec::new();
        for batch in rows {
            let n = batch.num_rows();
            if n == 0 {
                continue;
            }
            // rows failing any drop rule
            let mut drop_mask: Option<BooleanArray> = None;
            for (i, (e, expr)) in self.rules.iter().enumerate() {
                let value = expr.evaluate(&batch)?.into_array(n)?;
                let held = value
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| EngineError::bug("an expectation did not give booleans"))?;
                // FALSE fails; TRUE and NULL pass
                let failures = (n - held.true_count() - held.null_count()) as u64;
                let m = &mut quality.expectations[i];
                m.failed_records += failures;
                m.passed_records += n as u64 - failures;
                if failures == 0 {
                    continue; // the common case: no mask built
                }
                // Kleene AND: NULL AND FALSE is FALSE, so the mask itself has no NULLs
                let failed = boolean::and_kleene(&boolean::not(held)?, &is_not_null(held)?)?;
                match e.on_violation {
                    OnViolation::Warn => {}
                    OnViolation::Drop => {
                        drop_mask = Some(match drop_mask {
                            None => failed,
                            Some(d) => boolean::or(&d, &failed)?,
                        })
                    }
                    OnViolation::Fail => {
                        let first = (0..n).find(|r| failed.value(*r)).unwrap_or(0);
                        return Err(EngineError::user(format!(
                            "expectation '{}' ({}) failed on {failures} row(s) of batch \
                             {batch_id} of '{}' (on_violation = fail: the batch is not \
                             committed); first failing row: {}",
                            e.name,
                            e.condition,
                            self.dataset,
                            row_json(&batch, first)
                        )));
                    }
                }
            }
            match drop_mask {
                None => kept.push(batch),
                Some(mask) => {
                    quality.dropped_records += mask.true_count() as u64;
                    dropped.push(filter_record_batch(&batch, &mask)?);
                    kept.push(filter_record_batch(&batch, &boolean::not(&mask)?)?);
                }
            }
        }
        Ok(Checked {
            rows: kept,
            dropped,
            quality,
        })
    }
}

/// Row `i` of `batch` as a JSON object (for an error message).
fn row_json(batch: &RecordBatch, i: usize) -> String {
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    let one = batch.slice(i, 1);
    match w.write(&one).and_then(|_| w.finish()) {
        Ok(()) => String::from_utf8_lossy(&w.into_inner()).trim().to_string(),
        Err(e) => format!("(cannot show the row: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn rules(list: &[(&str, &str, OnViolation)]) -> Vec<Expectation> {
        list.iter()
            .map(|(n, c, a)| Expectation {
                name: n.to_string(),
                condition: c.to_string(),
                on_violation: *a,
            })
            .collect()
    }

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("country", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(-4)])),
                Arc::new(StringArray::from(vec![
                    Some("NL"),
                    Some("DE"),
                    None,
                    Some("xx"),
                ])),
            ],
        )
        .expect("ok");
        (schema, b)
    }

    #[test]
    fn counts_drops_and_null_passes() {
        let (schema, b) = batch();
        let state = datafusion::prelude::SessionContext::new().state();
        let checks = Checks::plan(
            &rules(&[
                ("has_user", "user_id IS NOT NULL", OnViolation::Drop),
                ("positive", "user_id > 0", OnViolation::Drop),
                (
                    "upper_country",
                    "country = upper(country)",
                    OnViolation::Warn,
                ),
            ]),
            &schema,
            &state,
            "silver",
        )
        .expect("ok")
        .expect("ok");
        let out = checks.apply(7, vec![b]).expect("ok");
        let m = &out.quality.expectations;
        // user_id NULL: fails has_user, NULL (passes) for positive
        assert_eq!((m[0].passed_records, m[0].failed_records), (3, 1));
        assert_eq!((m[1].passed_records, m[1].failed_records), (3, 1));
        // country NULL passes; "xx" fails
        assert_eq!((m[2].passed_records, m[2].failed_records), (3, 1));
        assert_eq!(out.quality.dropped_records, 2);
        let kept: Vec<i64> = out.rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ok")
            .iter()
            .map(|v| v.expect("ok"))
            .collect();
        assert_eq!(kept, [1, 3]);
        assert_eq!(out.dropped[0].num_rows(), 2);
    }

    #[test]
    fn fail_names_the_rule_the_batch_and_a_row() {
        let (schema, b) = batch();
        let state = datafusion::prelude::SessionContext::new().state();
        let checks = Checks::plan(
            &rules(&[("positive", "user_id > 0", OnViolation::Fail)]),
            &schema,
            &state,
            "silver",
        )
        .expect("ok")
        .expect("ok");
        let err = checks.apply(7, vec![b]).expect_err("an error").to_string();
        assert!(
            err.contains("'positive'") && err.contains("batch 7") && err.contains("\"user_id\":-4"),
            "{err}"
        );
    }

    #[test]
    fn bad_conditions_are_refused_by_name() {
        let (schema, _) = batch();
        let state = datafusion::prelude::SessionContext::new().state();
        for (cond, want) in [("nope > 1", "nope"), ("user_id + 1", "not BOOLEAN")] {
            let err = Checks::plan(
                &rules(&[("r", cond, OnViolation::Warn)]),
                &schema,
                &state,
                "q",
            )
            .err()
            .expect("ok")
            .to_string();
            assert!(
                err.contains("expectation 'r'") && err.contains(want),
                "{err}"
            );
        }
        let dup = rules(&[
            ("r", "true", OnViolation::Warn),
            ("r", "true", OnViolation::Drop),
        ]);
        assert!(Checks::plan(&dup, &schema, &state, "q").is_err());
    }
}
