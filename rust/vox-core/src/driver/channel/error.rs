//! Errors and outcomes of channel registry events.

pub use crate::plumbing::loss::LossCause;
use crate::wire::ChannelId;

/// How a channel ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The sender closed it: the normal end of the stream.
    Closed,
    /// The receiver reset it.
    Reset,
    /// The connection ended under it.
    ConnectionLost(LossCause),
}

/// A peer message that breaks the channel rules. The driver turns it into a
/// `ProtocolError` and tears the session down ([session.protocol-error]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channel {id}: {kind}")]
pub struct Violation {
    /// The channel the offending message named.
    pub id: ChannelId,
    /// What rule it broke.
    pub kind: ViolationKind,
}

/// The rule a [`Violation`] broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViolationKind {
    /// The id was never announced or allocated on this connection ([rpc.channel.unknown]).
    #[error("unknown channel id (above every id announced so far)")]
    UnknownChannel,
    /// An item after the sender's `CloseChannel` ([rpc.channel.close]).
    #[error("item after the sender closed the channel")]
    ItemAfterClose,
    /// A second `CloseChannel` ([rpc.channel.close]).
    #[error("second CloseChannel")]
    CloseAfterClose,
    /// A second `ResetChannel` ([rpc.channel.reset]).
    #[error("second ResetChannel")]
    ResetAfterReset,
    /// An item beyond the credit granted so far ([rpc.flow-control.credit]).
    #[error("item sent without credit")]
    ItemWithoutCredit,
    /// A `GrantCredit` that would take the sender's credit past `u32::MAX`.
    #[error("GrantCredit overflows the credit counter")]
    GrantOverflow,
    /// A message only the other end of this channel may send (an item or close
    /// where we are the sender, a grant or reset where we are the receiver).
    #[error("message in the wrong direction for this channel")]
    WrongDirection,
    /// An announced id of the announcer's wrong parity ([rpc.channel.allocation]).
    #[error("announced id has the wrong parity")]
    WrongParity,
    /// The reserved id 0 was announced.
    #[error("announced id 0 is reserved")]
    ReservedId,
    /// An announced id not above every id announced before.
    #[error("announced id is not above the previously announced ids")]
    NotIncreasing,
    /// An announced id that is already announced (in this request or earlier).
    #[error("announced id is a duplicate")]
    Duplicate,
    /// An announced initial credit above the local limit.
    #[error("initial credit {credit} above the limit {max}")]
    CreditAboveLimit {
        /// The announced credit.
        credit: u32,
        /// The local limit.
        max: u32,
    },
    /// The announcement would exceed the live channel limit of the connection.
    #[error("more than {max} live channels on the connection")]
    TooManyChannels {
        /// The local limit.
        max: usize,
    },
}

/// Why a local send-side operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The receiver reset the channel; stop sending ([rpc.channel.reset]).
    #[error("channel reset by the receiver")]
    Reset,
    /// This side already closed the channel.
    #[error("channel already closed by this sender")]
    Closed,
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(LossCause),
    /// No credit is left (call `poll_credit` first).
    #[error("channel {0}: no credit left")]
    NoCredit(ChannelId),
    /// No channel with this id is known locally.
    #[error("channel {0}: unknown channel")]
    UnknownChannel(ChannelId),
    /// This side is the receiver of the channel, not the sender.
    #[error("channel {0}: this side is the receiver, not the sender")]
    WrongDirection(ChannelId),
    /// The channel was announced to us but the handler has not bound it yet.
    #[error("channel {0}: not bound yet")]
    NotBound(ChannelId),
}

/// Why a local receive-side operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The connection ended; queued items are not delivered any more
    /// ([session.protocol-error]).
    #[error("connection lost: {0}")]
    ConnectionLost(LossCause),
    /// This side reset the channel.
    #[error("channel reset by this receiver")]
    Reset,
    /// No channel with this id is known locally.
    #[error("channel {0}: unknown channel")]
    UnknownChannel(ChannelId),
    /// This side is the sender of the channel, not the receiver.
    #[error("channel {0}: this side is the sender, not the receiver")]
    WrongDirection(ChannelId),
    /// The channel was announced to us but the handler has not bound it yet.
    #[error("channel {0}: not bound yet")]
    NotBound(ChannelId),
}

