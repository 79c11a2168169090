//! What runs on a batch's rows: the contract of a stateful operator ([`stateful`]) and the one
//! skeleton that runs every operator over its partitions ([`partitioned`]); the stateful
//! operators ([`aggregate`] with its session windows, [`dedup`], the stream-stream [`join`]) and
//! the stateless stream-static join (`join::static_join`); the watermark node
//! ([`watermark`]); the window functions and their shapes ([`window`]); the batch clock behind
//! `now()` ([`clock`]); the generators `explode`/`posexplode` ([`generate`]); Spark's regex `split` ([`split_fn`]); and `from_json`/`to_json` with the one JSON decoding loop
//! ([`json_fn`], epoch seconds in `json_epoch`). Operators import nothing of the plan, the
//! batch loop or the user-facing API.

pub mod aggregate;
pub mod clock;
pub mod dedup;
pub mod generate;
pub mod join;
pub(crate) mod json_epoch;
pub mod json_fn;
pub mod partitioned;
pub mod split_fn;
pub mod stateful;
pub mod watermark;
pub mod window;
