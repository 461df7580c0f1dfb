//! vox-core: the vox RPC session runtime.
//!
//! Calls from either side, virtual connections, streaming channels with
//! credit flow control, cancellation, deadlines, keepalive, reconnect and
//! resume.
//!
//! # Quick start
//!
//! A service is a trait of `async fn`s; [`service`](macro@service)
//! generates a typed client and a dispatcher. [`service::Server`] serves it;
//! `<Name>Client::connect` connects to it.
//!
//! ```
//! use std::time::Duration;
//! use vox_core::driver::{Rx, channel};
//! use vox_core::service::{Server, ServiceError, ServiceRouter};
//!
//! #[vox_core::service]
//! pub trait Calculator {
//!     /// Safe to run twice: the client retries it across a reconnect.
//!     #[vox(idem)]
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     /// A user error is typed on the client.
//!     async fn divide(&self, a: i64, b: i64) -> Result<i64, String>;
//!     /// The handler receives a stream.
//!     async fn sum(&self, numbers: Rx<i64>) -> i64;
//! }
//!
//! #[derive(Clone)]
//! struct Calc;
//!
//! impl Calculator for Calc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//!     async fn divide(&self, a: i64, b: i64) -> Result<i64, String> {
//!         if b == 0 { Err("division by zero".into()) } else { Ok(a / b) }
//!     }
//!     async fn sum(&self, mut numbers: Rx<i64>) -> i64 {
//!         let mut total = 0;
//!         while let Ok(Some(n)) = numbers.recv().await {
//!             total += n;
//!         }
//!         total
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Server: serves every client until shut down.
//! let router = ServiceRouter::new().serve(CalculatorDispatcher::new(Calc));
//! let server = Server::new(router).bind("127.0.0.1:0").await?;
//!
//! // Client: a typed client of the server's root connection.
//! let calc = CalculatorClient::connect(server.local_addr()).await?;
//! assert_eq!(calc.add(2, 3).await?, 5);
//! assert!(matches!(calc.divide(1, 0).await, Err(ServiceError::User(e)) if e == "division by zero"));
//!
//! // Streaming: the client sends, the handler sums.
//! let (mut tx, rx) = channel::<i64>();
//! let total = tokio::spawn({
//!     let calc = calc.clone();
//!     async move { calc.sum(rx).await }
//! });
//! for n in 1..=10 {
//!     tx.send(&n).await?;
//! }
//! tx.close().await?;
//! assert_eq!(total.await??, 55);
//!
//! // A deadline for every call of this client (rule `rpc.deadline`).
//! let quick = CalculatorClient::new(calc.caller().with_timeout(Duration::from_secs(5)));
//! assert_eq!(quick.add(1, 1).await?, 2);
//!
//! // Graceful shutdown: in-flight calls finish, then every session ends.
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! Bottom up (see `PROTOCOL.md`): [`wire`] encodes every message, [`link`]
//! carries whole messages, [`transport`] runs the prologue, [`conduit`]
//! (de)serializes messages (bare, or stable across link breaks), [`driver`]
//! runs requests and channels on each connection, [`session`] multiplexes
//! connections over one conduit and survives its loss, and [`service`](mod@service) has
//! typed clients, routers and the server.

pub mod conduit;
pub mod driver;
mod id_window;
pub mod link;
mod mutant;
// Internals that the proofs and models drive directly are public only with
// the `test-util` feature (tokio does the same); users never need them.
// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod plumbing;
pub mod schema;
pub mod service;
pub mod session;
// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod sync;
pub mod transport;
pub mod wire;

/// Internals that the proofs, models and fuzzers drive directly, reachable
/// only with the `test-util` feature (users never need it; the crate's own
/// tests turn it on). Each module re-exports one internal module, which
/// itself stays `pub(crate)`: declared once, it is parsed once by tools
/// such as cargo-mutants.
#[cfg(feature = "test-util")]
pub mod test_util {
    /// The channel registry and its state types (`driver::channel`).
    pub mod channel {
        pub use crate::driver::channel::*;
    }
    /// A connection's send gate (`driver::liveness`).
    pub mod liveness {
        pub use crate::driver::liveness::*;
    }
    /// The session's control mailbox (`session::control`).
    pub mod control {
        pub use crate::session::control::*;
    }
    /// The session handshake, driven by hand (`session::handshake`).
    pub mod handshake {
        pub use crate::session::handshake::*;
    }
    /// The sans-IO operation table (`plumbing::operations`).
    pub mod operations {
        pub use crate::plumbing::operations::*;
    }
    /// The session's one outbound writer (`plumbing::outbound`).
    pub mod outbound {
        pub use crate::plumbing::outbound::*;
    }
    /// Locks and signals that switch to loom under `--cfg loom` (`sync`).
    pub mod sync {
        pub use crate::sync::*;
    }
}

pub use service::service;
pub use vox_macros::Schema;
