//! Running a query: the micro-batch loop ([`execution`]: offsets log → read → plan → sink →
//! commit log), its retry policy ([`retry`]), progress reports ([`progress`]), the batch
//! clock ([`clock`]), crash points for the exactly-once tests ([`fault`]) and the guarantee a
//! query gives ([`guarantee`]).

pub mod clock;
pub mod execution;
pub mod fault;
pub mod guarantee;
pub mod progress;
pub mod retry;
pub mod state;
