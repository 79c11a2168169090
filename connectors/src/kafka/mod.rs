//! Kafka through librdkafka (`rdkafka`, bundled librdkafka 2.12): the [`source`] with Spark's
//! options and offsets kept in Sluice's checkpoint, and the [`sink`], exactly-once through
//! Kafka transactions (at-least-once as an option).
//!
//! - [`settings`]: the source's options, the librdkafka settings Sluice owns, error
//!   classification, and the factory that checks and creates sources.
//! - [`source`]: offsets (starting, new partitions, rate limits) and the `Source` contract.
//! - [`records`]: a batch's offset ranges read into Spark's row schema (or straight into the
//!   user's schema through the JSON shortcut).
//! - [`watch`]: the consumer parked at every partition's end that wakes the query.
//! - [`sink`]: transactions with a marker per batch in the commit topic.

mod records;
mod settings;
pub mod sink;
pub mod source;
mod watch;

pub use records::kafka_schema;
pub use settings::KafkaSourceFactory;
