//! Link framing, transport prologue and session handshake.

use crate::error::CaseResult;
use crate::peer::{PATIENCE, Peer, request};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vox_core::link::{self, LinkConfig};
use vox_core::wire::{
    self, ConduitMode, ConduitMsg, ConnectionSettings, HandshakeMsg, Hello, HelloYourself, PROTOCOL_VERSION, Parity,
    Payload, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg,
};

fn hello(magic: [u8; 4], version: u16, mode: ConduitMode) -> TransportMsg {
    TransportMsg::Hello(TransportHello { magic, version, mode })
}

/// Sends a prologue hello on a fresh link to a listening subject and returns
/// the subject's answer (`None` if it closed without one) and the peer.
async fn prologue_answer(
    cmd: &SubjectCmd,
    msg: &TransportMsg,
) -> CaseResult<(subject::Running, Peer, Option<TransportMsg>)> {
    let (running, addr) = subject::listen(cmd).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    peer.send_value("TransportMsg", msg).await?;
    let answer = match peer.recv_raw("the prologue answer").await? {
        None => None,
        Some(b) => Some(wire::decode::<TransportMsg>("TransportMsg", &b)?),
    };
    Ok((running, peer, answer))
}

pub async fn transport_prologue_bare_accepted_raw_frames(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let mut stream = subject::dial_raw(addr).await?;
    // rule: transport.stream — 32-bit little-endian length, then the message.
    let body = wire::encode("TransportMsg", &hello(TRANSPORT_MAGIC, TRANSPORT_VERSION, ConduitMode::Bare))?;
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    let mut len = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut len)).await.map_err(|_| timeout("TransportAccept"))??;
    let n = u32::from_le_bytes(len) as usize;
    ensure!(n < 1024, "transport.stream: answer length prefix {n} is implausible");
    let mut answer = vec![0u8; n];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
        .await
        .map_err(|_| timeout("TransportAccept body"))??;
    match wire::decode_slice::<TransportMsg>("TransportMsg", &answer)? {
        TransportMsg::Accept { mode: ConduitMode::Bare } => {}
        other => fail!("transport.prologue: expected Accept {{ Bare }}, got {other:?}"),
    }
    let mut peer = Peer::new(link::tcp(stream, LinkConfig::default()));
    peer.initiate_handshake(Parity::Odd).await?;
    peer.send(0, request(1, "echo", "framed", vec![])).await?;
    let body = peer.response(0, 1).await?;
    let s: String = crate::peer::ok_value(&body)?;
    ensure!(s == "framed", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}

fn timeout(what: &str) -> crate::CaseError {
    crate::CaseError::Timeout(what.to_string())
}

pub async fn transport_prologue_stable_rejected_no_fallback(cmd: SubjectCmd) -> CaseResult {
    // The subject accepts stable by default; `SUBJECT_ACCEPT_STABLE=0` makes
    // it refuse, which is when falling back to bare would be tempting.
    let (running, addr) = subject::listen_with(&cmd, &[("SUBJECT_ACCEPT_STABLE", "0")]).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    peer.send_value("TransportMsg", &hello(TRANSPORT_MAGIC, TRANSPORT_VERSION, ConduitMode::Stable)).await?;
    let answer = match peer.recv_raw("the prologue answer").await? {
        None => None,
        Some(b) => Some(wire::decode::<TransportMsg>("TransportMsg", &b)?),
    };
    match answer {
        Some(TransportMsg::Reject { .. }) => {}
        Some(TransportMsg::Accept { mode: ConduitMode::Stable }) => {
            fail!("transport.prologue.no-fallback: the subject accepted stable despite SUBJECT_ACCEPT_STABLE=0")
        }
        other => fail!("transport.prologue.no-fallback: asked for stable, got {other:?}"),
    }
    peer.expect_closed("the link to close after TransportReject").await?;
    running.finish().await
}

pub async fn transport_prologue_unknown_version_rejected(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer, answer) = prologue_answer(&cmd, &hello(TRANSPORT_MAGIC, 999, ConduitMode::Bare)).await?;
    ensure!(
        matches!(answer, Some(TransportMsg::Reject { .. })),
        "transport.prologue: unknown version 999 answered with {answer:?}, expected TransportReject"
    );
    peer.expect_closed("the link to close after TransportReject").await?;
    running.finish().await
}

pub async fn transport_prologue_bad_magic_closes(cmd: SubjectCmd) -> CaseResult {
    let (running, _peer, answer) =
        prologue_answer(&cmd, &hello(*b"HTTP", TRANSPORT_VERSION, ConduitMode::Bare)).await?;
    ensure!(
        !matches!(answer, Some(TransportMsg::Accept { .. })),
        "transport.prologue: a hello with bad magic was accepted"
    );
    running.finish().await
}

pub async fn transport_prologue_garbage_closes(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    peer.send_raw(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")).await?;
    if let Some(b) = peer.recv_raw("the link to close").await? {
        let m = wire::decode::<TransportMsg>("TransportMsg", &b);
        ensure!(!matches!(m, Ok(TransportMsg::Accept { .. })), "transport.prologue: garbage was accepted");
        peer.expect_closed("the link to close after garbage").await?;
    }
    running.finish().await
}

pub async fn link_rx_oversized_frame_closes_without_waiting(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let mut stream = subject::dial_raw(addr).await?;
    // Announce a ~4 GiB message and send nothing more: the subject must see
    // a link error at once instead of waiting for (or allocating) it.
    stream.write_all(&0xFFFF_FFF0u32.to_le_bytes()).await?;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => fail!("link.tx.max-size: the subject kept waiting for an oversized message instead of closing"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
        }
    }
    running.finish().await
}