/// Why a local registration (create or bind) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// No announced channel with this id is waiting to be bound.
    #[error("channel {0}: unknown channel")]
    UnknownChannel(ChannelId),
    /// The channel is already bound (or was created locally).
    #[error("channel {0}: already bound")]
    AlreadyBound(ChannelId),
    /// Every id of the local parity has been used.
    #[error("channel id space exhausted")]
    IdSpaceExhausted,
    /// The connection already holds its maximum number of live channels.
    #[error("more than {max} live channels on the connection")]
    TooManyChannels {
        /// The local limit.
        max: usize,
    },
    /// The requested initial credit is above the configured limit (the peer
    /// would reject the announcement).
    #[error("initial credit {credit} above the limit {max}")]
    CreditAboveLimit {
        /// The requested credit.
        credit: u32,
        /// The configured limit.
        max: u32,
    },
    /// The connection ended.
    #[error("connection lost: {0}")]
    ConnectionLost(LossCause),
}

/// What happened to an inbound `ChannelItem` that broke no rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Queued for the bound receiver.
    Delivered,
    /// Kept for a channel announced but not yet bound ([rpc.channel.early-items]).
    Buffered,
    /// In flight when we reset the channel: discarded, counted, traced ([rpc.channel.reset]).
    DiscardedAfterReset,
    /// For an id whose state is gone: tolerated, counted ([rpc.channel.crossing]).
    DiscardedLate,
    /// The connection is gone; nothing is delivered any more.
    ConnectionLost,
}

/// What happened to an inbound `CloseChannel` / `ResetChannel` / `GrantCredit`
/// that broke no rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// Applied to the channel (credit added, close or reset recorded).
    Applied,
    /// Recorded on a channel announced but not yet bound ([rpc.channel.early-items]).
    Buffered,
    /// Crossed our own close or reset on the wire; ignored and counted ([rpc.channel.crossing]).
    CrossingIgnored,
    /// For an id whose state is gone: tolerated, counted ([rpc.channel.crossing]).
    DiscardedLate,
    /// A `GrantCredit` sent by the receiver after its own `ResetChannel`:
    /// pointless but named by no rule as a violation, and grants after a
    /// channel ended are ignored ([rpc.channel.crossing]); ignored, counted.
    GrantAfterResetIgnored,
    /// The connection is gone; ignored.
    ConnectionLost,
}

/// One channel as a debug snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelView {
    /// The channel id.
    pub id: u64,
    /// Our end: `sender` or `receiver`.
    pub end: String,
    /// `pending`, `open`, `closing` or `closed`.
    pub state: String,
    /// Sender: the items we may still send before the next grant; receiver:
    /// the credit the sender holds as far as we told it. `None` once
    /// closing.
    pub credit: Option<u32>,
    /// Items delivered here and not yet taken by the receiver.
    pub queued: usize,
}

/// A snapshot of a registry's bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelStats {
    /// Entries announced but not bound.
    pub pending: usize,
    /// Entries open.
    pub open: usize,
    /// Entries closing (close or reset owed to the flush, or draining).
    pub closing: usize,
    /// Terminal entries whose local handle has not observed the end yet.
    pub closed: usize,
    /// Terminal ids remembered in the bounded tombstone window.
    pub tombstones: usize,
    /// Items discarded because they arrived after our reset.
    pub items_discarded_after_reset: u64,
    /// Items still queued when the local receiver went away (reset or drop).
    pub items_dropped_unread: u64,
    /// Messages for ids whose state was forgotten (older than the tombstone window).
    pub late_messages: u64,
    /// Grants, resets and closes that crossed our own close or reset.
    pub crossing_ignored: u64,
    /// Grants the receiver sent after its own reset (ignored).
    pub grants_after_reset_ignored: u64,
    /// The deepest any delivery or early buffer has been (high-water mark).
    pub max_queue_depth: usize,
}
