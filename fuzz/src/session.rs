//! The `session` target: a real vox-core acceptor session over a memory link
//! (bare or stable conduit), and a raw initiator, played by hand, that sends
//! an arbitrary sequence of well-formed messages built from the fuzzer's
//! input with `arbitrary`: arbitrary connection, request and channel ids
//! (fresh, recently used, or any `u64`), credits, payload sizes, metadata,
//! cancels, opens, closes, pings, answers to calls the server makes, link
//! breaks (stable conduit), pauses of virtual time.
//!
//! Everything runs on a current-thread tokio runtime with a paused clock:
//! time only moves when every task waits, and then jumps to the next timer,
//! so timeouts and keepalive cost no real time and every wait below is
//! bounded in virtual time. The checks:
//! - no panic (libFuzzer aborts on any panic, in any task);
//! - no hang: every wait is bounded (a send for [`SEND_PATIENCE`], an answer
//!   for [`PATIENCE`], the whole input for [`TOTAL_BUDGET`]);
//! - bounded memory: at most [`MAX_ACTIONS`] actions of bounded size per
//!   input, and what the whole run allocates at peak is bounded
//!   ([`MEMORY_BUDGET`]);
//! - the outcome: either the session still works (a final `Ping` gets its
//!   `Pong`, then a shutdown completes) or it ended after sending a
//!   `ProtocolError` on connection 0, closed the link, and reports a local
//!   protocol error as its close reason (or, if the raw peer sent a
//!   `ProtocolError` itself, a peer protocol error);
//! - the server never answers a request it was not sent, never answers one
//!   twice, never pongs a nonce nobody pinged, and sends no handshake
//!   message after the handshake.

use crate::alloc;
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vox_core::conduit::stable::{self, StableConfig, StableRx, StableTx};
use vox_core::conduit::{self, ConduitRx, ConduitTx};
use vox_core::driver::{Call, Handler};
use vox_core::link::{self, Link, LinkConfig, LinkError};
use vox_core::session::{AcceptDecision, CloseReason, ConnectionRequest, Session, SessionBuilder};
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ChannelId, ConduitMode, ConduitMsg, ConnectionId, ConnectionSettings,
    HandshakeMsg, Hello, HelloYourself, Message, Metadata, MetadataValue, MethodId, PROTOCOL_VERSION, Parity, Payload,
    RequestId, ResponseBody, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
};

/// Most actions played per input (bounds memory and time per input).
pub const MAX_ACTIONS: usize = 64;
/// How long (virtual time) one send may wait for the server to read.
pub const SEND_PATIENCE: Duration = Duration::from_secs(120);
/// How long (virtual time) the peer waits for an answer or an end.
pub const PATIENCE: Duration = Duration::from_secs(300);
/// The whole input, virtual time.
pub const TOTAL_BUDGET: Duration = Duration::from_secs(24 * 3600);
/// The most the whole run (server and raw peer) may allocate at peak.
pub const MEMORY_BUDGET: usize = 64 << 20;
/// The nonce of the final `Ping`; pings from the input never use it.
pub const FINAL_NONCE: u64 = 0x00F1_7A1E_5EED_0001;
/// Most calls and opens the server makes per input.
const MAX_SERVER_TASKS: usize = 8;
/// How many recent ids of each kind a connection remembers for `Recent(k)`.
const RECENT: usize = 8;

// ------------------------------------------------------------------ input

/// Up to `N` values: a count byte (taken modulo `N + 1`), then the values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Few<T, const N: usize>(pub Vec<T>);

impl<'a, T: Arbitrary<'a>, const N: usize> Arbitrary<'a> for Few<T, N> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = usize::from(u8::arbitrary(u)?) % (N + 1);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(T::arbitrary(u)?);
        }
        Ok(Few(v))
    }
}

/// One fuzz input: how the session is set up, then what the peer does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Setup.
    pub setup: Setup,
    /// Played in order, at most [`MAX_ACTIONS`].
    pub actions: Vec<Action>,
}

impl<'a> Arbitrary<'a> for Scenario {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let setup = Setup::arbitrary(u)?;
        let mut actions = Vec::new();
        while !u.is_empty() && actions.len() < MAX_ACTIONS {
            actions.push(Action::arbitrary(u)?);
        }
        Ok(Scenario { setup, actions })
    }
}

/// How the session is set up.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// The conduit.
    pub mode: Mode,
    /// The raw peer's session parity.
    pub parity: Side,
    /// The raw peer's root `max_concurrent_requests`.
    pub max_concurrent: u8,
    /// The raw peer's root `max_initial_credit`.
    pub max_credit: u8,
    /// Features in the raw peer's `Hello`.
    pub features: Few<Feature, 2>,
    /// The server's configuration.
    pub server: ServerKnobs,
    /// How the raw peer ends the handshake.
    pub finish: Finish,
}

/// Conduit mode.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One message per link message.
    Bare,
    /// Sequenced frames; `BreakLink` actions cut the link and the peer redials.
    Stable,
}

/// A parity.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Odd ids.
    Odd,
    /// Even ids.
    Even,
}

impl Side {
    fn parity(self) -> Parity {
        match self {
            Side::Odd => Parity::Odd,
            Side::Even => Parity::Even,
        }
    }
}

/// A feature string in `Hello`.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `x-<n>`, unknown to the server.
    Unknown(u8),
    /// An empty string.
    Empty,
}

/// Server configurations.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKnobs {
    /// `SessionConfig::default()`.
    Default,
    /// Small limits everywhere, so they are reached.
    Tight,
    /// Keepalive every second of virtual time.
    Keepalive,
}

/// How the raw peer ends the handshake.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `LetsGo`, then the actions.
    LetsGo,
    /// A session message instead of `LetsGo`.
    MessageFirst,
    /// `Sorry` instead of `LetsGo`.
    Sorry,
    /// A `Hello` with another protocol version.
    WrongVersion,
    /// Nothing: the peer closes the link after `Hello`.
    Close,
}

