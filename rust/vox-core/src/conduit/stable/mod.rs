//! The stable conduit (rules `conduit.stable`, `stable.*`): a conduit that
//! outlives its link. Every message travels in a numbered frame; frames are
//! kept until the peer acknowledges them and are sent again, in their
//! original order and with their original seq, on the next link.
//!
//! The numbering and buffering are the sans-IO [`StableState`]; this module
//! adds the tasks around it:
//! - one writer task per conduit owns the current link's sending half, so
//!   frames leave in seq order even while links are swapped;
//! - the receiving half ([`StableRx`]) reads the current link and switches
//!   to a newer one as soon as it is attached;
//! - on a break, the client redials through its [`LinkSource`](crate::link::LinkSource) with
//!   [`Backoff`] until the recovery timeout; the server waits that long for
//!   the client to come back with the conduit's resume key.
//!
//! One submodule per task or side, so each can be read alone: `writer` and
//! `reader` (the link tasks), `client` and `server` (setup and recovery),
//! `halves` (what the session holds), `hello` (the setup messages both
//! sides use) and `shared` (the state all of them lock).

mod client;
mod halves;
mod hello;
mod reader;
mod server;
mod shared;
mod state;
mod writer;

pub use client::{connect, connect_over};
pub use halves::{StableRx, StableTx};
pub use hello::StableSetupError;
pub use server::{StableAccepted, StableRegistry};
pub use state::{Inbound, StableError, StableState, seq_after};

use super::ConduitError;
use crate::link::Backoff;
use reader::{DELIVERY_QUEUE, reader};
use shared::StableShared;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use writer::writer;

/// Settings of a stable conduit.
#[derive(Clone, Debug)]
pub struct StableConfig {
    /// Byte limit of the replay buffer; senders wait when it is full (rule
    /// `stable.replay-buffer.bounded`). Default 1 MiB.
    pub replay_limit: usize,
    /// How long a broken conduit waits for a new link before it gives up.
    pub recovery_timeout: Duration,
    /// Delays between redial attempts (client side).
    pub backoff: Backoff,
    /// How long the hello exchange on a fresh link may take.
    pub hello_timeout: Duration,
    /// How long a conduit whose peer broke the rules stays open to carry
    /// the `ProtocolError` out: it is closed then even if the session never
    /// closes it (rule `session.protocol-error`). Default 500 ms.
    pub violation_deadline: Duration,
    /// The longest a conduit whose sending half was dropped, not closed,
    /// waits for the peer to acknowledge what is still held before it ends
    /// anyway. Default 5 s.
    pub drop_close_timeout: Duration,
}

impl Default for StableConfig {
    fn default() -> Self {
        StableConfig {
            replay_limit: 1 << 20,
            recovery_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            hello_timeout: Duration::from_secs(10),
            violation_deadline: Duration::from_millis(500),
            drop_close_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a stable conduit ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StableEnd {
    /// The peer closed it on purpose.
    #[error("the peer closed the stable conduit")]
    PeerBye,
    /// This side closed it.
    #[error("the stable conduit was closed locally")]
    LocalClose,
    /// The server did not know the resume key: the session is lost.
    #[error("resume refused, the session is lost: {0}")]
    UnknownKey(String),
    /// No new link came within the recovery timeout.
    #[error("no new link within the recovery timeout of {0:?}")]
    RecoveryTimeout(Duration),
    /// The peer broke the stable-conduit rules.
    #[error(transparent)]
    Violation(#[from] StableError),
    /// The peer sent a link message that is not a `StableMsg`.
    #[error("undecodable stable-conduit message from the peer: {0}")]
    Undecodable(String),
}

fn ended(end: &StableEnd) -> ConduitError {
    ConduitError::Stable(end.clone())
}

/// Starts the writer and reader tasks of a conduit and hands out its halves.
fn halves(shared: Arc<StableShared>) -> (StableTx, StableRx) {
    let (out, queue) = mpsc::channel(DELIVERY_QUEUE);
    tokio::spawn(writer(shared.clone()));
    tokio::spawn(reader(shared.clone(), out));
    (StableTx { shared: shared.clone() }, StableRx { shared, queue })
}
