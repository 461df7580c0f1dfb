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
    self, Blob, ChannelDecl, ChannelDirection, ChannelId, ConduitMode, ConduitMsg, ConnectionId, ConnectionSettings,
    HandshakeMsg, Hello, HelloYourself, Message, Metadata, MethodId, PROTOCOL_VERSION, Parity, Payload, RequestId,
    ResponseBody, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
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
    Blob(Bytes::from(wire::encode("harness value", value).unwrap_or_default()))
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
        ResponseBody::Ok(b) => Ok(wire::decode("return value", &b.0)?),
        other => fail!("expected an Ok response, got {other:?}"),
    }
}

/// Decodes a `User` error response body.
pub fn user_value<T: DeserializeOwned>(body: &ResponseBody) -> CaseResult<T> {
    match body {
        ResponseBody::User(b) => Ok(wire::decode("user error", &b.0)?),
        other => fail!("expected a User error response, got {other:?}"),
    }
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

    /// The next session message, `None` at end of stream.
    pub async fn recv(&mut self, what: &str) -> CaseResult<Option<Message>> {
        match self.recv_conduit(what).await? {
            None => Ok(None),
            Some(ConduitMsg::Message(m)) => Ok(Some(m)),
            Some(ConduitMsg::Handshake(h)) => fail!("session.message: handshake message {h:?} after the handshake"),
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
