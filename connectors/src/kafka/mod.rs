//! Kafka through librdkafka (`rdkafka`, bundled librdkafka 2.12): the [`source`] with Spark's
//! options and offsets kept in Sluice's checkpoint, and the [`sink`], exactly-once through
//! Kafka transactions (at-least-once as an option).

pub mod sink;
pub mod source;
