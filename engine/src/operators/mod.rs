//! What runs on a batch's rows: the stateful operators ([`aggregate`] with its session
//! windows, [`dedup`]), the watermark node ([`watermark`]), the window functions and their
//! shapes ([`window`]), and `from_json`/`to_json` with the one JSON decoding loop
//! ([`json_fn`], epoch seconds in `json_epoch`).

pub mod aggregate;
pub mod dedup;
pub(crate) mod json_epoch;
pub mod json_fn;
pub mod watermark;
pub mod window;
