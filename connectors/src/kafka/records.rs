//! Kafka records into Arrow: Spark's row schema, the read of a batch's offset ranges, and the
//! JSON shortcut that decodes values straight into the user's schema.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, ListBuilder, RecordBatch, StringArray,
    StructBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset as KOffset, Timestamp, TopicPartitionList};
use sluice_engine::{EngineError, Result};

use super::settings::*;
use super::source::KafkaSource;
use crate::formats::shortcut::Shortcut;

/// Spark's Kafka row schema (headers when `includeHeaders`).
pub fn kafka_schema(headers: bool) -> Schema {
    let mut f = vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp", sluice_engine::timestamp_type(), true),
        Field::new("timestampType", DataType::Int32, true),
    ];
    if headers {
        f.push(Field::new("headers", headers_type(), true));
    }
    Schema::new(f)
}

pub(crate) fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Binary, true),
    ])
}

pub(crate) fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        true,
    )))
}

/// Metadata columns kept beside the parsed value in the schema shortcut.
pub(crate) fn shortcut_meta() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp", sluice_engine::timestamp_type(), true),
    ]
}

/// One record, copied out of librdkafka.
pub(crate) struct Rec {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) ts_ms: Option<i64>,
    pub(super) ts_type: i32,
    pub(super) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl KafkaSource {
    /// Reads `[from, until)` of each partition.
    pub(super) fn read(&mut self, ranges: &[(String, i32, i64, i64)]) -> Result<Vec<Rec>> {
        let mut tpl = TopicPartitionList::new();
        let mut left: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (t, p, s, e) in ranges {
            if s < e {
                tpl.add_partition_offset(t, *p, KOffset::Offset(*s))
                    .map_err(|e| kafka_err("assigning", e))?;
                left.insert((t.clone(), *p), *e);
            }
        }
        let mut out = Vec::new();
        if left.is_empty() {
            return Ok(out);
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assigning partitions", e))?;
        // an idle timeout: a large range takes as long as it takes, a silent broker does not
        let idle = self.s.timeout * 3;
        let mut deadline = Instant::now() + idle;
        let result = loop {
            if left.is_empty() {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(EngineError::external(format!(
                    "kafka: no record for {idle:?} while reading {:?}",
                    left.keys().collect::<Vec<_>>()
                )));
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    deadline = Instant::now() + idle;
                    let k = (m.topic().to_string(), m.partition());
                    let Some(&e) = left.get(&k) else { continue };
                    if m.offset() < e {
                        let (ts_ms, ts_type) = match m.timestamp() {
                            Timestamp::CreateTime(t) => (Some(t), 0),
                            Timestamp::LogAppendTime(t) => (Some(t), 1),
                            Timestamp::NotAvailable => (None, -1),
                        };
                        let headers = if self.s.include_headers {
                            m.headers()
                                .map(|h| {
                                    h.iter()
                                        .map(|hd| {
                                            (hd.key.to_string(), hd.value.map(<[u8]>::to_vec))
                                        })
                                        .collect()
                                })
                                .unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        out.push(Rec {
                            topic: k.0.clone(),
                            partition: k.1,
                            offset: m.offset(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                            ts_ms,
                            ts_type,
                            headers,
                        });
                    }
                    if m.offset() + 1 >= e {
                        left.remove(&k);
                    }
                }
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    // records deleted while reading: find the partition
                    let mut lost = None;
                    for ((t, p), _) in left.iter() {
                        let from = out
                            .iter()
                            .filter(|r| &r.topic == t && r.partition == *p)
                            .map(|r| r.offset + 1)
                            .max()
                            .or_else(|| ranges.iter().find(|r| &r.0 == t && r.1 == *p).map(|r| r.2))
                            .unwrap_or(0);
                        if let Ok((low, _)) = self.watermarks(t, *p) {
                            if low > from {
                                lost = Some((t.clone(), *p, from, low));
                            }
                        }
                    }
                    match lost {
                        Some((t, p, from, low)) => break self.data_loss(&t, p, from, low),
                        None => {
                            break Err(EngineError::external(
                                "kafka: offset out of range while reading".to_string(),
                            ))
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // gaps (transaction markers, compaction): the position passes them
                    if let Ok(pos) = self.consumer.position() {
                        for el in pos.elements() {
                            if let KOffset::Offset(p) = el.offset() {
                                let k = (el.topic().to_string(), el.partition());
                                if left.get(&k).is_some_and(|&e| p >= e) {
                                    left.remove(&k);
                                }
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!("kafka: consumer: {e}");
                    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                        break Err(kafka_err("reading", e));
                    }
                }
            }
        };
        let _ = self.consumer.unassign();
        result?;
        out.sort_by(|a, b| {
            (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
        });
        Ok(out)
    }

    pub(super) fn raw_batch(&self, recs: &[Rec]) -> Result<RecordBatch> {
        let key: ArrayRef = Arc::new(
            recs.iter()
                .map(|r| r.key.as_deref())
                .collect::<arrow::array::BinaryArray>(),
        );
        let value: ArrayRef = Arc::new(
            recs.iter()
                .map(|r| r.value.as_deref())
                .collect::<arrow::array::BinaryArray>(),
        );
        let topic: ArrayRef = Arc::new(StringArray::from_iter_values(
            recs.iter().map(|r| r.topic.as_str()),
        ));
        let partition: ArrayRef = Arc::new(Int32Array::from_iter_values(
            recs.iter().map(|r| r.partition),
        ));
        let offset: ArrayRef =
            Arc::new(Int64Array::from_iter_values(recs.iter().map(|r| r.offset)));
        let ts: ArrayRef = Arc::new(
            recs.iter()
                .map(|r| r.ts_ms.and_then(|t| t.checked_mul(1000)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        );
        let ts_type: ArrayRef =
            Arc::new(Int32Array::from_iter_values(recs.iter().map(|r| r.ts_type)));
        let mut cols = vec![key, value, topic, partition, offset, ts, ts_type];
        if self.s.include_headers {
            let mut b = ListBuilder::new(StructBuilder::from_fields(header_fields(), recs.len()));
            for r in recs {
                for (k, v) in &r.headers {
                    let s = b.values();
                    s.field_builder::<arrow::array::StringBuilder>(0)
                        .ok_or_else(|| EngineError::bug("header key builder"))?
                        .append_value(k);
                    let vb = s
                        .field_builder::<BinaryBuilder>(1)
                        .ok_or_else(|| EngineError::bug("header value builder"))?;
                    match v {
                        Some(v) => vb.append_value(v),
                        None => vb.append_null(),
                    }
                    s.append(true);
                }
                b.append(true);
            }
            cols.push(Arc::new(b.finish()));
        }
        let _ = TimeUnit::Microsecond;
        Ok(RecordBatch::try_new(
            Arc::new(kafka_schema(self.s.include_headers)),
            cols,
        )?)
    }

    /// The schema shortcut: values parsed as JSON into the user's columns, plus metadata.
    pub(super) fn parsed_batch(&self, sc: &Shortcut, recs: &[Rec]) -> Result<RecordBatch> {
        let mut parts: Vec<RecordBatch> = Vec::new();
        // per partition, so a FAILFAST error names the partition and offset
        let mut i = 0;
        while i < recs.len() {
            let mut j = i;
            while j < recs.len()
                && recs[j].topic == recs[i].topic
                && recs[j].partition == recs[i].partition
            {
                j += 1;
            }
            let payloads: Vec<(usize, Option<&[u8]>)> = recs[i..j]
                .iter()
                .map(|r| (r.offset.max(0) as usize, r.value.as_deref()))
                .collect();
            let what = format!(
                "kafka topic {} partition {}",
                recs[i].topic, recs[i].partition
            );
            parts.extend(sc.decode(&what, "offset", &payloads)?);
            i = j;
        }
        let mut cols: Vec<ArrayRef> = Vec::new();
        cols.push(Arc::new(
            recs.iter()
                .map(|r| {
                    r.key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                })
                .collect::<StringArray>(),
        ));
        cols.push(Arc::new(StringArray::from_iter_values(
            recs.iter().map(|r| r.topic.as_str()),
        )));
        cols.push(Arc::new(Int32Array::from_iter_values(
            recs.iter().map(|r| r.partition),
        )));
        cols.push(Arc::new(Int64Array::from_iter_values(
            recs.iter().map(|r| r.offset),
        )));
        cols.push(Arc::new(
            recs.iter()
                .map(|r| r.ts_ms.and_then(|t| t.checked_mul(1000)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ));
        sc.assemble(&self.schema, &parts, cols)
    }
}
