//! Drivers: requests, responses and channels on one connection.
//!
//! `channel::Registry` owns all channel state; [`ConnectionCore`] owns
//! calls and handlers; `handle` has the typed channel ends ([`Tx`], [`Rx`]).

// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod channel;
pub(crate) mod context;
mod core;
mod error;
mod handle;
mod handler;
// Items only the proofs drive are unused without test-util.
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unused_imports))]
pub(crate) mod liveness;
pub mod metrics;
pub mod trace;

pub use crate::plumbing::loss::{Fault, LossCause};
pub use crate::plumbing::operations::MethodPolicy;
pub use channel::{ChannelStats, ChannelView, Violation as ChannelViolation, ViolationKind as ChannelViolationKind};
pub use context::{CallContext, DEADLINE_KEY};
pub(crate) use core::Inbound;
pub use core::{ConnectionCore, CoreStats, InFlight, Violation};
pub use error::CallError;
pub use handle::{
    ChannelArg, ChannelError, DEFAULT_INITIAL_CREDIT, Role, Rx, TrySendError, Tx, channel, channel_with_credit,
};
pub(crate) use handler::CallSchema;
pub use handler::{BindError, BoxFuture, Call, ChannelBinder, Handler, ReplySink};