/// One step of the raw peer.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `Request`.
    Call(CallSpec),
    /// `CancelRequest`.
    Cancel {
        /// On which connection.
        conn: ConnSel,
        /// Which request.
        id: ReqSel,
    },
    /// `ChannelItem`.
    Item {
        /// On which connection.
        conn: ConnSel,
        /// Which channel.
        chan: ChanSel,
        /// The item.
        item: ItemSel,
    },
    /// `CloseChannel`.
    CloseChannel {
        /// On which connection.
        conn: ConnSel,
        /// Which channel.
        chan: ChanSel,
        /// Its metadata.
        meta: Meta,
    },
    /// `ResetChannel`.
    ResetChannel {
        /// On which connection.
        conn: ConnSel,
        /// Which channel.
        chan: ChanSel,
    },
    /// `GrantCredit`.
    Grant {
        /// On which connection.
        conn: ConnSel,
        /// Which channel.
        chan: ChanSel,
        /// How much.
        credit: Credit,
    },
    /// `OpenConnection`.
    Open {
        /// The new connection's id.
        id: NewConn,
        /// Its parity.
        parity: Side,
        /// Our `max_concurrent_requests` on it.
        max_concurrent: u8,
        /// Our `max_initial_credit` on it.
        max_credit: u8,
        /// Open metadata (a `reject` key makes the server's acceptor reject).
        meta: Meta,
    },
    /// `CloseConnection`.
    CloseConnection {
        /// Which connection.
        conn: ConnSel,
        /// Its metadata.
        meta: Meta,
    },
    /// `AcceptConnection` (for a connection the server opened, or not).
    Accept {
        /// Which connection.
        conn: ConnSel,
    },
    /// `RejectConnection`.
    Reject {
        /// Which connection.
        conn: ConnSel,
    },
    /// `Response` (to a call the server made, or not).
    Respond {
        /// On which connection.
        conn: ConnSel,
        /// Which request: `Next` is the oldest unanswered server request.
        id: ReqSel,
        /// The answer.
        body: Body,
    },
    /// `Ping`.
    Ping {
        /// Its nonce.
        nonce: u64,
    },
    /// `Pong` (unsolicited, or late).
    Pong {
        /// Its nonce.
        nonce: u64,
    },
    /// The server calls the raw peer on the root connection.
    ServerCall {
        /// Method id.
        method: u8,
        /// Argument bytes.
        args_len: u8,
        /// A channel in the call.
        channel: ServerChan,
    },
    /// The server opens a virtual connection to the raw peer, and calls once on it.
    ServerOpen,
    /// Lets every task run until all wait.
    Settle,
    /// Lets `ms` milliseconds of virtual time pass.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// Cuts the link under a stable conduit (the peer redials); nothing on bare.
    BreakLink,
    /// A handshake message after the handshake.
    Handshake(HandshakeSel),
    /// A link message that is probably not a conduit message.
    Garbage {
        /// Its bytes.
        bytes: Few<u8, 8>,
    },
    /// `ProtocolError` from the peer: the session ends.
    ProtocolError,
}

/// A request.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct CallSpec {
    /// On which connection.
    pub conn: ConnSel,
    /// Which request id.
    pub id: ReqSel,
    /// What it calls.
    pub method: Method,
    /// The channels it announces.
    pub channels: Few<ChanSpec, 3>,
    /// Its metadata.
    pub meta: Meta,
}

/// The methods of the server's handler (see [`handler`]), and others.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Answers with its argument bytes (`16 * len` of them).
    Echo {
        /// Argument length / 16.
        len: u8,
    },
    /// Receives on channel 0 until it ends, answers the count.
    Drain,
    /// Sends `n` items on channel 0, closes it, answers.
    Generate {
        /// Items.
        n: u8,
    },
    /// Receives on channel 0 and sends each item on channel 1.
    Transform,
    /// Waits until cancelled.
    Wait,
    /// Sleeps `ms` of virtual time, answers.
    Sleep {
        /// Milliseconds.
        ms: u16,
    },
    /// Arguments that do not decode (`Generate` with bad args).
    BadArgs,
    /// A method the handler does not know.
    Unknown {
        /// Its id.
        id: u64,
    },
}

/// A channel announced by a request.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChanSpec {
    /// Its id.
    pub id: ChanSel,
    /// Which way it flows.
    pub dir: Dir,
    /// Its initial credit.
    pub credit: Credit,
}

/// A channel direction.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// The caller sends.
    CallerToHandler,
    /// The handler sends.
    HandlerToCaller,
}

/// A credit amount.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credit {
    /// 0-32.
    Small(u8),
    /// Any.
    Raw(u32),
}

impl Credit {
    fn value(self) -> u32 {
        match self {
            Credit::Small(n) => u32::from(n) % 33,
            Credit::Raw(n) => n,
        }
    }
}

/// Which connection a message goes on.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnSel {
    /// Connection 0.
    Root,
    /// The k-th (mod count) virtual connection opened so far by either side
    /// (the root if none).
    Opened(u8),
    /// Any id.
    Raw(u64),
}

/// Which request id.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqSel {
    /// The next fresh id of our parity on the connection.
    Next,
    /// The k-th most recent id (mod count) used on the connection.
    Recent(u8),
    /// Any id.
    Raw(u64),
}

/// Which channel id.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChanSel {
    /// The next fresh id of our parity on the connection.
    Next,
    /// The k-th most recent id (mod count) announced on the connection, by
    /// either side.
    Recent(u8),
    /// Any id.
    Raw(u64),
}

/// Which id a new connection gets.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewConn {
    /// The next fresh id of our session parity.
    Next,
    /// An id already opened (k-th, mod count).
    Recent(u8),
    /// Any id.
    Raw(u64),
}

/// A channel item.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum ItemSel {
    /// A `u32`, as the handler's channels carry.
    U32(u32),
    /// Any bytes.
    Bytes(Few<u8, 8>),
}

/// Metadata: up to three entries.
pub type Meta = Few<MetaEntry, 3>;

/// One metadata entry.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaEntry {
    /// Its key.
    pub key: Key,
    /// Its value.
    pub value: Val,
    /// Its flags.
    pub flags: u8,
}

/// A metadata key.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `vox.op-id` (the operation table's).
    OpId,
    /// `vox-service`.
    Service,
    /// `reject` (the fuzz acceptor rejects opens that carry it).
    Reject,
    /// `vox-deadline-us` (rule `rpc.deadline`: the time left, in microseconds).
    Deadline,
    /// `k<n>`.
    Other(u8),
}

/// A metadata value.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Val {
    /// A small integer.
    U64(u8),
    /// Any integer.
    Big(u64),
    /// A string of `n` bytes.
    Str(u8),
    /// `n` bytes.
    Bytes(u8),
}

/// A response body.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `Ok` with `n` bytes.
    Ok(u8),
    /// `User`.
    User,
    /// `UnknownMethod`.
    UnknownMethod,
    /// `InvalidPayload`.
    InvalidPayload,
    /// `Cancelled`.
    Cancelled,
    /// `Indeterminate`.
    Indeterminate,
    /// `HandlerFailed`.
    HandlerFailed,
    /// `Rejected`.
    Rejected,
    /// `DeadlineExceeded`.
    DeadlineExceeded,
}

