//! concur: the talk *Concurrent Programming in Python* turned into measured software.
//!
//! - [`protocol`]: the echo and fib services as sans-I/O state machines.
//! - [`fib`]: the CPU-bound kernel and `concur fib`.
//! - [`lab`]: `concur lab`, the talk's questions as experiments and a report.
//! - [`sys`]: CPU time, /proc readings, pinning, descriptor limits.
//! - [`serve`]: `concur serve`, its options and the pieces every server model shares.
//! - [`models`]: the talk's servers, one file each.
//! - [`error`]: errors a user can act on, and their exit codes.
//!
//! `src/main.rs` only parses the command line and calls into these modules.

pub mod error;
pub mod fib;
pub mod lab;
pub mod logging;
pub mod models;
pub mod protocol;
pub mod serve;
pub mod sys;
