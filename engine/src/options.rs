//! Source and sink options: Spark-style string key/values with case-insensitive keys.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{EngineError, Result};

/// Options of a source or sink. Keys compare case-insensitively (as in Spark); values are strings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options {
    map: BTreeMap<String, (String, String)>, // lowercased key -> (key as written, value)
}

/// Whether option `key` holds a credential (its value is never printed).
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "access.key",
        "accesskey",
        "access_key",
        "sas",
        "credential",
    ]
    .iter()
    .any(|w| k.contains(w))
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.map.values().map(|(k, v)| {
                let shown = if is_secret_option(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

impl Options {
    /// An empty set of options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` (replacing any earlier value).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        self.map
            .insert(key.to_ascii_lowercase(), (key, value.into()));
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map
            .get(&key.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// Removes and returns `key`.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.map.remove(&key.to_ascii_lowercase()).map(|(_, v)| v)
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(&key.to_ascii_lowercase())
    }

    /// (key as written, value) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.values().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Refuses any option not in `known` (case-insensitive) and not starting with one of
    /// `prefixes`, naming it and the options that exist.
    pub fn check_known(&self, what: &str, known: &[&str], prefixes: &[&str]) -> Result<()> {
        for (lower, (key, _)) in &self.map {
            let ok = known.iter().any(|k| k.eq_ignore_ascii_case(lower))
                || sluice_state::remote::location::is_storage_option(lower)
                || prefixes
                    .iter()
                    .any(|p| lower.starts_with(&p.to_ascii_lowercase()));
            if !ok {
                return Err(EngineError::user(format!(
                    "unknown option '{key}' for {what}; known options: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The object-storage options among these (`fs.s3a.*` and the others; see
    /// [`sluice_state::remote::Location`]).
    pub fn storage(&self) -> sluice_state::remote::StorageOptions {
        self.map
            .values()
            .filter(|(k, _)| sluice_state::remote::location::is_storage_option(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Adds the session's object-storage settings (`spark.hadoop.fs.s3a.endpoint` →
    /// `fs.s3a.endpoint`) where these options do not set them.
    pub fn with_storage_defaults(mut self, session: &sluice_state::remote::StorageOptions) -> Self {
        for (k, v) in session {
            let k = k.strip_prefix("spark.hadoop.").unwrap_or(k);
            if !self.contains(k) {
                self.set(k, v.clone());
            }
        }
        self
    }

    /// A boolean option (`true`/`false`, any case).
    ///
    /// (The options' `Debug` form masks credentials: see [`is_secret_option`].)
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(EngineError::user(format!(
                "option '{key}' must be true or false, got '{v}'"
            ))),
        }
    }

    /// A non-negative integer option.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                EngineError::user(format!(
                    "option '{key}' must be a non-negative integer, got '{v}'"
                ))
            }),
        }
    }

    /// A size option: bytes, or with a unit (`10k`, `64mb`, `1g`).
    pub fn get_bytes(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_bytes(v).map(Some).ok_or_else(|| {
                EngineError::user(format!(
                    "option '{key}' must be a size such as 1048576, 512k or 64m, got '{v}'"
                ))
            }),
        }
    }

    /// A duration option (`500 milliseconds`, `10s`, `7 days`, ...).
    pub fn get_duration(&self, key: &str) -> Result<Option<Duration>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_duration(v)
                .map(Some)
                .map_err(|e| EngineError::user(format!("option '{key}': {e}"))),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Options {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut o = Options::new();
        for (k, v) in iter {
            o.set(k, v);
        }
        o
    }
}

fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses a Spark-style interval: `"500 milliseconds"`, `"10 seconds"`, `"1 minute"`, `"2h"`,
/// `"7 days"`, or several parts (`"1 hour 30 minutes"`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let err = || {
        format!(
            "'{text}' is not a duration; write e.g. '500 milliseconds', '10 seconds', '5 minutes', '1 hour'"
        )
    };
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_prefix("interval").map(str::trim).unwrap_or(&t);
    if t.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| err())?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = rest[unit_end..].trim_start();
        let secs = match unit {
            "ns" | "nanosecond" | "nanoseconds" => 1e-9,
            "us" | "microsecond" | "microseconds" => 1e-6,
            "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1e-3,
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86400.0,
            "w" | "week" | "weeks" => 7.0 * 86400.0,
            _ => return Err(err()),
        };
        if unit.is_empty() && !rest.is_empty() {
            return Err(err());
        }
        let too_long = || format!("'{text}' is longer than {MAX_DURATION_YEARS} years");
        let part = Duration::try_from_secs_f64(n * secs).map_err(|_| too_long())?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > max_duration() {
            return Err(too_long());
        }
    }
    Ok(total)
}

/// The longest duration Sluice takes (trigger intervals, watermark delays, windows): enough for
/// any real use, and small enough that every time computed with it fits in microseconds.
pub const MAX_DURATION_YEARS: u64 = 1000;

fn max_duration() -> Duration {
    Duration::from_secs(MAX_DURATION_YEARS * 365 * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug() {
        let mut o = Options::new();
        o.set("fs.s3a.secret.key", "s3cr3t-value");
        o.set("awsSecretKey", "s3cr3t-value");
        o.set("fs.s3a.access.key", "AKIDVALUE");
        o.set("kafka.sasl.password", "s3cr3t-value");
        o.set("path", "s3://b/x");
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("AKIDVALUE"),
            "{shown}"
        );
        assert!(shown.contains("s3://b/x"), "{shown}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("500 milliseconds"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("10 seconds"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1 minute"), Ok(Duration::from_secs(60)));
        assert_eq!(
            parse_duration("1 hour 30 minutes"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse_duration("interval 7 days"),
            Ok(Duration::from_secs(7 * 86400))
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn options_are_case_insensitive_and_checked() {
        let mut o = Options::new();
        o.set("maxFilesPerTrigger", "3");
        assert_eq!(o.get_u64("maxfilespertrigger").expect("u64"), Some(3));
        assert!(o
            .check_known("json source", &["maxFilesPerTrigger"], &[])
            .is_ok());
        o.set("maxFilesPerTriger", "3");
        let err = o
            .check_known("json source", &["maxFilesPerTrigger"], &[])
            .expect_err("typo");
        assert!(err.to_string().contains("'maxFilesPerTriger'"), "{err}");
        o.set("x", "maybe");
        assert!(o.get_bool("x", false).is_err());
        assert_eq!(parse_bytes("64m"), Some(64 << 20));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("1x"), None);
    }
}
