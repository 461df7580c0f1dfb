//! The message model: transport prologue, session handshake, session
//! messages (the 14 payload kinds) and stable-conduit frames.

use super::blob::Blob;
use super::codec::{channel_item_seq, channel_seq, feature_seq};
use super::ids::{ChannelId, ConnectionId, MethodId, Parity, RequestId};
use super::metadata::Metadata;
use serde::{Deserialize, Serialize};

/// The four bytes every `TransportHello` starts with.
pub const TRANSPORT_MAGIC: [u8; 4] = *b"VOX1";
/// The transport prologue version this crate speaks.
pub const TRANSPORT_VERSION: u16 = 1;
/// The session protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

// ---------------------------------------------------------------- prologue

/// Which conduit runs over the link after the prologue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConduitMode {
    /// One session message per link message; no reconnect.
    Bare,
    /// Sequenced, acknowledged frames with replay after reconnect.
    Stable,
}

/// The first message in each direction of a fresh link
/// (rule `transport.prologue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransportMsg {
    /// Initiator to acceptor.
    Hello(TransportHello),
    /// Acceptor to initiator: the requested mode is accepted.
    Accept {
        /// The accepted mode (always the requested one).
        mode: ConduitMode,
    },
    /// Acceptor to initiator: refused; the link is closed next.
    Reject {
        /// A readable reason.
        reason: String,
    },
}

/// The initiator's prologue message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportHello {
    /// Must equal [`TRANSPORT_MAGIC`].
    pub magic: [u8; 4],
    /// The prologue version, [`TRANSPORT_VERSION`].
    pub version: u16,
    /// The requested conduit mode.
    pub mode: ConduitMode,
}

// --------------------------------------------------------------- handshake

/// Flow-control and limit settings a side advertises for a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSettings {
    /// The most requests this side accepts in flight on the connection at
    /// once; the counterpart's callers wait above it.
    pub max_concurrent_requests: u32,
    /// The largest initial credit this side accepts for a channel it
    /// receives on; a request announcing more is a protocol error.
    pub max_initial_credit: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings { max_concurrent_requests: 64, max_initial_credit: 1024 }
    }
}

/// Messages exchanged by the session handshake (rule `session.handshake`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// Initiator to acceptor.
    Hello(Hello),
    /// Acceptor to initiator.
    HelloYourself(HelloYourself),
    /// Initiator to acceptor: the session is established.
    LetsGo,
    /// Either side: no session; the link is closed next.
    Sorry {
        /// A readable reason.
        reason: String,
    },
}

/// The initiator's handshake message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The session protocol version, [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The initiator's session parity; the acceptor takes the other one.
    pub parity: Parity,
    /// The initiator's settings for the root connection.
    pub root_settings: ConnectionSettings,
    /// Optional features the initiator supports.
    #[serde(deserialize_with = "feature_seq")]
    pub features: Vec<String>,
    /// The session to resume on this new conduit (rule `session.resume`),
    /// as issued in an earlier `HelloYourself`; `None` for a new session.
    pub resume_key: Option<ResumeKey>,
}

/// The feature an initiator lists in `Hello::features` to ask for a
/// session resume key (rule `session.resume`). Without it the acceptor
/// issues none, and the session ends with its conduit.
pub const SESSION_RESUME_FEATURE: &str = "vox.session-resume";

/// The feature both sides list in the handshake to send several items of
/// one channel in one [`Payload::ChannelItems`] (`docs/spec/wire.md`
/// section 5.4). A side sends `ChannelItems` only when the peer listed it
/// too: the initiator in `Hello`, the acceptor in its `HelloYourself`.
pub const CHANNEL_ITEMS_FEATURE: &str = "vox.channel-items";

/// The most items one [`Payload::ChannelItems`] may carry; one with more is
/// refused while decoding (rule `session.decode.bounded`).
pub const MAX_CHANNEL_ITEMS: usize = 64;

/// The acceptor's handshake answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloYourself {
    /// The session protocol version the acceptor speaks.
    pub protocol_version: u32,
    /// The acceptor's settings for the root connection.
    pub root_settings: ConnectionSettings,
    /// Optional features both sides support.
    #[serde(deserialize_with = "feature_seq")]
    pub features: Vec<String>,
    /// The key an initiator presents in a later `Hello` to bind a
    /// replacement conduit to this session (rule `session.resume`). Issued
    /// only when the initiator listed [`SESSION_RESUME_FEATURE`]. In the
    /// answer to a resuming `Hello` it repeats that key: the session was
    /// resumed. An unknown key is answered with `Sorry`, never with a new
    /// session.
    pub resume_key: Option<ResumeKey>,
}

