//! The harness end of a link: raw prologue, raw handshake, raw session
//! messages, built from `vox_core::wire` values only.

use crate::error::{CaseError, CaseResult};
use crate::{ensure, fail};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use vox_core::link::{Link, LinkRx, LinkTx};
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ChannelId, ClientHello, ConduitMode, ConduitMsg, ConnectionId,
    ConnectionSettings, HandshakeMsg, Hello, HelloYourself, Message, Metadata, MetadataValue, MethodId, NO_PROPAGATE,
    PROTOCOL_VERSION, Parity, Payload, RequestId, ResponseBody, ResumeKey, StableFrame, StableHelloReply, StableMsg,
    TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
};

/// How long the harness waits for any one thing from the subject: only a
/// guard against hangs, never a synchronisation device.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The method id of Testbed method `name`.
pub fn mid(name: &str) -> MethodId {
    MethodId::from_names("Testbed", name)
}

/// Postcard-encodes a value into a blob.
pub fn blob<T: Serialize + ?Sized>(value: &T) -> Blob {
    // Encoding plain test values into a Vec cannot fail; an empty blob
    // would make the case fail visibly anyway.
    Blob::new(Bytes::from(wire::encode("harness value", value).unwrap_or_default()))
}

/// A request payload with empty metadata.
pub fn request<T: Serialize + ?Sized>(id: u64, method: &str, args: &T, channels: Vec<ChannelDecl>) -> Payload {
    Payload::Request {
        id: RequestId(id),
        method_id: mid(method),
        args: blob(args),
        channels,
        metadata: Metadata::new(),
    }
}

/// A channel declaration.
pub fn decl(id: u64, direction: ChannelDirection, initial_credit: u32) -> ChannelDecl {
    ChannelDecl { id: ChannelId(id), direction, initial_credit }
}

/// Decodes an `Ok` response body.
pub fn ok_value<T: DeserializeOwned>(body: &ResponseBody) -> CaseResult<T> {
    match body {
        ResponseBody::Ok(b) => Ok(wire::decode("return value", b.bytes())?),
        other => fail!("expected an Ok response, got {other:?}"),
    }
}

/// Decodes a `User` error response body.
pub fn user_value<T: DeserializeOwned>(body: &ResponseBody) -> CaseResult<T> {
    match body {
        ResponseBody::User(b) => Ok(wire::decode("user error", b.bytes())?),
        other => fail!("expected a User error response, got {other:?}"),
    }
}

/// The acceptor's answer to the harness's `Hello`.
#[derive(Debug)]
pub enum HelloAnswer {
    /// The session is (being) established.
    Yourself(HelloYourself),
    /// No session.
    Sorry(String),
    /// The subject closed the link without answering.
    Closed,
}

/// A `Hello` from the harness taking `parity`, listing `features`, resuming
/// `resume_key` (or `None` for a new session).
pub fn hello_msg(parity: Parity, features: &[&str], resume_key: Option<ResumeKey>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        parity,
        root_settings: ConnectionSettings::default(),
        features: features.iter().map(|f| f.to_string()).collect(),
        resume_key,
    }
}

/// The metadata key of the operation id (`vox.op-id`, PROTOCOL.md section
/// 10), spelled out here: the harness builds the entry by hand.
pub const OP_ID_KEY: &str = "vox.op-id";

/// Request metadata carrying operation id `op` (rule `retry.op-id`): a
/// `U64` value flagged `NO_PROPAGATE`.
pub fn op_id_metadata(op: u64) -> Metadata {
    let mut md = Metadata::new();
    md.push(OP_ID_KEY, MetadataValue::U64(op), NO_PROPAGATE);
    md
}

/// One side of an established (or establishing) link.
pub struct Peer {
    /// Sending half.
    pub tx: LinkTx,
    /// Receiving half.
    pub rx: LinkRx,
    /// The subject's session parity.
    pub subject_parity: Parity,
    /// The subject's root connection settings.
    pub subject_root: ConnectionSettings,
    /// Whether [`Peer::recv`] answers the subject's own `Ping`s (on
    /// connection 0) with a `Pong` and skips them (the default). The subject
    /// pings periodically (rule `session.keepalive`, on by default), so
    /// every case would otherwise have to expect a Ping anywhere; a case
    /// that asserts on the subject's Pings turns this off and sees them.
    pub answer_pings: bool,
    /// How many of the subject's Pings [`Peer::recv`] answered.
    pub pings_answered: u64,
    next_nonce: u64,
    /// Responses read while waiting for another one.
    stashed: Vec<(u64, RequestId, ResponseBody)>,
}

