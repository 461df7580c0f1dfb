//! The per-session plumbing that the driver and the session share (DESIGN.md,
//! "How the code is laid out"): the one outbound writer, the session's
//! operation table, and why a connection ended.
//!
//! It sits above the conduit and below the driver: it names nothing of
//! `driver`, `session` or `service`, so both of them can use it without
//! importing each other's internals.

pub(crate) mod item_runs;
pub mod loss;
pub mod operations;
pub(crate) mod ops;
pub mod outbound;
#[cfg(all(test, not(loom)))]
mod outbound_tests;
pub(crate) mod outbox;