/// The channel in a call the server makes.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerChan {
    /// None.
    None,
    /// The server sends `n` items to the peer.
    ToPeer(u8),
    /// The server receives from the peer.
    FromPeer,
}

/// A handshake message sent after the handshake.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeSel {
    /// `Hello`.
    Hello,
    /// `HelloYourself`.
    HelloYourself,
    /// `LetsGo`.
    LetsGo,
    /// `Sorry`.
    Sorry,
}

// ---------------------------------------------------------------- server

/// The method ids of the fuzz handler.
pub fn method_id(name: &str) -> MethodId {
    MethodId::from_names("Fuzz", name)
}

fn method_named(id: MethodId) -> &'static str {
    for name in ["echo", "drain", "generate", "transform", "wait", "sleep"] {
        if method_id(name) == id {
            return name;
        }
    }
    ""
}

/// The server's handler: a few echo-like methods over bytes and `u32`
/// channels.
pub fn handler() -> impl Handler + Clone {
    |mut call: Call| async move {
        match method_named(call.method_id) {
            "echo" => {
                let args = call.args.clone();
                call.reply.ok_raw(args);
            }
            "drain" => match call.channels.rx::<u32>(0) {
                Ok(mut rx) => {
                    let mut n: u64 = 0;
                    while let Ok(Some(_)) = rx.recv_raw().await {
                        n += 1;
                    }
                    call.reply.ok(&n);
                }
                Err(e) => call.reply.invalid_payload(e),
            },
            "generate" => {
                let n: u32 = match call.decode_args() {
                    Ok(n) => n,
                    Err(e) => return call.reply.invalid_payload(e),
                };
                let mut tx = match call.channels.tx::<u32>(0) {
                    Ok(tx) => tx,
                    Err(e) => return call.reply.invalid_payload(e),
                };
                for i in 0..n.min(64) {
                    if tx.send(&i).await.is_err() {
                        break;
                    }
                }
                let _ = tx.close().await;
                call.reply.ok(&());
            }
            "transform" => {
                let (mut rx, mut tx) = match (call.channels.rx::<u32>(0), call.channels.tx::<u32>(1)) {
                    (Ok(rx), Ok(tx)) => (rx, tx),
                    _ => return call.reply.invalid_payload("expected (Rx<u32>, Tx<u32>)"),
                };
                while let Ok(Some(v)) = rx.recv().await {
                    if tx.send(&v.wrapping_mul(3)).await.is_err() {
                        break;
                    }
                }
                let _ = tx.close().await;
                call.reply.ok(&());
            }
            "wait" => std::future::pending::<()>().await,
            "sleep" => {
                let ms: u16 = call.decode_args().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                call.reply.ok(&());
            }
            _ => call.reply.unknown_method(),
        }
    }
}

/// The server: the fuzz handler on the root and on every virtual
/// connection it accepts; opens whose metadata has a `reject` key are
/// rejected.
pub fn server_builder(knobs: ServerKnobs) -> SessionBuilder {
    let h = handler();
    let acceptor = {
        let h = h.clone();
        move |req: &ConnectionRequest| {
            if req.metadata.get("reject").is_some() {
                AcceptDecision::Reject(Metadata::new().with_str("why", "asked to", 0))
            } else {
                AcceptDecision::Accept {
                    settings: ConnectionSettings::default(),
                    metadata: Metadata::new(),
                    handler: Some(Arc::new(h.clone())),
                }
            }
        }
    };
    let mut b = SessionBuilder::new().handler(h).acceptor(acceptor);
    match knobs {
        ServerKnobs::Default => {}
        ServerKnobs::Tight => {
            let c = b.config_mut();
            c.root_settings = ConnectionSettings { max_concurrent_requests: 2, max_initial_credit: 4 };
            c.max_connections = 2;
            c.max_channels_per_connection = 4;
            c.mailbox_capacity = 2;
            c.outbound_capacity = 4;
            c.max_receive_window = 0;
            c.stable.replay_limit = 4096;
        }
        ServerKnobs::Keepalive => {
            b = b.keepalive(Duration::from_secs(1), Duration::from_secs(2));
        }
    }
    b
}

// ------------------------------------------------------------ raw peer

/// The raw peer's sending half.
enum PeerTx {
    Bare(ConduitTx),
    Stable(StableTx),
}

impl PeerTx {
    async fn send(&self, msg: &ConduitMsg) -> bool {
        let r = match self {
            PeerTx::Bare(tx) => tx.send(msg).await,
            PeerTx::Stable(tx) => tx.send(msg).await,
        };
        r.is_ok()
    }

    async fn send_encoded(&self, bytes: Bytes) -> bool {
        let r = match self {
            PeerTx::Bare(tx) => tx.send_encoded(bytes).await,
            PeerTx::Stable(tx) => tx.send_encoded(bytes).await,
        };
        r.is_ok()
    }
}

/// The raw peer's receiving half.
enum PeerRx {
    Bare(ConduitRx),
    Stable(StableRx),
}

impl PeerRx {
    async fn recv(&mut self) -> Result<Option<ConduitMsg>, String> {
        let r = match self {
            PeerRx::Bare(rx) => rx.recv().await,
            PeerRx::Stable(rx) => rx.recv().await,
        };
        r.map_err(|e| e.to_string())
    }
}

/// What the raw peer knows about one connection.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// The parity of the request and channel ids the raw peer allocates.
    parity: Parity,
    next_req: u64,
    next_chan: u64,
    recent_req: VecDeque<u64>,
    recent_chan: VecDeque<u64>,
    /// Requests the server made on this connection, not yet answered.
    server_requests: VecDeque<u64>,
}

impl Conn {
    fn new(id: u64, parity: Parity) -> Conn {
        Conn {
            id,
            parity,
            next_req: parity.first(),
            next_chan: parity.first(),
            recent_req: VecDeque::new(),
            recent_chan: VecDeque::new(),
            server_requests: VecDeque::new(),
        }
    }
}

fn remember(q: &mut VecDeque<u64>, id: u64) {
    if q.len() == RECENT {
        q.pop_front();
    }
    q.push_back(id);
}

fn recent(q: &VecDeque<u64>, k: u8) -> Option<u64> {
    if q.is_empty() { None } else { q.iter().rev().nth(usize::from(k) % q.len()).copied() }
}

/// Everything the driver and the reader share (one task, so a `RefCell`).
#[derive(Default)]
struct Obs {
    conns: Vec<Conn>,
    /// Virtual connections opened by either side, by id.
    opened: Vec<u64>,
    next_conn: u64,
    /// Requests sent per (connection, request id).
    sent: HashMap<(u64, u64), u32>,
    /// Responses received per (connection, request id).
    answered: HashMap<(u64, u64), u32>,
    pinged: HashSet<u64>,
    pings_to_answer: VecDeque<u64>,
    protocol_error: Option<String>,
    after_protocol_error: u32,
    final_pong: bool,
    eof: bool,
    link_error: Option<String>,
    received: u64,
}