/// A session resume key: at least 16 random bytes (rule `stable.resume-key`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResumeKey(pub Blob);

impl std::fmt::Debug for ResumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a bearer credential: never print it.
        write!(f, "ResumeKey(<{} bytes>)", self.0.len())
    }
}

// ---------------------------------------------------------------- messages

/// A session message (rule `session.message`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The connection this message belongs to (0 = root).
    pub connection_id: ConnectionId,
    /// What it says.
    pub payload: Payload,
}

impl Message {
    /// A message on the root connection.
    pub fn root(payload: Payload) -> Message {
        Message { connection_id: ConnectionId::ROOT, payload }
    }
}

/// Which way a channel's items flow, seen from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelDirection {
    /// The caller sends, the handler receives (an `Rx<T>` argument).
    CallerToHandler,
    /// The handler sends, the caller receives (a `Tx<T>` argument).
    HandlerToCaller,
}

/// A channel announced by a request. vox-core carries the direction and the
/// initial credit (which the protocol makes part of the channel type) on the
/// wire, so the receiving side can police a channel before it is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelDecl {
    /// The channel id (caller's connection parity).
    pub id: ChannelId,
    /// Which way items flow.
    pub direction: ChannelDirection,
    /// Items the sender may send before the first `GrantCredit`.
    pub initial_credit: u32,
}

/// The outcome carried by a `Response`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// The handler's return value, serialized.
    Ok(Blob),
    /// The handler's own error value, serialized.
    User(Blob),
    /// No method with this id on the connection.
    UnknownMethod,
    /// The args failed to decode.
    InvalidPayload {
        /// What the decoder said.
        reason: String,
    },
    /// The request was cancelled before it completed.
    Cancelled,
    /// The call may or may not have taken effect (see retry rules).
    Indeterminate,
    /// The handler failed without replying (panic, dropped reply sink).
    HandlerFailed {
        /// What happened.
        reason: String,
    },
    /// The session's operation table refused the attempt (operation id
    /// conflict, expired id, table full), or the server is shutting down;
    /// nothing ran (section 10).
    Rejected {
        /// Why.
        reason: String,
    },
    /// The request's deadline passed; the handler was stopped (rule
    /// `rpc.deadline`).
    DeadlineExceeded,
    /// The handler side could not translate the arguments from the
    /// caller's schema into its own (rule `schema.incompatible`): only this
    /// call failed.
    IncompatibleSchema {
        /// `Service.method`.
        method: String,
        /// The access path to the value holding the field, and its type.
        path: String,
        /// The field or variant.
        field: String,
        /// What differs.
        reason: String,
    },
}

