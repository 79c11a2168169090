//! What a query promises about its output after a crash and restart: the weakest of what its
//! sources and its sink promise. A source is replayable when reading the same offsets again
//! gives the same rows (files, Kafka, Delta); a sink is exactly-once when writing a batch id it
//! already has leaves the output as if it were written once (file manifest, JDBC marker row,
//! Delta transaction, Kafka transaction). Connectors must claim these; the defaults are no.

/// The delivery guarantee of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Every input row's result is in the sink once, across crashes and restarts.
    ExactlyOnce,
    /// A batch re-run after a crash may be written again.
    AtLeastOnce,
}

impl Guarantee {
    /// `exactly-once` or `at-least-once`.
    pub fn name(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
        }
    }
}

impl std::fmt::Display for Guarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The query's guarantee and why, from (format, replayable) of each source and (format,
/// exactly-once) of the sink. Pure; table-tested.
pub fn of_query(sources: &[(&str, bool)], sink: (&str, bool)) -> (Guarantee, String) {
    let mut why = Vec::new();
    for (f, replayable) in sources {
        if !replayable {
            why.push(format!("the {f} source cannot replay a batch"));
        }
    }
    if !sink.1 {
        why.push(format!("the {} sink writes a re-run batch again", sink.0));
    }
    if why.is_empty() {
        (
            Guarantee::ExactlyOnce,
            format!(
                "replayable sources ({}) and an idempotent {} sink",
                sources
                    .iter()
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
                    .join(", "),
                sink.0
            ),
        )
    } else {
        (Guarantee::AtLeastOnce, why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weakest_part_decides() {
        // (sources, sink, expected): (format, replayable / exactly-once)
        type Part = (&'static str, bool);
        let table: &[(&[Part], Part, Guarantee)] = &[
            (&[("json", true)], ("jdbc", true), Guarantee::ExactlyOnce),
            (
                &[("json", true), ("kafka", true)],
                ("delta", true),
                Guarantee::ExactlyOnce,
            ),
            (
                &[("json", true)],
                ("console", false),
                Guarantee::AtLeastOnce,
            ),
            (&[("rate", false)], ("jdbc", true), Guarantee::AtLeastOnce),
            (
                &[("json", true), ("x", false)],
                ("csv", true),
                Guarantee::AtLeastOnce,
            ),
        ];
        for (sources, sink, want) in table {
            assert_eq!(of_query(sources, *sink).0, *want, "{sources:?} {sink:?}");
        }
        let (_, why) = of_query(&[("x", false)], ("console", false));
        assert_eq!(
            why,
            "the x source cannot replay a batch; the console sink writes a re-run batch again"
        );
    }
}