impl Peer {
    /// Wraps a link; the session fields are filled in by the handshake.
    pub fn new(link: Link) -> Peer {
        Peer {
            tx: link.tx,
            rx: link.rx,
            subject_parity: Parity::Odd,
            subject_root: ConnectionSettings::default(),
            answer_pings: true,
            pings_answered: 0,
            next_nonce: 0x5eed,
            stashed: Vec::new(),
        }
    }

    /// The harness's session parity.
    pub fn parity(&self) -> Parity {
        self.subject_parity.opposite()
    }

    /// The `n`-th id (from 0) of the harness's session parity.
    pub fn own_id(&self, n: u64) -> u64 {
        self.parity().first() + 2 * n
    }

    /// Sends one encoded value as a link message.
    pub async fn send_value<T: Serialize>(&mut self, what: &'static str, value: &T) -> CaseResult {
        self.tx.send(Bytes::from(wire::encode(what, value)?)).await?;
        Ok(())
    }

    /// Sends raw bytes as one link message.
    pub async fn send_raw(&mut self, bytes: Bytes) -> CaseResult {
        self.tx.send(bytes).await?;
        Ok(())
    }

    /// Sends a session message.
    pub async fn send(&mut self, connection_id: u64, payload: Payload) -> CaseResult {
        self.send_value(
            "ConduitMsg",
            &ConduitMsg::Message(Message { connection_id: ConnectionId(connection_id), payload }),
        )
        .await
    }

    /// The next link message, `None` at end of stream (or after a link
    /// error, which is how a reset TCP connection looks).
    pub async fn recv_raw(&mut self, what: &str) -> CaseResult<Option<Bytes>> {
        match tokio::time::timeout(PATIENCE, self.rx.recv()).await {
            Err(_) => Err(CaseError::Timeout(what.to_string())),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Ok(None),
        }
    }

    /// The next conduit message, `None` at end of stream.
    pub async fn recv_conduit(&mut self, what: &str) -> CaseResult<Option<ConduitMsg>> {
        match self.recv_raw(what).await? {
            None => Ok(None),
            Some(b) => Ok(Some(wire::decode::<ConduitMsg>("ConduitMsg", &b)?)),
        }
    }

    /// The next session message, `None` at end of stream. With
    /// [`Peer::answer_pings`] (the default) the subject's Pings on
    /// connection 0 are answered and skipped.
    pub async fn recv(&mut self, what: &str) -> CaseResult<Option<Message>> {
        loop {
            match self.recv_conduit(what).await? {
                None => return Ok(None),
                Some(ConduitMsg::Message(Message { connection_id, payload: Payload::Ping { nonce } }))
                    if self.answer_pings && connection_id.is_root() =>
                {
                    // rule: session.keepalive — best effort: the subject may
                    // be closing the link (a case expecting that must still
                    // see the close, not a send error).
                    let _ = self.send(0, Payload::Pong { nonce }).await;
                    self.pings_answered += 1;
                }
                Some(ConduitMsg::Message(m)) => return Ok(Some(m)),
                Some(ConduitMsg::Handshake(h)) => {
                    fail!("session.message: handshake message {h:?} after the handshake")
                }
            }
        }
    }

    /// The next session message; end of stream fails the case.
    pub async fn expect(&mut self, what: &str) -> CaseResult<Message> {
        match self.recv(what).await? {
            Some(m) => Ok(m),
            None => fail!("the subject closed the link while the harness waited for {what}"),
        }
    }

    /// Reads until a message matching `pred`, answering pings and skipping
    /// the rest; returns the match.
    pub async fn expect_where(&mut self, what: &str, mut pred: impl FnMut(&Message) -> bool) -> CaseResult<Message> {
        loop {
            let m = self.expect(what).await?;
            if pred(&m) {
                return Ok(m);
            }
            if let Payload::ProtocolError { description } = &m.payload {
                fail!("the subject sent ProtocolError({description:?}) while the harness waited for {what}");
            }
        }
    }