pub async fn session_handshake_acceptor_version_mismatch_sorry(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    peer.initiate_prologue(TransportHello {
        magic: TRANSPORT_MAGIC,
        version: TRANSPORT_VERSION,
        mode: ConduitMode::Bare,
    })
    .await?;
    let hello = Hello {
        resume_key: None,
        protocol_version: 999,
        parity: Parity::Odd,
        root_settings: ConnectionSettings::default(),
        features: vec![],
    };
    peer.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
    match peer.recv_conduit("Sorry").await? {
        Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { .. })) => {}
        other => fail!("session.handshake: protocol version 999 answered with {other:?}, expected Sorry"),
    }
    peer.expect_closed("the link to close after Sorry").await?;
    running.finish().await
}

pub async fn session_handshake_acceptor_sorry_instead_of_letsgo_closes(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    peer.initiate_prologue(TransportHello {
        magic: TRANSPORT_MAGIC,
        version: TRANSPORT_VERSION,
        mode: ConduitMode::Bare,
    })
    .await?;
    let hello = Hello {
        resume_key: None,
        protocol_version: PROTOCOL_VERSION,
        parity: Parity::Odd,
        root_settings: ConnectionSettings::default(),
        features: vec![],
    };
    peer.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Hello(hello))).await?;
    match peer.recv_conduit("HelloYourself").await? {
        Some(ConduitMsg::Handshake(HandshakeMsg::HelloYourself(_))) => {}
        other => fail!("session.handshake: expected HelloYourself, got {other:?}"),
    }
    peer.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Sorry { reason: "spec-tests says no".into() }))
        .await?;
    peer.expect_closed("the link to close after the initiator's Sorry").await?;
    running.finish().await
}

pub async fn session_parity_acceptor_takes_opposite(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    // The harness initiates with Even: the subject must take Odd.
    peer.initiate_session(Parity::Even).await?;
    peer.send(0, request(2, "echo", "even", vec![])).await?;
    let s: String = crate::peer::ok_value(&peer.response(0, 2).await?)?;
    ensure!(s == "even", "echo returned {s:?}");
    // An odd connection id is the subject's own: opening it is a violation.
    peer.send(
        1,
        Payload::OpenConnection {
            parity: Parity::Even,
            settings: ConnectionSettings::default(),
            metadata: Default::default(),
        },
    )
    .await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

/// The subject initiates; the harness answers the prologue with `answer`.
async fn initiator_prologue(cmd: &SubjectCmd, answer: TransportMsg) -> CaseResult {
    let (running, link) = subject::connect_in(cmd, "client", "establish_fails").await?;
    let mut peer = Peer::new(link);
    let h = peer.expect_transport_hello().await?;
    ensure!(h.mode == ConduitMode::Bare, "transport.prologue: the subject asked for {:?}", h.mode);
    peer.send_value("TransportMsg", &answer).await?;
    peer.expect_closed("the subject to close the link after a bad prologue answer").await?;
    running.finish().await
}

pub async fn transport_prologue_initiator_refuses_other_mode(cmd: SubjectCmd) -> CaseResult {
    initiator_prologue(&cmd, TransportMsg::Accept { mode: ConduitMode::Stable }).await
}

pub async fn transport_prologue_initiator_reject_closes(cmd: SubjectCmd) -> CaseResult {
    initiator_prologue(&cmd, TransportMsg::Reject { reason: "spec-tests rejects".into() }).await
}

pub async fn session_handshake_initiator_version_mismatch_sorry(cmd: SubjectCmd) -> CaseResult {
    let (running, link) = subject::connect_in(&cmd, "client", "establish_fails").await?;
    let mut peer = Peer::new(link);
    peer.accept_prologue().await?;
    peer.expect_hello().await?;
    let hy = HelloYourself {
        protocol_version: 999,
        root_settings: ConnectionSettings::default(),
        features: vec![],
        resume_key: None,
    };
    peer.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::HelloYourself(hy))).await?;
    match peer.recv_conduit("Sorry").await? {
        Some(ConduitMsg::Handshake(HandshakeMsg::Sorry { .. })) => {}
        other => fail!("session.handshake: HelloYourself with version 999 answered with {other:?}, expected Sorry"),
    }
    peer.expect_closed("the link to close after Sorry").await?;
    running.finish().await
}

pub async fn session_handshake_initiator_sorry_closes(cmd: SubjectCmd) -> CaseResult {
    let (running, link) = subject::connect_in(&cmd, "client", "establish_fails").await?;
    let mut peer = Peer::new(link);
    peer.accept_prologue().await?;
    peer.expect_hello().await?;
    peer.send_value("ConduitMsg", &ConduitMsg::Handshake(HandshakeMsg::Sorry { reason: "no session today".into() }))
        .await?;
    peer.expect_closed("the link to close after Sorry").await?;
    running.finish().await
}