impl Obs {
    fn ended(&self) -> bool {
        self.protocol_error.is_some() || self.eof || self.link_error.is_some()
    }

    fn gone(&self) -> bool {
        self.eof || self.link_error.is_some()
    }

    fn conn(&mut self, id: u64, session_parity: Parity) -> &mut Conn {
        if let Some(i) = self.conns.iter().position(|c| c.id == id) {
            return &mut self.conns[i];
        }
        if self.conns.len() >= 64 {
            // Bounded: reuse the last slot for ids beyond that.
            let last = self.conns.len() - 1;
            self.conns[last] = Conn::new(id, session_parity);
            return &mut self.conns[last];
        }
        self.conns.push(Conn::new(id, session_parity));
        self.conns.last_mut().expect("just pushed")
    }

    fn on_message(&mut self, m: Message, session_parity: Parity) {
        self.received += 1;
        if self.protocol_error.is_some() {
            self.after_protocol_error += 1;
        }
        let conn = m.connection_id.0;
        match m.payload {
            Payload::ProtocolError { description } => {
                // rule: session.message.connection-id
                assert_eq!(conn, 0, "ProtocolError on connection {conn}: {description}");
                self.protocol_error.get_or_insert(description);
            }
            Payload::Ping { nonce } => {
                assert_eq!(conn, 0, "Ping on connection {conn}");
                if self.pings_to_answer.len() < 64 {
                    self.pings_to_answer.push_back(nonce);
                }
            }
            Payload::Pong { nonce } => {
                assert_eq!(conn, 0, "Pong on connection {conn}");
                assert!(self.pinged.contains(&nonce), "Pong for nonce {nonce:#x} that was never pinged");
                if nonce == FINAL_NONCE {
                    self.final_pong = true;
                }
            }
            Payload::Response { id, .. } => {
                let n = self.answered.entry((conn, id.0)).or_insert(0);
                *n += 1;
                let sent = self.sent.get(&(conn, id.0)).copied().unwrap_or(0);
                // rule: rpc.response.one-per-request
                assert!(
                    *n <= sent,
                    "response #{n} to request {} on connection {conn}, which was sent {sent} time(s)",
                    id.0
                );
            }
            Payload::Request { id, channels, .. } => {
                let c = self.conn(conn, session_parity);
                if c.server_requests.len() < 64 {
                    c.server_requests.push_back(id.0);
                }
                for ch in channels {
                    remember(&mut c.recent_chan, ch.id.0);
                }
            }
            Payload::OpenConnection { parity, .. } => {
                // The opener picks the parity; the raw peer allocates the other.
                let i = self.conns.iter().position(|c| c.id == conn);
                let fresh = Conn::new(conn, parity.opposite());
                match i {
                    Some(i) => self.conns[i] = fresh,
                    None if self.conns.len() < 64 => self.conns.push(fresh),
                    None => {}
                }
                if self.opened.len() < 64 {
                    self.opened.push(conn);
                }
            }
            _ => {}
        }
    }
}

struct Peer {
    tx: PeerTx,
    obs: RefCell<Obs>,
    progress: watch::Sender<u64>,
    session_parity: Parity,
    /// Message bytes for payloads, sliced.
    filler: Bytes,
}

impl Peer {
    fn bump(&self) {
        self.progress.send_modify(|n| *n += 1);
    }