    /// Waits for the response to request `id` on `conn`; responses to other
    /// requests read meanwhile are kept for later, other messages skipped.
    pub async fn response(&mut self, conn: u64, id: u64) -> CaseResult<ResponseBody> {
        if let Some(i) = self.stashed.iter().position(|(c, r, _)| *c == conn && r.0 == id) {
            return Ok(self.stashed.swap_remove(i).2);
        }
        loop {
            let m = self.expect(&format!("the response to request {id} on connection {conn}")).await?;
            match m.payload {
                Payload::Response { id: r, ret, .. } if m.connection_id.0 == conn && r.0 == id => return Ok(ret),
                Payload::Response { id: r, ret, .. } => self.stashed.push((m.connection_id.0, r, ret)),
                Payload::ProtocolError { description } => {
                    fail!("the subject sent ProtocolError({description:?}) while the harness waited for response {id}")
                }
                _ => {}
            }
        }
    }

    /// Whether a response to `id` on `conn` was read and kept.
    pub fn has_stashed(&self, conn: u64, id: u64) -> bool {
        self.stashed.iter().any(|(c, r, _)| *c == conn && r.0 == id)
    }

    /// A round trip: sends a `Ping` and collects everything the subject
    /// sends before the matching `Pong`. Because the link is ordered, any
    /// message the subject sent before it handled the ping is in the list.
    pub async fn barrier(&mut self) -> CaseResult<Vec<Message>> {
        match self.try_barrier().await? {
            (before, false) => Ok(before),
            (_, true) => fail!("the subject closed the link while the harness waited for a Pong (round trip)"),
        }
    }

    /// Like [`Peer::barrier`], but the subject may end the link instead of
    /// answering; returns what came before and whether the link ended.
    pub async fn try_barrier(&mut self) -> CaseResult<(Vec<Message>, bool)> {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        self.send(0, Payload::Ping { nonce }).await?;
        let mut before = Vec::new();
        loop {
            let Some(m) = self.recv("a Pong (round trip through the subject)").await? else {
                return Ok((before, true));
            };
            match &m.payload {
                Payload::Pong { nonce: n } if *n == nonce => {
                    ensure!(
                        m.connection_id.is_root(),
                        "session.message.connection-id: Pong on connection {}",
                        m.connection_id
                    );
                    return Ok((before, false));
                }
                Payload::ProtocolError { description } => {
                    fail!("the subject sent ProtocolError({description:?}) for a valid exchange")
                }
                _ => before.push(m),
            }
        }
    }

    /// Checks the subject reports a violation: a `ProtocolError` on
    /// connection 0, then the end of the link. Other messages before it are
    /// skipped. Returns the description.
    pub async fn expect_protocol_error(&mut self) -> CaseResult<String> {
        loop {
            match self.recv("a ProtocolError").await {
                Err(CaseError::Timeout(_)) => fail!(
                    "session.protocol-error: no ProtocolError within {PATIENCE:?}; the subject accepted the violation"
                ),
                Err(e) => return Err(e),
                Ok(None) => fail!("session.protocol-error: the subject closed the link without sending ProtocolError"),
                Ok(Some(Message { connection_id, payload: Payload::ProtocolError { description } })) => {
                    ensure!(
                        connection_id.is_root(),
                        "session.message.connection-id: ProtocolError on connection {connection_id}, not 0"
                    );
                    self.expect_closed("the link to close after ProtocolError").await?;
                    return Ok(description);
                }
                Ok(Some(_)) => continue,
            }
        }
    }

    /// Checks the subject closes the link next (only end of stream, or
    /// session messages, may come; no ProtocolError expected).
    pub async fn expect_closed(&mut self, what: &str) -> CaseResult {
        loop {
            match self.recv_raw(what).await {
                Err(CaseError::Timeout(_)) => {
                    fail!("session.protocol-error: the subject did not close the link ({what})")
                }
                Err(e) => return Err(e),
                Ok(None) => return Ok(()),
                Ok(Some(_)) => continue,
            }
        }
    }

    // ------------------------------------------------------- handshakes

