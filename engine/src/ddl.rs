//! Spark DDL schema strings (`"ts TIMESTAMP, action STRING, value DOUBLE"`) to Arrow schemas.
//!
//! Types follow Spark: `TIMESTAMP` is microseconds in UTC, `TIMESTAMP_NTZ` without a zone,
//! `STRING`, `BOOLEAN`, `TINYINT`/`SMALLINT`/`INT`/`BIGINT` (and `BYTE`, `SHORT`, `LONG`),
//! `FLOAT`, `DOUBLE`, `DECIMAL(p, s)`, `DATE`, `BINARY`, `ARRAY<t>`, `MAP<k, v>`,
//! `STRUCT<name: t, ...>`. A column may end with `NOT NULL` and `COMMENT '...'`.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};

use crate::error::{EngineError, Result};

/// The Arrow type Sluice uses for Spark's `TIMESTAMP`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Parses a DDL schema string.
pub fn parse_ddl_schema(ddl: &str) -> Result<Schema> {
    let tokens = tokenize(ddl)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        src: ddl,
        depth: 0,
    };
    let mut fields = Vec::new();
    loop {
        fields.push(p.column()?);
        match p.next() {
            None => break,
            Some(Tok::Punct(',')) => continue,
            Some(t) => return Err(p.error(&format!("expected ',' between columns, found {t}"))),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for f in &fields {
        if !seen.insert(f.name().to_ascii_lowercase()) {
            return Err(EngineError::user(format!(
                "schema \"{ddl}\" names column '{}' twice",
                f.name()
            )));
        }
    }
    Ok(Schema::new(fields))
}

/// Writes a schema as a DDL string [`parse_ddl_schema`] reads back (names quoted with backticks
/// when they need it; nullability and metadata are not written).
pub fn schema_to_ddl(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", ddl_name(f.name()), type_to_ddl(f.data_type())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ddl_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

/// The DDL name of an Arrow type (Spark's names; a type without one is written as STRING).
pub fn type_to_ddl(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT".into(),
        DataType::UInt8 => "SMALLINT".into(),
        DataType::UInt16 => "INT".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP_NTZ".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BINARY".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("ARRAY<{}>", type_to_ddl(f.data_type()))
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "MAP<{}, {}>",
                type_to_ddl(kv[0].data_type()),
                type_to_ddl(kv[1].data_type())
            ),
            _ => "STRING".into(),
        },
        DataType::Struct(fields) => format!(
            "STRUCT<{}>",
            fields
                .iter()
                .map(|f| format!("{}: {}", ddl_name(f.name()), type_to_ddl(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "STRING".into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Str(String),
    Num(u64),
    Punct(char),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "'{w}'"),
            Tok::Quoted(w) => write!(f, "`{w}`"),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Punct(c) => write!(f, "'{c}'"),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let bad = |msg: String| EngineError::user(format!("invalid schema \"{s}\": {msg}"));
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '`' || c == '\'' || c == '"' {
            let mut j = i + 1;
            let mut text = String::new();
            while j < chars.len() && chars[j] != c {
                text.push(chars[j]);
                j += 1;
            }
            if j >= chars.len() {
                return Err(bad(format!("unterminated {c}")));
            }
            out.push(if c == '`' {
                Tok::Quoted(text)
            } else {
                Tok::Str(text)
            });
            i = j + 1;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            let text: String = chars[i..j].iter().collect();
            out.push(Tok::Num(
                text.parse()
                    .map_err(|_| bad(format!("bad number {text}")))?,
            ));
            i = j;
        } else if c.is_alphanumeric() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            out.push(Tok::Word(chars[i..j].iter().collect()));
            i = j;
        } else if "<>(),:".contains(c) {
            out.push(Tok::Punct(c));
            i += 1;
        } else {
            return Err(bad(format!("unexpected character '{c}'")));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    pos: usize,
    src: &'a str,
    /// Nesting of ARRAY / MAP / STRUCT types being parsed.
    depth: usize,
}

/// How deeply types may nest (`ARRAY<ARRAY<...>>`): Spark has no fixed limit, but a schema
/// string is read recursively and must not exhaust the stack.
const MAX_TYPE_DEPTH: usize = 64;

impl Parser<'_> {
    fn error(&self, msg: &str) -> EngineError {
        EngineError::user(format!("invalid schema \"{}\": {msg}", self.src))
    }
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, c: char) -> Result<()> {
        match self.next() {
            Some(Tok::Punct(p)) if p == c => Ok(()),
            Some(t) => Err(self.error(&format!("expected '{c}', found {t}"))),
            None => Err(self.error(&format!("expected '{c}', found the end"))),
        }
    }
    fn name(&mut self) -> Result<String> {
        match self.next() {
            Some(Tok::Word(w)) | Some(Tok::Quoted(w)) => Ok(w),
            Some(t) => Err(self.error(&format!("expected a column name, found {t}"))),
            None => Err(self.error("expected a column name, found the end")),
        }
    }
    fn column(&mut self) -> Result<Field> {
        let name = self.name()?;
        if matches!(self.peek(), Some(Tok::Punct(':'))) {
            self.pos += 1;
        }
        let dt = self.data_type().map_err(|e| match e {
            EngineError::User(m) => EngineError::User(format!("{m} (column '{name}')")),
            e => e,
        })?;
        let mut nullable = true;
        loop {
            match self.peek() {
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => nullable = false,
                        _ => return Err(self.error("expected NULL after NOT")),
                    }
                }
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("comment") => {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Str(_)) => {}
                        _ => return Err(self.error("expected a quoted text after COMMENT")),
                    }
                }
                _ => break,
            }
        }
        Ok(Field::new(name, dt, nullable))
    }
    fn data_type(&mut self) -> Result<DataType> {
        self.depth += 1;
        let r = if self.depth > MAX_TYPE_DEPTH {
            Err(self.error(&format!("types nest deeper than {MAX_TYPE_DEPTH} levels")))
        } else {
            self.data_type_inner()
        };
        self.depth -= 1;
        r
    }
    fn data_type_inner(&mut self) -> Result<DataType> {
        let word = match self.next() {
            Some(Tok::Word(w)) => w.to_ascii_uppercase(),
            Some(t) => return Err(self.error(&format!("expected a type, found {t}"))),
            None => return Err(self.error("expected a type, found the end")),
        };
        Ok(match word.as_str() {
            "STRING" | "TEXT" => DataType::Utf8,
            "VARCHAR" | "CHAR" => {
                if matches!(self.peek(), Some(Tok::Punct('('))) {
                    self.pos += 1;
                    self.number()?;
                    self.expect(')')?;
                }
                DataType::Utf8
            }
            "BOOLEAN" | "BOOL" => DataType::Boolean,
            "TINYINT" | "BYTE" => DataType::Int8,
            "SMALLINT" | "SHORT" => DataType::Int16,
            "INT" | "INTEGER" => DataType::Int32,
            "BIGINT" | "LONG" => DataType::Int64,
            "FLOAT" | "REAL" => DataType::Float32,
            "DOUBLE" => DataType::Float64,
            "DATE" => DataType::Date32,
            "TIMESTAMP" | "TIMESTAMP_LTZ" => timestamp_type(),
            "TIMESTAMP_NTZ" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "BINARY" => DataType::Binary,
            "DECIMAL" | "DEC" | "NUMERIC" => {
                let (mut p, mut s) = (10u64, 0u64);
                if matches!(self.peek(), Some(Tok::Punct('('))) {
                    self.pos += 1;
                    p = self.number()?;
                    if matches!(self.peek(), Some(Tok::Punct(','))) {
                        self.pos += 1;
                        s = self.number()?;
                    }
                    self.expect(')')?;
                }
                if p == 0 || p > 38 || s > p {
                    return Err(self.error(&format!("DECIMAL({p}, {s}) is out of range")));
                }
                DataType::Decimal128(p as u8, s as i8)
            }
            "ARRAY" => {
                self.expect('<')?;
                let inner = self.data_type()?;
                self.expect('>')?;
                DataType::List(Arc::new(Field::new("element", inner, true)))
            }
            "MAP" => {
                self.expect('<')?;
                let k = self.data_type()?;
                self.expect(',')?;
                let v = self.data_type()?;
                self.expect('>')?;
                let entries = Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", k, false),
                        Field::new("value", v, true),
                    ])),
                    false,
                );
                DataType::Map(Arc::new(entries), false)
            }
            "STRUCT" => {
                self.expect('<')?;
                let mut fields = Vec::new();
                loop {
                    fields.push(self.column()?);
                    match self.next() {
                        Some(Tok::Punct(',')) => continue,
                        Some(Tok::Punct('>')) => break,
                        _ => return Err(self.error("expected ',' or '>' in STRUCT<...>")),
                    }
                }
                DataType::Struct(Fields::from(fields))
            }
            other => {
                return Err(self.error(&format!(
                    "unknown type {other}; use STRING, BOOLEAN, INT, BIGINT, FLOAT, DOUBLE, \
                     DECIMAL(p,s), DATE, TIMESTAMP, TIMESTAMP_NTZ, BINARY, ARRAY<..>, MAP<..>, STRUCT<..>"
                )))
            }
        })
    }
    fn number(&mut self) -> Result<u64> {
        match self.next() {
            Some(Tok::Num(n)) => Ok(n),
            _ => Err(self.error("expected a number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_written_reads_back_as_the_same_schema() {
        let ddl = "`my col` DECIMAL(12, 2), tags ARRAY<STRING>, m MAP<STRING, INT>, \
                   p STRUCT<x: DOUBLE, `y y`: BIGINT>, d DATE, b BINARY, n TIMESTAMP_NTZ, \
                   t TIMESTAMP, f BOOLEAN";
        let schema = parse_ddl_schema(ddl).expect("ok");
        let written = schema_to_ddl(&schema);
        assert_eq!(
            written,
            "`my col` DECIMAL(12, 2), tags ARRAY<STRING>, m MAP<STRING, INT>, \
             p STRUCT<x: DOUBLE, `y y`: BIGINT>, d DATE, b BINARY, n TIMESTAMP_NTZ, \
             t TIMESTAMP, f BOOLEAN"
        );
        assert_eq!(parse_ddl_schema(&written).expect("ok"), schema);
    }

    #[test]
    fn parses_the_seed_schema() {
        let s = parse_ddl_schema(
            "event_time TIMESTAMP, action STRING, user_id BIGINT, value DOUBLE, country STRING",
        )
        .expect("parse");
        let types: Vec<_> = s.fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(
            types,
            vec![
                timestamp_type(),
                DataType::Utf8,
                DataType::Int64,
                DataType::Float64,
                DataType::Utf8
            ]
        );
        assert_eq!(s.field(2).name(), "user_id");
    }

    #[test]
    fn parses_nested_and_modifiers() {
        let s = parse_ddl_schema(
            "`my col` DECIMAL(12, 2) NOT NULL COMMENT 'money', tags ARRAY<STRING>, \
             m MAP<STRING, INT>, p STRUCT<x: DOUBLE, y DOUBLE>, d date, b binary, n TIMESTAMP_NTZ",
        )
        .expect("parse");
        assert_eq!(s.field(0).name(), "my col");
        assert!(!s.field(0).is_nullable());
        assert_eq!(s.field(0).data_type(), &DataType::Decimal128(12, 2));
        assert!(matches!(s.field(1).data_type(), DataType::List(_)));
        assert!(matches!(s.field(2).data_type(), DataType::Map(_, _)));
        assert!(matches!(s.field(3).data_type(), DataType::Struct(f) if f.len() == 2));
        assert_eq!(s.field(4).data_type(), &DataType::Date32);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_ddl_schema("a STRNG").expect_err("typo").to_string();
        assert!(e.contains("unknown type STRNG") && e.contains("'a'"), "{e}");
        let e = parse_ddl_schema("a INT b INT")
            .expect_err("comma")
            .to_string();
        assert!(e.contains("expected ','"), "{e}");
        let e = parse_ddl_schema("a INT, A STRING")
            .expect_err("dup")
            .to_string();
        assert!(e.contains("twice"), "{e}");
        assert!(parse_ddl_schema("").is_err());
    }
}
