//! concur: the talk *Concurrent Programming in Python* turned into measured software.
//!
//! - [`protocol`]: the echo and fib services as sans-I/O state machines.
//! - [`fib`]: the CPU-bound kernel and `concur fib`.
//! - [`serve`]: the plumbing every server model shares; it names no model.
//! - [`models`]: the talk's servers, one file each, and their registry.
//! - [`serve_cmd`]: `concur serve` on the command line, above the registry it reads.
//! - [`load`]: `concur load`, the verifying load generator.
//! - [`merge`]: `concur merge`, many agents' reports made one, exactly.
//! - [`report_merge`]: what every merge of reports shares (below `hold` and `merge`).
//! - [`hold`]: `concur hold`, the C10K test: many connections held open at once.
//! - [`lab`]: `concur lab`, the talk's questions as experiments and a report.
//! - [`account`]: what a server spent, from its cgroup or a sampler that remembers exited tasks.
//! - [`sys`]: CPU time, /proc readings, pinning, descriptor limits.
//! - [`error`]: errors a user can act on, and their exit codes.
//! - [`output`]: stdout that fails with one line, not a panic.
//!
//! `src/main.rs` only parses the command line and calls into these modules.

pub mod account;
pub mod error;
pub mod fib;
pub mod hold;
pub mod interrupt;
pub mod lab;
pub mod load;
pub mod logging;
pub mod merge;
pub mod models;
pub mod output;
pub mod proctree;
pub mod protocol;
pub mod report_merge;
pub mod serve;
pub mod serve_cmd;
pub mod sys;