    /// Acceptor side of the prologue and the handshake (the subject
    /// initiates), advertising `settings` for the root.
    pub async fn accept_session(&mut self, settings: ConnectionSettings) -> CaseResult {
        self.accept_prologue().await?;
        let hello = self.expect_hello().await?;
        self.subject_parity = hello.parity;
        self.subject_root = hello.root_settings;
        let answer = HelloYourself {
            protocol_version: PROTOCOL_VERSION,
            root_settings: settings,
            features: vec![],
            resume_key: None,
        };
        self.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::HelloYourself(answer))).await?;
        match self.recv_conduit("LetsGo").await? {
            Some(ConduitMsg::Handshake(HandshakeMsg::LetsGo)) => Ok(()),
            other => fail!("session.handshake: expected LetsGo, got {other:?}"),
        }
    }

    /// Reads the subject's `TransportHello`, checks it, and accepts bare.
    pub async fn accept_prologue(&mut self) -> CaseResult {
        let hello = self.expect_transport_hello().await?;
        ensure!(hello.mode == ConduitMode::Bare, "transport.prologue: the subject asked for {:?}", hello.mode);
        self.send_value("TransportMsg", &TransportMsg::Accept { mode: ConduitMode::Bare }).await
    }

    /// Reads and checks the subject's `TransportHello`.
    pub async fn expect_transport_hello(&mut self) -> CaseResult<TransportHello> {
        let Some(bytes) = self.recv_raw("TransportHello").await? else {
            fail!("transport.prologue: the subject closed the link before its TransportHello");
        };
        match wire::decode::<TransportMsg>("TransportMsg", &bytes)? {
            TransportMsg::Hello(h) => {
                ensure!(h.magic == TRANSPORT_MAGIC, "transport.prologue: magic {:02x?}", h.magic);
                ensure!(h.version == TRANSPORT_VERSION, "transport.prologue: version {}", h.version);
                Ok(h)
            }
            other => fail!("transport.prologue: expected TransportHello, got {other:?}"),
        }
    }

    /// Reads and checks the subject's `Hello`.
    pub async fn expect_hello(&mut self) -> CaseResult<Hello> {
        match self.recv_conduit("Hello").await? {
            Some(ConduitMsg::Handshake(HandshakeMsg::Hello(h))) => {
                ensure!(
                    h.protocol_version == PROTOCOL_VERSION,
                    "session.handshake: Hello version {}",
                    h.protocol_version
                );
                Ok(h)
            }
            other => fail!("session.handshake: expected Hello, got {other:?}"),
        }
    }

    /// Initiator side of the prologue and the handshake (the subject
    /// listens), with the harness taking `parity`.
    pub async fn initiate_session(&mut self, parity: Parity) -> CaseResult {
        self.initiate_prologue(TransportHello {
            magic: TRANSPORT_MAGIC,
            version: TRANSPORT_VERSION,
            mode: ConduitMode::Bare,
        })
        .await?;
        self.initiate_handshake(parity).await
    }

    /// Initiator side of the handshake only (after the prologue).
    pub async fn initiate_handshake(&mut self, parity: Parity) -> CaseResult {
        let hello = Hello {
            resume_key: None,
            protocol_version: PROTOCOL_VERSION,
            parity,
            root_settings: ConnectionSettings::default(),
            features: vec![],
        };
        self.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
        match self.recv_conduit("HelloYourself").await? {
            Some(ConduitMsg::Handshake(HandshakeMsg::HelloYourself(hy))) => {
                ensure!(hy.protocol_version == PROTOCOL_VERSION, "session.handshake: version {}", hy.protocol_version);
                self.subject_parity = parity.opposite();
                self.subject_root = hy.root_settings;
            }
            other => fail!("session.handshake: expected HelloYourself, got {other:?}"),
        }
        self.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await
    }

    /// Bare prologue, then `hello` as the initiator; returns the subject's
    /// answer without sending `LetsGo` (see [`Peer::hello`]).
    pub async fn bare_hello(&mut self, hello: Hello) -> CaseResult<HelloAnswer> {
        self.initiate_prologue(TransportHello {
            magic: TRANSPORT_MAGIC,
            version: TRANSPORT_VERSION,
            mode: ConduitMode::Bare,
        })
        .await?;
        self.hello(hello).await
    }

    /// Sends `hello` as the initiator and returns the subject's answer
    /// (`HelloYourself` or `Sorry`), without sending `LetsGo`. On
    /// `HelloYourself` the session fields are filled in from `hello.parity`.
    pub async fn hello(&mut self, hello: Hello) -> CaseResult<HelloAnswer> {
        let parity = hello.parity;
        self.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
        match self.recv_conduit("HelloYourself or Sorry").await? {
            Some(ConduitMsg::Handshake(HandshakeMsg::HelloYourself(hy))) => {
                ensure!(hy.protocol_version == PROTOCOL_VERSION, "session.handshake: version {}", hy.protocol_version);
                self.subject_parity = parity.opposite();
                self.subject_root = hy.root_settings.clone();
                Ok(HelloAnswer::Yourself(hy))
            }
            Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { reason })) => Ok(HelloAnswer::Sorry(reason)),
            None => Ok(HelloAnswer::Closed),
            Some(other) => fail!("session.handshake: expected HelloYourself or Sorry, got {other:?}"),
        }
    }

    /// Sends `LetsGo`, completing the handshake as the initiator.
    pub async fn lets_go(&mut self) -> CaseResult {
        self.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await
    }

    /// Sends `hello` and expects `TransportAccept` with the same mode.
    pub async fn initiate_prologue(&mut self, hello: TransportHello) -> CaseResult {
        let mode = hello.mode;
        self.send_value("TransportMsg", &TransportMsg::Hello(hello)).await?;
        match self.recv_raw("TransportAccept").await? {
            Some(b) => match wire::decode::<TransportMsg>("TransportMsg", &b)? {
                TransportMsg::Accept { mode: m } if m == mode => Ok(()),
                other => fail!("transport.prologue: expected Accept {{ {mode:?} }}, got {other:?}"),
            },
            None => fail!("transport.prologue: the subject closed the link instead of accepting"),
        }
    }
}

