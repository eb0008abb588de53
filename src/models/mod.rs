//! The talk's servers, one file each. Every model has the same signature
//! ([`crate::serve::ModelFn`]) and shares the protocol code and the pieces in
//! [`crate::serve`]; a model file holds only its concurrency. Register a new model
//! in [`crate::serve::Model`].

pub mod async_;
pub mod blocking;
pub mod epoll;
pub mod prefork;
pub mod processes;
pub mod reuseport;
pub mod select;
pub mod threadpool;
pub mod threads;
pub mod uring;