/// The 14 payload kinds of a session message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The sender saw a violation and tears the session down (connection 0).
    ProtocolError {
        /// What was violated.
        description: String,
    },
    /// Keepalive probe (connection 0).
    Ping {
        /// Echoed by the `Pong`.
        nonce: u64,
    },
    /// Keepalive answer (connection 0).
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
    /// Opens a virtual connection with the message's connection id.
    OpenConnection {
        /// Parity of request and channel ids the opener allocates.
        parity: Parity,
        /// The opener's settings for this connection.
        settings: ConnectionSettings,
        /// Opener's metadata (seen by the acceptor callback).
        metadata: Metadata,
    },
    /// Accepts an `OpenConnection`.
    AcceptConnection {
        /// The acceptor's settings for this connection.
        settings: ConnectionSettings,
        /// Acceptor's metadata.
        metadata: Metadata,
    },
    /// Rejects an `OpenConnection`.
    RejectConnection {
        /// Why, as metadata.
        metadata: Metadata,
    },
    /// Closes a virtual connection.
    CloseConnection {
        /// Closing metadata.
        metadata: Metadata,
    },
    /// A call.
    Request {
        /// Request id (caller's connection parity).
        id: RequestId,
        /// Which method.
        method_id: MethodId,
        /// Serialized args.
        args: Blob,
        /// Channels appearing in the args, in argument order.
        #[serde(deserialize_with = "channel_seq")]
        channels: Vec<ChannelDecl>,
        /// Request metadata.
        metadata: Metadata,
    },
    /// The one answer to a request.
    Response {
        /// The request id.
        id: RequestId,
        /// The outcome.
        ret: ResponseBody,
        /// Response metadata.
        metadata: Metadata,
    },
    /// The caller lost interest.
    CancelRequest {
        /// The request id.
        id: RequestId,
    },
    /// One item on a channel.
    ChannelItem {
        /// The channel id.
        id: ChannelId,
        /// The serialized item.
        item: Blob,
    },
    /// The sender is done.
    CloseChannel {
        /// The channel id.
        id: ChannelId,
        /// Closing metadata.
        metadata: Metadata,
    },
    /// The receiver wants the sender to stop.
    ResetChannel {
        /// The channel id.
        id: ChannelId,
        /// Reset metadata.
        metadata: Metadata,
    },
    /// The receiver adds credit.
    GrantCredit {
        /// The channel id.
        id: ChannelId,
        /// Items added to the sender's credit.
        additional: u32,
    },
    /// Several items on one channel, in order: exactly as many
    /// `ChannelItem`s, each spending one credit. Only between sides that
    /// both listed [`CHANNEL_ITEMS_FEATURE`]; at least one item and at most
    /// [`MAX_CHANNEL_ITEMS`].
    ChannelItems {
        /// The channel id.
        id: ChannelId,
        /// The serialized items, oldest first.
        #[serde(deserialize_with = "channel_item_seq")]
        items: Vec<Blob>,
    },
}

impl Payload {
    /// A short name for logs and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::ProtocolError { .. } => "ProtocolError",
            Payload::Ping { .. } => "Ping",
            Payload::Pong { .. } => "Pong",
            Payload::OpenConnection { .. } => "OpenConnection",
            Payload::AcceptConnection { .. } => "AcceptConnection",
            Payload::RejectConnection { .. } => "RejectConnection",
            Payload::CloseConnection { .. } => "CloseConnection",
            Payload::Request { .. } => "Request",
            Payload::Response { .. } => "Response",
            Payload::CancelRequest { .. } => "CancelRequest",
            Payload::ChannelItem { .. } => "ChannelItem",
            Payload::CloseChannel { .. } => "CloseChannel",
            Payload::ResetChannel { .. } => "ResetChannel",
            Payload::GrantCredit { .. } => "GrantCredit",
            Payload::ChannelItems { .. } => "ChannelItems",
        }
    }
}

/// What travels over a conduit once the prologue is done: the handshake,
/// then session messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConduitMsg {
    /// A handshake step.
    Handshake(HandshakeMsg),
    /// A session message.
    Message(Message),
}

// ---------------------------------------------------------- stable conduit

/// Stable-conduit handshake, client side (rule `conduit.stable`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// The key of the session to resume, or `None` for a new one.
    pub resume_key: Option<ResumeKey>,
    /// The last frame seq the client received, if any.
    pub last_received: Option<u32>,
}

/// Stable-conduit handshake, server side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// The session's resume key.
    pub resume_key: ResumeKey,
    /// The last frame seq the server received, if any.
    pub last_received: Option<u32>,
}

/// One stable-conduit frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableFrame {
    /// Sequence number, from 0, +1 per frame, wrapping.
    pub seq: u32,
    /// The highest seq delivered from the other direction.
    pub ack: Option<u32>,
    /// The encoded [`ConduitMsg`].
    pub item: Blob,
}

/// The server's answer to a [`ClientHello`] (rule `stable.resume-key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StableHelloReply {
    /// The conduit is new or resumed; frames follow.
    Welcome(ServerHello),
    /// The presented resume key is unknown (expired, or the server
    /// restarted): the client reports session loss. The link closes.
    UnknownKey {
        /// Human-readable reason.
        reason: String,
    },
}

/// Every link message of a stable conduit after its hello exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StableMsg {
    /// A sequenced frame carrying one conduit message.
    Frame(StableFrame),
    /// A stand-alone acknowledgement (vox-core addition): sent when acks are
    /// owed and no frame is going out to carry them, so a one-way stream
    /// still drains the sender's replay buffer. Not sequenced, not replayed.
    Ack {
        /// The highest seq delivered from the other direction.
        ack: u32,
    },
    /// The sender is closing the conduit on purpose: end of stream, not a
    /// link break, so the receiver does not wait for a reconnect.
    Bye,
}