// ------------------------------------------------------- stable conduit

/// The harness end of a stable conduit (rules `conduit.stable`, `stable.*`)
/// over one link: raw `ClientHello`, raw frames. It numbers its own frames,
/// checks the subject's numbering (`stable.seq`) and acks (`stable.ack`),
/// and acknowledges the subject's frames only when `ack_subject` is set.
pub struct StablePeer {
    /// Sending half of the current link.
    pub tx: LinkTx,
    /// Receiving half of the current link.
    pub rx: LinkRx,
    /// The seq of the harness's next frame.
    pub next_seq: u32,
    /// The seq the subject's next frame must carry.
    pub subject_next: u32,
    /// Whether the harness's frames acknowledge the subject's.
    pub ack_subject: bool,
    /// The highest ack the subject sent (on a frame or alone).
    pub subject_ack: Option<u32>,
    /// The subject's session parity.
    pub subject_parity: Parity,
    /// Every frame received from the subject on this link, in order.
    pub log: Vec<StableFrame>,
    /// Whether [`StablePeer::recv_conduit`] answers the subject's own
    /// `Ping`s on connection 0 with a `Pong` (in the next frame) and skips
    /// them (the default; see [`Peer::answer_pings`]).
    pub answer_pings: bool,
    next_nonce: u64,
}

/// Sends the stable prologue and `hello` on a fresh link to `addr`; returns
/// the link and the subject's answer (`None` if it closed without one).
pub async fn stable_hello(
    addr: std::net::SocketAddr,
    hello: ClientHello,
) -> CaseResult<(LinkTx, LinkRx, Option<StableHelloReply>)> {
    let mut peer = Peer::new(crate::transport::current().dial(addr).await?);
    peer.initiate_prologue(TransportHello {
        magic: TRANSPORT_MAGIC,
        version: TRANSPORT_VERSION,
        mode: ConduitMode::Stable,
    })
    .await?;
    peer.send_value("ClientHello", &hello).await?;
    let reply = match peer.recv_raw("StableHelloReply").await? {
        None => None,
        Some(b) => Some(wire::decode::<StableHelloReply>("StableHelloReply", &b)?),
    };
    Ok((peer.tx, peer.rx, reply))
}

impl StablePeer {
    /// Wraps a link whose hello exchange is done. `next_seq` is the seq of
    /// the harness's next frame, `subject_next` the one the subject's next
    /// frame must carry.
    pub fn new(tx: LinkTx, rx: LinkRx, next_seq: u32, subject_next: u32) -> StablePeer {
        StablePeer {
            tx,
            rx,
            next_seq,
            subject_next,
            ack_subject: true,
            subject_ack: None,
            subject_parity: Parity::Even,
            log: Vec::new(),
            answer_pings: true,
            next_nonce: 0x57ab,
        }
    }

