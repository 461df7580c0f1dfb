//! Drivers: requests, responses and channels on one connection.
//!
//! [`channel::Registry`] owns all channel state; [`ConnectionCore`] owns
//! calls and handlers; `handle` has the typed channel ends ([`Tx`], [`Rx`]).

pub mod channel;
pub(crate) mod context;
mod core;
mod error;
mod handle;
mod handler;
pub mod liveness;

pub use context::{CallContext, DEADLINE_KEY};
pub(crate) use core::Inbound;
pub use core::{ConnectionCore, CoreStats, Violation};
pub use error::CallError;
pub use handle::{
    ChannelArg, ChannelError, DEFAULT_INITIAL_CREDIT, Role, Rx, TrySendError, Tx, channel, channel_with_credit,
};
pub use handler::{BindError, BoxFuture, Call, ChannelBinder, Handler, ReplySink};
