//! vox-spec-tests: a black-box conformance harness for the vox protocol.
//!
//! The harness starts a subject process (`SUBJECT_CMD`, default: the
//! `vox-subject` binary next to this one) and talks to it over TCP, TLS or
//! WebSocket (`SPEC_TRANSPORT`, see [`transport`]) with raw
//! protocol messages it builds itself from `vox_core::wire` and
//! `vox_core::link` only: it never uses vox-core's session, conduit, driver
//! or transport modules, so it can say things a correct runtime never would.
//! A test (`tests/raw_only.rs`) checks that.
//!
//! Every case names the rule ids of `docs/spec/protocol.md` it covers; the
//! `coverage` command maps rules to cases.

pub mod cases;
pub mod coverage;
pub mod error;
pub mod peer;
pub mod runner;
pub mod subject;
pub mod transport;

pub use error::CaseError;