    /// A new conduit on a fresh link: `ClientHello { None, None }` must be
    /// answered by `Welcome` with a key of at least 16 bytes and no
    /// `last_received`. Returns the peer and the key.
    pub async fn open(addr: std::net::SocketAddr) -> CaseResult<(StablePeer, ResumeKey)> {
        let (tx, rx, reply) = stable_hello(addr, ClientHello { resume_key: None, last_received: None }).await?;
        let sh = match reply {
            Some(StableHelloReply::Welcome(sh)) => sh,
            other => fail!("conduit.stable: a new ClientHello was answered with {other:?}, expected Welcome"),
        };
        ensure!(
            sh.resume_key.0.len() >= 16,
            "stable.resume-key: the key has {} bytes, fewer than 16",
            sh.resume_key.0.len()
        );
        ensure!(
            sh.last_received.is_none(),
            "conduit.stable: a new conduit's ServerHello says seq {:?} was received",
            sh.last_received
        );
        Ok((StablePeer::new(tx, rx, 0, 0), sh.resume_key))
    }

    /// The frame the harness sends next for `msg` (without sending it).
    pub fn frame(&mut self, msg: &ConduitMsg) -> CaseResult<StableFrame> {
        let item = Blob::new(Bytes::from(wire::encode("ConduitMsg", msg)?));
        let ack = if self.ack_subject { self.subject_next.checked_sub(1) } else { None };
        let frame = StableFrame { seq: self.next_seq, ack, item };
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(frame)
    }

    /// Sends one stable message as is.
    pub async fn send_stable(&mut self, msg: &StableMsg) -> CaseResult {
        self.tx.send(Bytes::from(wire::encode("StableMsg", msg)?)).await?;
        Ok(())
    }

    /// Wraps `msg` in the next frame and sends it; returns the frame.
    pub async fn send_conduit(&mut self, msg: &ConduitMsg) -> CaseResult<StableFrame> {
        let frame = self.frame(msg)?;
        self.send_stable(&StableMsg::Frame(frame.clone())).await?;
        Ok(frame)
    }

    /// Sends a session message in the next frame.
    pub async fn send(&mut self, connection_id: u64, payload: Payload) -> CaseResult<StableFrame> {
        self.send_conduit(&ConduitMsg::Message(Message { connection_id: ConnectionId(connection_id), payload })).await
    }

    fn check_ack(&mut self, ack: u32) -> CaseResult {
        ensure!(
            self.next_seq.checked_sub(1).is_some_and(|last| ack <= last),
            "stable.ack: the subject acknowledged seq {ack}, but the harness's last frame was {:?}",
            self.next_seq.checked_sub(1)
        );
        if let Some(prev) = self.subject_ack {
            ensure!(ack >= prev, "stable.ack: the subject's ack went back from {prev} to {ack}");
        }
        self.subject_ack = Some(ack);
        Ok(())
    }

    /// The next stable message, `None` at end of stream (or a link error).
    pub async fn recv_stable(&mut self, what: &str) -> CaseResult<Option<StableMsg>> {
        match tokio::time::timeout(PATIENCE, self.rx.recv()).await {
            Err(_) => Err(CaseError::Timeout(what.to_string())),
            Ok(Ok(Some(b))) => Ok(Some(wire::decode::<StableMsg>("StableMsg", &b)?)),
            Ok(Ok(None)) | Ok(Err(_)) => Ok(None),
        }
    }

    /// The subject's next frame (stand-alone acks are checked and skipped),
    /// checked for `stable.seq` and `stable.ack`; `None` at end of stream.
    pub async fn recv_frame(&mut self, what: &str) -> CaseResult<Option<StableFrame>> {
        loop {
            match self.recv_stable(what).await? {
                None => return Ok(None),
                Some(StableMsg::Ack { ack }) => self.check_ack(ack)?,
                Some(StableMsg::Bye) => {
                    fail!("conduit.stable: the subject said Bye while the harness waited for {what}")
                }
                Some(StableMsg::Frame(f)) => {
                    ensure!(
                        f.seq == self.subject_next,
                        "stable.seq: the subject's frame has seq {}, expected {}",
                        f.seq,
                        self.subject_next
                    );
                    self.subject_next = f.seq.wrapping_add(1);
                    if let Some(ack) = f.ack {
                        self.check_ack(ack)?;
                    }
                    self.log.push(f.clone());
                    return Ok(Some(f));
                }
            }
        }
    }

