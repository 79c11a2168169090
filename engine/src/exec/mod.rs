//! Running a query: the micro-batch loop ([`execution`]: offsets log → read → plan → sink →
//! commit log), the state the execution owns ([`state`]: every operator's partition stores,
//! their commits and progress), its retry policy ([`retry`]), progress reports
//! ([`progress`]), its triggers ([`trigger`]), what the query's thread shares with its handles ([`shared`]), crash points for the exactly-once tests ([`fault`]) and the guarantee a
//! query gives ([`guarantee`]), and the data-quality rules on the written rows
//! ([`expectations`]).

pub mod execution;
pub mod expectations;
pub mod fault;
pub mod guarantee;
pub mod progress;
pub mod retry;
pub mod shared;
pub mod state;
pub mod trigger;