    /// Waits until `cond` holds, for at most `patience` of virtual time.
    async fn wait_until(&self, patience: Duration, mut cond: impl FnMut(&Obs) -> bool) -> bool {
        let mut rx = self.progress.subscribe();
        tokio::time::timeout(patience, async {
            loop {
                rx.borrow_and_update();
                if cond(&self.obs.borrow()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Sends one message; `false` once the link no longer takes messages.
    async fn send(&self, connection_id: u64, payload: Payload) -> bool {
        let msg = ConduitMsg::Message(Message { connection_id: ConnectionId(connection_id), payload });
        self.send_conduit(&msg).await
    }

    async fn send_conduit(&self, msg: &ConduitMsg) -> bool {
        match tokio::time::timeout(SEND_PATIENCE, self.tx.send(msg)).await {
            Ok(ok) => ok,
            Err(_) => panic!(
                "hang: the server did not take a message for {SEND_PATIENCE:?} (virtual); state: {}",
                self.state()
            ),
        }
    }

    fn state(&self) -> String {
        let o = self.obs.borrow();
        format!(
            "received {} messages, protocol error {:?}, eof {}, link error {:?}",
            o.received, o.protocol_error, o.eof, o.link_error
        )
    }

    fn bytes(&self, n: usize) -> Blob {
        Blob::new(self.filler.slice(..n.min(self.filler.len())))
    }

    fn conn_id(&self, sel: ConnSel) -> u64 {
        match sel {
            ConnSel::Root => 0,
            ConnSel::Opened(k) => {
                let o = self.obs.borrow();
                if o.opened.is_empty() { 0 } else { o.opened[usize::from(k) % o.opened.len()] }
            }
            ConnSel::Raw(id) => id,
        }
    }

    fn req_id(&self, conn: u64, sel: ReqSel) -> u64 {
        let mut o = self.obs.borrow_mut();
        let c = o.conn(conn, self.session_parity);
        match sel {
            ReqSel::Next => {
                let id = c.next_req;
                c.next_req = c.next_req.wrapping_add(2);
                remember(&mut c.recent_req, id);
                id
            }
            ReqSel::Recent(k) => recent(&c.recent_req, k).unwrap_or(c.parity.first()),
            ReqSel::Raw(id) => id,
        }
    }

    fn chan_id(&self, conn: u64, sel: ChanSel) -> u64 {
        let mut o = self.obs.borrow_mut();
        let c = o.conn(conn, self.session_parity);
        match sel {
            ChanSel::Next => {
                let id = c.next_chan;
                c.next_chan = c.next_chan.wrapping_add(2);
                id
            }
            ChanSel::Recent(k) => recent(&c.recent_chan, k).unwrap_or(c.parity.first()),
            ChanSel::Raw(id) => id,
        }
    }

    fn metadata(&self, meta: &Meta) -> Metadata {
        let mut md = Metadata::new();
        for e in &meta.0 {
            let key = match e.key {
                Key::OpId => "vox.op-id".to_string(),
                Key::Service => "vox-service".to_string(),
                Key::Reject => "reject".to_string(),
                Key::Deadline => "vox-deadline-us".to_string(),
                Key::Other(n) => format!("k{n}"),
            };
            let value = match e.value {
                Val::U64(n) => MetadataValue::U64(u64::from(n)),
                Val::Big(n) => MetadataValue::U64(n),
                Val::Str(n) => MetadataValue::String("s".repeat(usize::from(n))),
                Val::Bytes(n) => MetadataValue::Bytes(self.bytes(usize::from(n))),
            };
            md.push(key, value, u64::from(e.flags));
        }
        md
    }
}

/// Reads everything the server sends until the conduit ends.
async fn reader(rx: &mut PeerRx, peer: &Peer) {
    loop {
        let r = rx.recv().await;
        {
            let mut o = peer.obs.borrow_mut();
            match r {
                Ok(Some(ConduitMsg::Message(m))) => o.on_message(m, peer.session_parity),
                Ok(Some(ConduitMsg::Handshake(h))) => {
                    panic!("the server sent a handshake message after the handshake: {h:?}")
                }
                Ok(None) => o.eof = true,
                Err(e) => o.link_error = Some(e),
            }
        }
        peer.bump();
        if peer.obs.borrow().gone() {
            return;
        }
    }
}

/// Answers the server's pings.
async fn ponger(peer: &Peer) {
    let mut rx = peer.progress.subscribe();
    loop {
        loop {
            let next = peer.obs.borrow_mut().pings_to_answer.pop_front();
            let Some(nonce) = next else { break };
            if !peer.send(0, Payload::Pong { nonce }).await {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn handshake_sel(sel: HandshakeSel, parity: Parity) -> HandshakeMsg {
    match sel {
        HandshakeSel::Hello => HandshakeMsg::Hello(hello(parity, ConnectionSettings::default(), vec![])),
        HandshakeSel::HelloYourself => HandshakeMsg::HelloYourself(HelloYourself {
            protocol_version: PROTOCOL_VERSION,
            root_settings: ConnectionSettings::default(),
            features: vec![],
            resume_key: None,
        }),
        HandshakeSel::LetsGo => HandshakeMsg::LetsGo,
        HandshakeSel::Sorry => HandshakeMsg::Sorry { reason: "fuzz".into() },
    }
}

fn hello(parity: Parity, root_settings: ConnectionSettings, features: Vec<String>) -> Hello {
    Hello { protocol_version: PROTOCOL_VERSION, parity, root_settings, features, resume_key: None }
}

fn body(b: Body, peer: &Peer) -> ResponseBody {
    match b {
        Body::Ok(n) => ResponseBody::Ok(peer.bytes(usize::from(n))),
        Body::User => ResponseBody::User(peer.bytes(3)),
        Body::UnknownMethod => ResponseBody::UnknownMethod,
        Body::InvalidPayload => ResponseBody::InvalidPayload { reason: "fuzz".into() },
        Body::Cancelled => ResponseBody::Cancelled,
        Body::Indeterminate => ResponseBody::Indeterminate,
        Body::HandlerFailed => ResponseBody::HandlerFailed { reason: "fuzz".into() },
        Body::Rejected => ResponseBody::Rejected { reason: "fuzz".into() },
        Body::DeadlineExceeded => ResponseBody::DeadlineExceeded,
    }
}

/// What the driver did that changes the expected outcome.
#[derive(Default)]
struct Played {
    sent_protocol_error: bool,
    broke_link: bool,
    server_tasks: usize,
}

/// Plays one action; `false` once the link no longer takes messages.
async fn play(
    a: &Action,
    peer: &Peer,
    session: &Session,
    mode: Mode,
    stable_tx: Option<&StableTx>,
    p: &mut Played,
) -> bool {
    match a {
        Action::Call(c) => {
            let conn = peer.conn_id(c.conn);
            let id = peer.req_id(conn, c.id);
            let (method_id, args) = match c.method {
                Method::Echo { len } => (method_id("echo"), peer.bytes(16 * usize::from(len))),
                Method::Drain => (method_id("drain"), Blob::default()),
                Method::Generate { n } => {
                    (method_id("generate"), Blob::from(wire::encode("n", &u32::from(n)).expect("u32")))
                }
                Method::Transform => (method_id("transform"), Blob::default()),
                Method::Wait => (method_id("wait"), Blob::default()),
                Method::Sleep { ms } => (method_id("sleep"), Blob::from(wire::encode("ms", &ms).expect("u16"))),
                Method::BadArgs => (method_id("generate"), Blob::from(vec![0xff, 0xff, 0xff])),
                Method::Unknown { id } => (MethodId(id), Blob::default()),
            };
            let channels: Vec<ChannelDecl> = c
                .channels
                .0
                .iter()
                .map(|s| {
                    let cid = peer.chan_id(conn, s.id);
                    ChannelDecl {
                        id: ChannelId(cid),
                        direction: match s.dir {
                            Dir::CallerToHandler => ChannelDirection::CallerToHandler,
                            Dir::HandlerToCaller => ChannelDirection::HandlerToCaller,
                        },
                        initial_credit: s.credit.value(),
                    }
                })
                .collect();
            {
                let mut o = peer.obs.borrow_mut();
                for ch in &channels {
                    let c = o.conn(conn, peer.session_parity);
                    remember(&mut c.recent_chan, ch.id.0);
                }
                if o.sent.len() < 4096 {
                    *o.sent.entry((conn, id)).or_insert(0) += 1;
                }
            }
            let metadata = peer.metadata(&c.meta);
            peer.send(conn, Payload::Request { id: RequestId(id), method_id, args, channels, metadata }).await
        }
        Action::Cancel { conn, id } => {
            let conn = peer.conn_id(*conn);
            let id = peer.req_id(conn, *id);
            peer.send(conn, Payload::CancelRequest { id: RequestId(id) }).await
        }
        Action::Item { conn, chan, item } => {
            let conn = peer.conn_id(*conn);
            let id = peer.chan_id(conn, *chan);
            let item = match item {
                ItemSel::U32(v) => Blob::from(wire::encode("item", v).expect("u32")),
                ItemSel::Bytes(b) => Blob::from(b.0.clone()),
            };
            peer.send(conn, Payload::ChannelItem { id: ChannelId(id), item }).await
        }
        Action::CloseChannel { conn, chan, meta } => {
            let conn = peer.conn_id(*conn);
            let id = peer.chan_id(conn, *chan);
            let metadata = peer.metadata(meta);
            peer.send(conn, Payload::CloseChannel { id: ChannelId(id), metadata }).await
        }
        Action::ResetChannel { conn, chan } => {
            let conn = peer.conn_id(*conn);
            let id = peer.chan_id(conn, *chan);
            peer.send(conn, Payload::ResetChannel { id: ChannelId(id), metadata: Metadata::new() }).await
        }
        Action::Grant { conn, chan, credit } => {
            let conn = peer.conn_id(*conn);
            let id = peer.chan_id(conn, *chan);
            peer.send(conn, Payload::GrantCredit { id: ChannelId(id), additional: credit.value() }).await
        }
        Action::Open { id, parity, max_concurrent, max_credit, meta } => {
            let conn = {
                let mut o = peer.obs.borrow_mut();
                match id {
                    NewConn::Next => {
                        let id = o.next_conn;
                        o.next_conn = o.next_conn.wrapping_add(2);
                        id
                    }
                    NewConn::Recent(k) if !o.opened.is_empty() => o.opened[usize::from(*k) % o.opened.len()],
                    NewConn::Recent(_) => o.next_conn,
                    NewConn::Raw(id) => *id,
                }
            };
            {
                let mut o = peer.obs.borrow_mut();
                let fresh = Conn::new(conn, parity.parity());
                match o.conns.iter().position(|c| c.id == conn) {
                    Some(i) => o.conns[i] = fresh,
                    None if o.conns.len() < 64 => o.conns.push(fresh),
                    None => {}
                }
                if o.opened.len() < 64 && !o.opened.contains(&conn) {
                    o.opened.push(conn);
                }
            }
            let settings = ConnectionSettings {
                max_concurrent_requests: u32::from(*max_concurrent),
                max_initial_credit: u32::from(*max_credit),
            };
            let metadata = peer.metadata(meta);
            peer.send(conn, Payload::OpenConnection { parity: parity.parity(), settings, metadata }).await
        }
        Action::CloseConnection { conn, meta } => {
            let conn = peer.conn_id(*conn);
            let metadata = peer.metadata(meta);
            peer.send(conn, Payload::CloseConnection { metadata }).await
        }
        Action::Accept { conn } => {
            let conn = peer.conn_id(*conn);
            let payload =
                Payload::AcceptConnection { settings: ConnectionSettings::default(), metadata: Metadata::new() };
            peer.send(conn, payload).await
        }
        Action::Reject { conn } => {
            let conn = peer.conn_id(*conn);
            peer.send(conn, Payload::RejectConnection { metadata: Metadata::new() }).await
        }
        Action::Respond { conn, id, body: b } => {
            let conn = peer.conn_id(*conn);
            let id = {
                let mut o = peer.obs.borrow_mut();
                let c = o.conn(conn, peer.session_parity);
                match id {
                    ReqSel::Next => c.server_requests.pop_front().unwrap_or(c.parity.opposite().first()),
                    ReqSel::Recent(k) => recent(&c.server_requests, *k).unwrap_or(c.parity.opposite().first()),
                    ReqSel::Raw(id) => *id,
                }
            };
            let metadata = Metadata::new();
            peer.send(conn, Payload::Response { id: RequestId(id), ret: body(*b, peer), metadata }).await
        }
        Action::Ping { nonce } => {
            let nonce = if *nonce == FINAL_NONCE { nonce ^ 1 } else { *nonce };
            {
                let mut o = peer.obs.borrow_mut();
                if o.pinged.len() < 256 {
                    o.pinged.insert(nonce);
                }
            }
            peer.send(0, Payload::Ping { nonce }).await
        }
        Action::Pong { nonce } => peer.send(0, Payload::Pong { nonce: *nonce }).await,
        Action::ServerCall { method, args_len, channel } => {
            if p.server_tasks >= MAX_SERVER_TASKS {
                return true;
            }
            p.server_tasks += 1;
            let caller = session.root.caller.clone();
            let args = peer.bytes(usize::from(*args_len)).into_bytes();
            let method = MethodId(u64::from(*method));
            let channel = *channel;
            tokio::spawn(async move {
                match channel {
                    ServerChan::None => {
                        let _ = caller.call_raw(method, args, vec![], Metadata::new()).await;
                    }
                    ServerChan::ToPeer(n) => {
                        let (mut tx, rx) = vox_core::driver::channel::<u32>();
                        let Some(arg) = rx.into_arg() else { return };
                        let send = async move {
                            for i in 0..u32::from(n).min(32) {
                                if tx.send(&i).await.is_err() {
                                    return;
                                }
                            }
                            let _ = tx.close().await;
                        };
                        let _ = tokio::join!(caller.call_raw(method, args, vec![arg], Metadata::new()), send);
                    }
                    ServerChan::FromPeer => {
                        let (tx, mut rx) = vox_core::driver::channel::<u32>();
                        let Some(arg) = tx.into_arg() else { return };
                        let recv = async move { while let Ok(Some(_)) = rx.recv_raw().await {} };
                        let _ = tokio::join!(caller.call_raw(method, args, vec![arg], Metadata::new()), recv);
                    }
                }
            });
            true
        }
        Action::ServerOpen => {
            if p.server_tasks >= MAX_SERVER_TASKS {
                return true;
            }
            p.server_tasks += 1;
            let handle = session.handle.clone();
            tokio::spawn(async move {
                if let Ok(conn) = handle.open_connection(ConnectionSettings::default(), Metadata::new()).await {
                    let _ = conn.caller.call_raw(MethodId(7), Bytes::from_static(b"hi"), vec![], Metadata::new()).await;
                }
            });
            true
        }
        Action::Settle => {
            for _ in 0..32 {
                tokio::task::yield_now().await;
            }
            true
        }
        Action::Advance { ms } => {
            tokio::time::sleep(Duration::from_millis(u64::from(*ms))).await;
            true
        }
        Action::BreakLink => {
            if let (Mode::Stable, Some(tx)) = (mode, stable_tx) {
                tx.break_link();
                p.broke_link = true;
            }
            true
        }
        Action::Handshake(sel) => {
            peer.send_conduit(&ConduitMsg::Handshake(handshake_sel(*sel, peer.session_parity))).await
        }
        Action::Garbage { bytes } => {
            let b = Bytes::from(bytes.0.clone());
            match tokio::time::timeout(SEND_PATIENCE, peer.tx.send_encoded(b)).await {
                Ok(ok) => ok,
                Err(_) => panic!("hang: the server did not take a message for {SEND_PATIENCE:?} (virtual)"),
            }
        }
        Action::ProtocolError => {
            p.sent_protocol_error = true;
            peer.send(0, Payload::ProtocolError { description: "fuzz peer gives up".into() }).await;
            false
        }
    }
}

// ------------------------------------------------------------ the run

/// What one run saw, for the seed generator and for debugging.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the handshake completed.
    pub established: bool,
    /// Whether the final `Ping` got its `Pong`.
    pub alive: bool,
    /// The server's `ProtocolError`, if it sent one.
    pub protocol_error: Option<String>,
    /// How many actions were played before the session ended.
    pub played: usize,
    /// Messages received from the server.
    pub received: u64,
    /// Peak bytes allocated during the run.
    pub peak_bytes: usize,
}

/// Runs one scenario and checks it (panics on a failed check).
pub fn run(s: &Scenario) -> Outcome {
    let base = alloc::reset_peak();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(std::env::var_os("VOX_FUZZ_REAL_TIME").is_none())
        .build()
        .expect("runtime");
    let mut out = rt.block_on(async {
        match tokio::time::timeout(TOTAL_BUDGET, run_async(s)).await {
            Ok(out) => out,
            Err(_) => panic!("hang: the scenario did not finish within {TOTAL_BUDGET:?} of virtual time"),
        }
    });
    drop(rt);
    out.peak_bytes = alloc::peak().saturating_sub(base);
    assert!(
        out.peak_bytes <= MEMORY_BUDGET,
        "the run allocated {} bytes at peak (budget {MEMORY_BUDGET})",
        out.peak_bytes
    );
    out
}

fn link_config() -> LinkConfig {
    LinkConfig::default()
}

async fn run_async(s: &Scenario) -> Outcome {
    let setup = &s.setup;
    let server = server_builder(setup.server);
    let (server_end, mut client) = link::memory_pair(link_config());
    let server_task = {
        let server = server.clone();
        tokio::spawn(async move { server.establish_acceptor_any(server_end).await })
    };

    // Transport prologue, by hand (rule transport.prologue). The stable
    // conduit's client runs its own (`connect_over`: prologue, then
    // `ClientHello`), as it does again on every redial.
    let mode = match setup.mode {
        Mode::Bare => ConduitMode::Bare,
        Mode::Stable => ConduitMode::Stable,
    };
    if setup.mode == Mode::Bare {
        let prologue = TransportMsg::Hello(TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode });
        let bytes = Bytes::from(wire::encode("TransportMsg", &prologue).expect("encode"));
        client.tx.send(bytes).await.expect("prologue send");
        let answer = tokio::time::timeout(PATIENCE, client.rx.recv())
            .await
            .expect("hang: no answer to TransportHello")
            .expect("prologue recv")
            .expect("the server closed the link instead of answering the prologue");
        match wire::decode::<TransportMsg>("TransportMsg", &answer).expect("decode prologue answer") {
            TransportMsg::Accept { mode: m } => assert_eq!(m, mode, "the server accepted another mode"),
            other => panic!("the server refused the prologue: {other:?}"),
        }
    }

    // The conduit.
    let (tx, mut rx) = match setup.mode {
        Mode::Bare => {
            let (tx, rx) = conduit::bare(client);
            (PeerTx::Bare(tx), PeerRx::Bare(rx))
        }
        Mode::Stable => {
            // Redials get a fresh memory link whose other end the same
            // server builder (and so the same stable registry) accepts.
            let redial_server = server.clone();
            let source = Arc::new(move || {
                let server = redial_server.clone();
                async move {
                    let (a, b) = link::memory_pair(link_config());
                    tokio::spawn(async move {
                        let _ = server.establish_acceptor_any(a).await;
                    });
                    Ok::<Link, LinkError>(b)
                }
            });
            let (tx, rx) =
                tokio::time::timeout(PATIENCE, stable::connect_over(client, source, StableConfig::default()))
                    .await
                    .expect("hang: stable conduit setup")
                    .expect("stable conduit setup");
            (PeerTx::Stable(tx), PeerRx::Stable(rx))
        }
    };

    // Session handshake, by hand (rule session.handshake).
    let parity = setup.parity.parity();
    let features: Vec<String> = setup
        .features
        .0
        .iter()
        .map(|f| match f {
            Feature::Unknown(n) => format!("x-{n}"),
            Feature::Empty => String::new(),
        })
        .collect();
    let root = ConnectionSettings {
        max_concurrent_requests: u32::from(setup.max_concurrent),
        max_initial_credit: u32::from(setup.max_credit),
    };
    let mut h = hello(parity, root, features);
    if setup.finish == Finish::WrongVersion {
        h.protocol_version = PROTOCOL_VERSION + 1;
    }
    let (progress, _) = watch::channel(0u64);
    let peer = Peer {
        tx,
        obs: RefCell::new(Obs { next_conn: parity.first(), ..Obs::default() }),
        progress,
        session_parity: parity,
        filler: Bytes::from((0..4096u32).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>()),
    };
    peer.obs.borrow_mut().conn(0, parity);
    assert!(peer.send_conduit(&ConduitMsg::Handshake(HandshakeMsg::Hello(h))).await, "send Hello");
    let answer = tokio::time::timeout(PATIENCE, rx.recv()).await.expect("hang: no answer to Hello");
    match answer {
        Ok(Some(ConduitMsg::Handshake(HandshakeMsg::HelloYourself(hy)))) => {
            assert_ne!(
                setup.finish,
                Finish::WrongVersion,
                "the server accepted protocol version {}",
                PROTOCOL_VERSION + 1
            );
            assert_eq!(hy.protocol_version, PROTOCOL_VERSION);
        }
        Ok(Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { reason }))) => {
            assert_eq!(setup.finish, Finish::WrongVersion, "the server refused a valid Hello: {reason}");
            return setup_failed(server_task, rx, &peer).await;
        }
        other => panic!("unexpected answer to Hello: {other:?}"),
    }
    let finish = match setup.finish {
        Finish::LetsGo | Finish::WrongVersion => Some(ConduitMsg::Handshake(HandshakeMsg::LetsGo)),
        Finish::MessageFirst => Some(ConduitMsg::Message(Message::root(Payload::Ping { nonce: 1 }))),
        Finish::Sorry => Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { reason: "fuzz".into() })),
        Finish::Close => None,
    };
    if setup.finish == Finish::MessageFirst {
        peer.obs.borrow_mut().pinged.insert(1);
    }
    let Some(finish) = finish else {
        drop(peer);
        drop(rx);
        return setup_failed_quietly(server_task).await;
    };
    peer.send_conduit(&finish).await;
    let session = match tokio::time::timeout(PATIENCE, server_task).await.expect("hang: server setup") {
        Ok(Ok(vox_core::session::Accepted::New(session))) => session,
        Ok(Ok(vox_core::session::Accepted::Resumed)) => panic!("a new link was taken as a resumed conduit"),
        Ok(Err(e)) => {
            assert_ne!(setup.finish, Finish::LetsGo, "the server failed a valid handshake: {e}");
            return drain_after_failed_setup(rx, &peer).await;
        }
        Err(join) => panic!("the server's setup task failed: {join}"),
    };
    assert_ne!(setup.finish, Finish::Sorry, "the server established a session after Sorry");

    let stable_tx = match &peer.tx {
        PeerTx::Stable(tx) => Some(tx),
        PeerTx::Bare(_) => None,
    };

    // The actions, with the reader and the ponger running alongside.
    let driver = async {
        let mut played = Played::default();
        let mut n = 0;
        for a in s.actions.iter().take(MAX_ACTIONS) {
            if peer.obs.borrow().ended() {
                break;
            }
            n += 1;
            if !play(a, &peer, &session, setup.mode, stable_tx, &mut played).await {
                break;
            }
        }
        finish_run(&peer, &session, &played, setup.mode).await;
        n
    };
    let pump = async {
        tokio::join!(reader(&mut rx, &peer), ponger(&peer));
        std::future::pending::<()>().await
    };
    let played = tokio::select! {
        biased;
        n = driver => n,
        () = pump => unreachable!(),
    };
    let o = peer.obs.borrow();
    Outcome {
        established: true,
        alive: o.final_pong,
        protocol_error: o.protocol_error.clone(),
        played,
        received: o.received,
        peak_bytes: 0,
    }
}

/// After the actions: the final ping, then the outcome checks.
async fn finish_run(peer: &Peer, session: &Session, played: &Played, mode: Mode) {
    if !peer.obs.borrow().ended() && !played.sent_protocol_error {
        {
            let mut o = peer.obs.borrow_mut();
            o.pinged.insert(FINAL_NONCE);
        }
        peer.send(0, Payload::Ping { nonce: FINAL_NONCE }).await;
        let answered = peer.wait_until(PATIENCE, |o| o.final_pong || o.ended()).await;
        assert!(answered, "hang: no Pong to the final Ping within {PATIENCE:?} (virtual); {}", peer.state());
    }
    let (alive, protocol_error) = {
        let o = peer.obs.borrow();
        (o.final_pong, o.protocol_error.clone())
    };
    if alive {
        assert!(session.handle.close_reason().is_none(), "the session answered the final Ping but reports closed");
        // A graceful shutdown completes and closes the link.
        let _ = session.handle.shutdown();
        let reason = tokio::time::timeout(PATIENCE, session.handle.closed())
            .await
            .unwrap_or_else(|_| panic!("hang: shutdown did not complete within {PATIENCE:?} (virtual)"));
        assert!(matches!(reason, CloseReason::Shutdown), "shutdown ended the session with {reason:?}");
        let closed = peer.wait_until(PATIENCE, |o| o.gone()).await;
        assert!(closed, "the link stayed open {PATIENCE:?} (virtual) after shutdown; {}", peer.state());
        return;
    }
    // The session ended, or is ending: the link must close, and promptly.
    let closed = peer.wait_until(PATIENCE, |o| o.gone()).await;
    let reason = tokio::time::timeout(PATIENCE, session.handle.closed()).await.ok();
    // The server's ProtocolError may have arrived while waiting.
    let protocol_error = peer.obs.borrow().protocol_error.clone().or(protocol_error);
    if let Some(description) = protocol_error {
        // rule: session.protocol-error
        assert!(closed, "the link stayed open {PATIENCE:?} (virtual) after ProtocolError {description:?}");
        match &reason {
            Some(CloseReason::LocalProtocolError(_)) => {}
            // The peer's own ProtocolError may have crossed the server's.
            Some(CloseReason::PeerProtocolError(_)) if played.sent_protocol_error => {}
            other => panic!("the server sent ProtocolError {description:?} but its session ended with {other:?}"),
        }
        return;
    }
    let lost_on_redial = peer.obs.borrow().link_error.as_deref().is_some_and(|e| e.contains("resume refused"));
    match &reason {
        Some(CloseReason::PeerProtocolError(_)) if played.sent_protocol_error => {}
        // After a link break, the server's ProtocolError may be lost with
        // the link it was on; the session still ended for that reason.
        Some(CloseReason::LocalProtocolError(_)) if played.broke_link && mode == Mode::Stable => {}
        // Known vox-core issue (fuzz/crashes/session/README.md): the client
        // side of a stable conduit can lose the frames the server sent just
        // before closing the link (the ProtocolError among them) when its
        // writer notices the closed link first and the redial is refused
        // before its reader drained the old link. Tolerated unless
        // VOX_FUZZ_STRICT is set, so fuzzing can go on past it.
        Some(CloseReason::LocalProtocolError(_)) if mode == Mode::Stable && lost_on_redial && !strict() => {}
        other => panic!(
            "the session ended without a ProtocolError (close reason {other:?}, link closed: {closed}); {}",
            peer.state()
        ),
    }
    assert!(closed, "the link stayed open {PATIENCE:?} (virtual) after the session ended ({reason:?})");
}

/// Whether known vox-core issues fail the run too (`VOX_FUZZ_STRICT` set).
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("VOX_FUZZ_STRICT").is_some())
}

type ServerTask = tokio::task::JoinHandle<Result<vox_core::session::Accepted, vox_core::session::SessionError>>;

/// The server refused the handshake (`Sorry`): no session, the link closes.
async fn setup_failed(server_task: ServerTask, mut rx: PeerRx, peer: &Peer) -> Outcome {
    let r = tokio::time::timeout(PATIENCE, server_task).await.expect("hang: server setup after Sorry");
    assert!(matches!(r, Ok(Err(_))), "the server established a session after refusing it");
    let end = tokio::time::timeout(PATIENCE, rx.recv()).await.expect("hang: the link stayed open after Sorry");
    assert!(!matches!(end, Ok(Some(_))), "the server sent {end:?} after Sorry");
    let _ = peer;
    Outcome::default()
}

/// The peer closed the link during the handshake: the server's setup fails.
async fn setup_failed_quietly(server_task: ServerTask) -> Outcome {
    let r = tokio::time::timeout(PATIENCE, server_task).await.expect("hang: server setup after the peer left");
    assert!(matches!(r, Ok(Err(_))), "the server established a session with a peer that left during the handshake");
    Outcome::default()
}

/// The handshake failed on the server's side: the link must close.
async fn drain_after_failed_setup(mut rx: PeerRx, peer: &Peer) -> Outcome {
    let _ = peer;
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match rx.recv().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "hang: the link stayed open after the server failed the handshake");
    Outcome::default()
}