    /// The conduit message in the subject's next frame. With
    /// [`StablePeer::answer_pings`] (the default) the subject's Pings on
    /// connection 0 are answered and skipped.
    pub async fn recv_conduit(&mut self, what: &str) -> CaseResult<(StableFrame, ConduitMsg)> {
        loop {
            let Some(f) = self.recv_frame(what).await? else {
                fail!("the subject closed the link while the harness waited for {what}");
            };
            let msg = wire::decode::<ConduitMsg>("ConduitMsg", f.item.bytes())?;
            if let ConduitMsg::Message(Message { connection_id, payload: Payload::Ping { nonce } }) = &msg
                && self.answer_pings
                && connection_id.is_root()
            {
                // rule: session.keepalive — best effort, as in Peer::recv.
                let _ = self.send(0, Payload::Pong { nonce: *nonce }).await;
                continue;
            }
            return Ok((f, msg));
        }
    }

    /// Initiator side of the session handshake inside frames, the harness
    /// taking `parity`.
    pub async fn initiate_handshake(&mut self, parity: Parity) -> CaseResult {
        let hello = Hello {
            resume_key: None,
            protocol_version: PROTOCOL_VERSION,
            parity,
            root_settings: ConnectionSettings::default(),
            features: vec![],
        };
        self.send_conduit(&ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
        match self.recv_conduit("HelloYourself").await?.1 {
            ConduitMsg::Handshake(HandshakeMsg::HelloYourself(hy)) => {
                ensure!(hy.protocol_version == PROTOCOL_VERSION, "session.handshake: version {}", hy.protocol_version);
                self.subject_parity = parity.opposite();
            }
            other => fail!("session.handshake: expected HelloYourself in a frame, got {other:?}"),
        }
        self.send_conduit(&ConduitMsg::Handshake(HandshakeMsg::LetsGo)).await?;
        Ok(())
    }

    /// Waits for the response to request `id` on the root; other session
    /// messages are skipped, a ProtocolError fails the case.
    pub async fn response(&mut self, id: u64) -> CaseResult<ResponseBody> {
        loop {
            match self.recv_conduit(&format!("the response to request {id}")).await?.1 {
                ConduitMsg::Message(Message { connection_id, payload: Payload::Response { id: r, ret, .. } })
                    if connection_id.is_root() && r.0 == id =>
                {
                    return Ok(ret);
                }
                ConduitMsg::Message(Message { payload: Payload::ProtocolError { description }, .. }) => {
                    fail!("the subject sent ProtocolError({description:?}) while the harness waited for response {id}")
                }
                _ => {}
            }
        }
    }

    /// Calls `echo(text)` as request `id` and checks the answer.
    pub async fn echo(&mut self, id: u64, text: &str) -> CaseResult {
        self.send(0, request(id, "echo", text, vec![])).await?;
        let s: String = ok_value(&self.response(id).await?)?;
        ensure!(s == text, "echo({text:?}) returned {s:?}");
        Ok(())
    }

    /// A round trip through the subject (Ping/Pong in frames); returns the
    /// session messages that came before the Pong.
    pub async fn barrier(&mut self) -> CaseResult<Vec<Message>> {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        self.send(0, Payload::Ping { nonce }).await?;
        let mut before = Vec::new();
        loop {
            match self.recv_conduit("a Pong (round trip through the subject)").await?.1 {
                ConduitMsg::Message(Message { payload: Payload::Pong { nonce: n }, .. }) if n == nonce => {
                    return Ok(before);
                }
                ConduitMsg::Message(Message { payload: Payload::ProtocolError { description }, .. }) => {
                    fail!("the subject sent ProtocolError({description:?}) for a valid exchange")
                }
                ConduitMsg::Message(m) => before.push(m),
                ConduitMsg::Handshake(h) => fail!("session.message: handshake message {h:?} after the handshake"),
            }
        }
    }

    /// Ends the conduit on purpose (`Bye`) and waits for the link to close.
    pub async fn bye(mut self) -> CaseResult {
        self.send_stable(&StableMsg::Bye).await?;
        self.expect_closed("the link to close after Bye").await
    }

    /// Reads until the link closes (anything may come first).
    pub async fn expect_closed(&mut self, what: &str) -> CaseResult {
        loop {
            match tokio::time::timeout(PATIENCE, self.rx.recv()).await {
                Err(_) => fail!("the subject did not close the link ({what})"),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return Ok(()),
            }
        }
    }
}
