//! Spark's `split(str, regex [, limit])`: a string split around matches of a Java-style regular
//! expression into an array of strings. Spark's rules: a NULL string gives NULL; `limit > 0`
//! gives at most `limit` parts (the last holds the rest); `limit <= 0` (the default) splits as
//! often as the pattern matches and keeps trailing empty strings. The pattern is compiled once
//! per batch when it is a literal (the usual case), never per row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// `split` as a DataFusion function (registered in every session, so SQL and the DataFrame API
/// both have it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SplitUdf {
    signature: Signature,
}

impl SplitUdf {
    /// The function.
    pub fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl Default for SplitUdf {
    fn default() -> Self {
        Self::new()
    }
}

fn scalar_text(v: &ColumnarValue) -> Option<Option<String>> {
    match v {
        ColumnarValue::Scalar(s) => Some(match s {
            ScalarValue::Utf8(t) | ScalarValue::LargeUtf8(t) | ScalarValue::Utf8View(t) => {
                t.clone()
            }
            other if other.is_null() => None,
            other => Some(other.to_string()),
        }),
        ColumnarValue::Array(_) => None,
    }
}

impl ScalarUDFImpl for SplitUdf {
    fn name(&self) -> &str {
        "split"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        if !(2..=3).contains(&args.len()) {
            return plan_err!("split(str, regex [, limit]) takes 2 or 3 arguments");
        }
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Utf8,
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let null = || -> DfResult<ColumnarValue> {
            let t = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
            Ok(ColumnarValue::Array(arrow::array::new_null_array(&t, n)))
        };
        let pattern = match args.args.get(1).map(scalar_text) {
            Some(Some(Some(p))) => p,
            // Spark: a NULL pattern gives NULL
            Some(Some(None)) => return null(),
            _ => return exec_err!("split: the pattern must be a literal string"),
        };
        let limit = match args.args.get(2) {
            None => -1,
            Some(ColumnarValue::Scalar(s)) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(l)) => l,
                // Spark: a NULL limit gives NULL
                _ => return null(),
            },
            Some(_) => return exec_err!("split: the limit must be a literal"),
        };
        let re = regex::Regex::new(&pattern).map_err(|e| {
            datafusion::error::DataFusionError::Execution(format!(
                "split: pattern '{pattern}' is not a valid regular expression: {e}"
            ))
        })?;
        let values = args.args[0].to_array(n)?;
        let values = arrow::compute::cast(&values, &DataType::Utf8)?;
        let strings = values.as_string::<i32>();
        let mut out = ListBuilder::with_capacity(StringBuilder::new(), strings.len());
        for v in strings.iter() {
            match v {
                None => out.append(false),
                Some(s) => {
                    split_into(&re, s, limit, out.values());
                    out.append(true);
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// Spark's split of one string (Java's `String.split(regex, limit)` with Spark's limit rule).
fn split_into(re: &regex::Regex, s: &str, limit: i64, out: &mut StringBuilder) {
    if s.is_empty() {
        out.append_value("");
        return;
    }
    if limit > 0 {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        for part in re.splitn(s, limit) {
            out.append_value(part);
        }
        return;
    }
    let mut last = 0;
    for m in re.find_iter(s) {
        // a zero-width match at the start gives no leading empty string (Java 8+)
        if m.end() == 0 {
            continue;
        }
        if m.start() == m.end() && m.start() >= s.len() {
            break;
        }
        out.append_value(&s[last..m.start()]);
        last = m.end();
    }
    out.append_value(&s[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str, pattern: &str, limit: i64) -> Vec<String> {
        let re = regex::Regex::new(pattern).expect("pattern");
        let mut b = ListBuilder::new(StringBuilder::new());
        split_into(&re, s, limit, b.values());
        b.append(true);
        let list = b.finish();
        let v = list.value(0);
        v.as_string::<i32>()
            .iter()
            .map(|x| x.unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn spark_split_rules() {
        // (input, pattern, limit, Spark's result)
        let cases: [(&str, &str, i64, &[&str]); 7] = [
            ("a b  c", " ", -1, &["a", "b", "", "c"]),
            ("a b c ", " ", -1, &["a", "b", "c", ""]),
            ("oneAtwoBthreeC", "[ABC]", -1, &["one", "two", "three", ""]),
            ("oneAtwoBthreeC", "[ABC]", 2, &["one", "twoBthreeC"]),
            ("a1b22c", "\\d+", 0, &["a", "b", "c"]),
            ("", " ", -1, &[""]),
            ("abc", "", -1, &["a", "b", "c"]),
        ];
        for (s, p, l, want) in cases {
            assert_eq!(split(s, p, l), want, "split('{s}', '{p}', {l})");
        }
    }
}
