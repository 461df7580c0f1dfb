//! A peer that speaks raw protocol messages, so tests can say things a
//! correct runtime never would.
#![allow(dead_code)]

use std::time::Duration;
use vox_core::conduit::{self, ConduitRx, ConduitTx};
use vox_core::link::{self, LinkConfig};
use vox_core::session::{Session, SessionBuilder};
use vox_core::test_util::handshake::{self, Negotiated};
use vox_core::transport;
use vox_core::wire::{ConduitMode, ConduitMsg, ConnectionSettings, Message, PROTOCOL_VERSION, Parity, Payload};

pub struct RawPeer {
    pub tx: ConduitTx,
    pub rx: ConduitRx,
    pub negotiated: Negotiated,
}

/// Bound for waiting on the runtime under test: generous, only there so a
/// broken runtime fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(20);

impl RawPeer {
    pub async fn send(&self, connection_id: u64, payload: Payload) {
        self.tx
            .send(&ConduitMsg::Message(Message { connection_id: vox_core::wire::ConnectionId(connection_id), payload }))
            .await
            .expect("raw send");
    }

    /// The next session message, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Message> {
        match tokio::time::timeout(PATIENCE, self.rx.recv()).await.expect("runtime under test went silent") {
            Ok(Some(ConduitMsg::Message(m))) => Some(m),
            Ok(Some(other)) => panic!("unexpected conduit message {other:?}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// Reads until a `ProtocolError`, answering nothing, and returns its
    /// description; then checks that the link ends.
    pub async fn expect_protocol_error(&mut self) -> String {
        loop {
            match self.recv().await {
                Some(Message { payload: Payload::ProtocolError { description }, connection_id }) => {
                    assert!(connection_id.is_root(), "ProtocolError must use connection 0");
                    assert!(self.recv().await.is_none(), "link must close after ProtocolError");
                    return description;
                }
                Some(_) => continue,
                None => panic!("link closed without a ProtocolError"),
            }
        }
    }

    /// Reads until a message matching `pred`, skipping others.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Message) -> bool) -> Message {
        loop {
            match self.recv().await {
                Some(m) if pred(&m) => return m,
                Some(_) => continue,
                None => panic!("link closed before the expected message"),
            }
        }
    }
}

/// A runtime session on the acceptor side and a raw initiator facing it.
pub async fn raw_initiator(server: SessionBuilder, parity: Parity) -> (Session, RawPeer) {
    raw_initiator_offering(server, parity, false).await
}

/// As [`raw_initiator`]; `channel_items` offers the `vox.channel-items`
/// feature (see `RawPeer::negotiated` for whether it was agreed).
pub async fn raw_initiator_offering(server: SessionBuilder, parity: Parity, channel_items: bool) -> (Session, RawPeer) {
    let (a, mut b) = link::memory_pair(LinkConfig::default());
    let raw = async move {
        transport::initiate(&mut b, ConduitMode::Bare).await.expect("prologue");
        let (tx, mut rx) = conduit::bare(b);
        let negotiated = handshake::initiate(
            &tx,
            &mut rx,
            parity,
            ConnectionSettings::default(),
            PROTOCOL_VERSION,
            Default::default(),
            // Without it, items come one per message, as most tests expect.
            channel_items,
        )
        .await
        .expect("handshake");
        RawPeer { tx, rx, negotiated }
    };
    let (s, r) = tokio::join!(server.establish_acceptor(a), raw);
    (s.expect("session"), r)
}

/// A runtime session on the initiator side and a raw acceptor facing it.
pub async fn raw_acceptor(client: SessionBuilder, settings: ConnectionSettings) -> (Session, RawPeer) {
    raw_acceptor_accepting(client, settings, false).await
}

/// As [`raw_acceptor`]; `channel_items` accepts the `vox.channel-items`
/// feature if the runtime offers it.
pub async fn raw_acceptor_accepting(
    client: SessionBuilder,
    settings: ConnectionSettings,
    channel_items: bool,
) -> (Session, RawPeer) {
    let (mut a, b) = link::memory_pair(LinkConfig::default());
    let raw = async move {
        transport::accept(&mut a, transport::AcceptModes::default()).await.expect("prologue");
        let (tx, mut rx) = conduit::bare(a);
        let decide = |_: &vox_core::wire::Hello| handshake::HelloDecision::New(None);
        let (negotiated, _) =
            handshake::accept_deciding(&tx, &mut rx, settings, decide, channel_items).await.expect("handshake");
        RawPeer { tx, rx, negotiated }
    };
    let (c, r) = tokio::join!(client.establish_initiator(b), raw);
    (c.expect("session"), r)
}
