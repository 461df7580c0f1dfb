//! The stable conduit (rules `conduit.stable`, `stable.*`) and session
//! resume (`session.resume`), with the subject listening and the harness
//! playing the client over raw links.

use crate::error::CaseResult;
use crate::peer::{StablePeer, ok_value, request, stable_hello};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use bytes::Bytes;
use std::time::Duration;
use vox_core::wire::{
    self, Blob, ClientHello, ConduitMsg, Message, Parity, Payload, ResumeKey, StableHelloReply, StableMsg,
};

/// How soon after a violation the subject must have sent its
/// `ProtocolError` and closed the link, with the harness sending nothing
/// meanwhile (no ack): a generous bound on vox-core's 500 ms write deadline
/// (rule `session.protocol-error`: the teardown never waits on the
/// violator).
const PROMPT: Duration = Duration::from_secs(3);

/// A listening subject, a new stable conduit to it and the session
/// handshake inside frames (the harness takes odd parity).
async fn stable_session(
    cmd: &SubjectCmd,
) -> CaseResult<(subject::Running, std::net::SocketAddr, StablePeer, ResumeKey)> {
    let (running, addr) = subject::listen(cmd).await?;
    let (mut peer, key) = StablePeer::open(addr).await?;
    peer.initiate_handshake(Parity::Odd).await?;
    Ok((running, addr, peer, key))
}

pub async fn conduit_stable_hello_issues_resume_key(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        for (id, text) in [(1u64, "stable"), (3, "again")] {
            peer.send(0, request(id, "echo", text, vec![])).await?;
            let sent = peer.next_seq - 1;
            let s: String = ok_value(&peer.response(id).await?)?;
            ensure!(s == text, "echo({text:?}) returned {s:?}");
            // rule: stable.ack — the subject answered, so it delivered the request's frame.
            ensure!(
                peer.subject_ack.is_some_and(|a| a >= sent),
                "stable.ack: the subject answered the request in frame {sent} but acknowledges only {:?}",
                peer.subject_ack
            );
        }
        // rule: stable.seq — recv_frame checked every frame against 0, 1, 2, ...
        let seqs: Vec<u32> = peer.log.iter().map(|f| f.seq).collect();
        ensure!(seqs.len() >= 3, "conduit.stable: only {} frames from the subject", seqs.len());
        ensure!(seqs.first() == Some(&0), "stable.seq: the subject's first frame is {:?}, not 0", seqs.first());
        peer.bye().await
    }
    .await;
    running.conclude(result).await
}

pub async fn stable_seq_duplicate_frame_ignored(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        let frame = peer.frame(&ConduitMsg::Message(Message {
            connection_id: wire::ConnectionId::ROOT,
            payload: request(1, "echo", "once", vec![]),
        }))?;
        // The same frame twice in a row: the second is a duplicate to drop
        // (delivered, it would repeat request 1 while it is in flight).
        peer.send_stable(&StableMsg::Frame(frame.clone())).await?;
        peer.send_stable(&StableMsg::Frame(frame)).await?;
        peer.send(0, request(3, "echo", "after", vec![])).await?;
        let mut answers = Vec::new();
        while !answers.contains(&3) {
            match peer.recv_conduit("the responses to requests 1 and 3").await?.1 {
                ConduitMsg::Message(Message { payload: Payload::Response { id, .. }, .. }) => answers.push(id.0),
                ConduitMsg::Message(Message { payload: Payload::ProtocolError { description }, .. }) => {
                    fail!("stable.seq: the duplicate frame was delivered: ProtocolError({description:?})")
                }
                _ => {}
            }
        }
        for m in peer.barrier().await? {
            if let Payload::Response { id, .. } = m.payload {
                answers.push(id.0);
            }
        }
        let ones = answers.iter().filter(|&&id| id == 1).count();
        ensure!(ones == 1, "stable.seq: {ones} responses to request 1, sent once in a duplicated frame");
        peer.bye().await
    }
    .await;
    running.conclude(result).await
}

/// After a stable-layer violation by the harness (`violation`, for the
/// messages): the subject must send a `ProtocolError` on connection 0,
/// inside a frame, and then close the link within [`PROMPT`], while the
/// harness sends nothing at all, in particular no ack of that frame.
/// Anything else the subject sends first is skipped, except an answer to
/// request `unanswered` (sent after the violation). Returns the description.
async fn expect_stable_protocol_error(
    peer: &mut StablePeer,
    violation: &str,
    unanswered: Option<u64>,
) -> CaseResult<String> {
    let deadline = tokio::time::Instant::now() + PROMPT;
    let mut description: Option<String> = None;
    loop {
        let next = match tokio::time::timeout_at(deadline, peer.rx.recv()).await {
            Err(_) => match &description {
                None => fail!(
                    "session.protocol-error: after {violation}, neither a ProtocolError nor a close within {PROMPT:?}"
                ),
                Some(d) => fail!(
                    "session.protocol-error: after {violation}, the subject sent ProtocolError({d:?}) but kept the link open for {PROMPT:?} (waiting on the violator?)"
                ),
            },
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) | Ok(Err(_)) => match description {
                Some(d) => return Ok(d),
                None => fail!(
                    "session.protocol-error: after {violation}, the subject closed the link without a ProtocolError"
                ),
            },
        };
        let Ok(msg) = wire::decode::<StableMsg>("StableMsg", &next) else {
            fail!("conduit.stable: after {violation}, the subject sent a link message that is not a StableMsg");
        };
        let StableMsg::Frame(f) = msg else { continue };
        match wire::decode::<ConduitMsg>("ConduitMsg", f.item.bytes())? {
            ConduitMsg::Message(Message { connection_id, payload: Payload::ProtocolError { description: d } }) => {
                ensure!(
                    connection_id.is_root(),
                    "session.message.connection-id: ProtocolError on connection {connection_id}, not 0"
                );
                description = Some(d);
            }
            ConduitMsg::Message(Message { payload: Payload::Response { id, .. }, .. }) if Some(id.0) == unanswered => {
                fail!(
                    "session.protocol-error: after {violation}, the subject delivered request {} and answered it",
                    id.0
                )
            }
            _ => {}
        }
    }
}

pub async fn stable_seq_gap_is_error(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        peer.echo(1, "before the gap").await?;
        // Skip one seq: a reliable link plus replay cannot lose a frame.
        peer.next_seq += 1;
        peer.send(0, request(3, "echo", "after the gap", vec![])).await?;
        expect_stable_protocol_error(&mut peer, "a frame whose seq skips one (stable.seq)", Some(3)).await?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

/// An ack far beyond the subject's last frame: it has sent a handful of
/// frames (handshake, echo, perhaps keepalive pings), never a thousand.
fn ack_beyond(peer: &StablePeer) -> u32 {
    peer.subject_next.wrapping_add(1000)
}

pub async fn stable_ack_beyond_sent_on_frame_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        peer.echo(1, "before the bad ack").await?;
        let mut frame = peer.frame(&ConduitMsg::Message(Message {
            connection_id: wire::ConnectionId::ROOT,
            payload: request(3, "echo", "with a bad ack", vec![]),
        }))?;
        frame.ack = Some(ack_beyond(&peer));
        peer.send_stable(&StableMsg::Frame(frame)).await?;
        expect_stable_protocol_error(&mut peer, "a frame acknowledging seqs the subject never sent (stable.ack)", None)
            .await?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

pub async fn stable_ack_beyond_sent_alone_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        peer.echo(1, "before the bad ack").await?;
        let ack = ack_beyond(&peer);
        peer.send_stable(&StableMsg::Ack { ack }).await?;
        expect_stable_protocol_error(&mut peer, "a stand-alone Ack of seqs the subject never sent (stable.ack)", None)
            .await?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

pub async fn stable_undecodable_link_message_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        peer.echo(1, "before the garbage").await?;
        peer.tx.send(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff])).await?;
        expect_stable_protocol_error(&mut peer, "a link message that is not a StableMsg", None).await?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

pub async fn stable_frame_item_undecodable_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, _addr, mut peer, _key) = stable_session(&cmd).await?;
    let result = async {
        peer.echo(1, "before the garbage").await?;
        // A well-formed frame, in sequence, acknowledging correctly, whose
        // item is not a conduit message.
        let mut frame = peer.frame(&ConduitMsg::Handshake(wire::HandshakeMsg::LetsGo))?;
        frame.item = Blob::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff]));
        peer.send_stable(&StableMsg::Frame(frame)).await?;
        expect_stable_protocol_error(&mut peer, "a frame whose item is not a ConduitMsg", None).await?;
        Ok(())
    }
    .await;
    running.conclude(result).await
}

pub async fn stable_replay_buffer_resends_unacked_after_reconnect(cmd: SubjectCmd) -> CaseResult {
    let (running, addr, mut peer, key) = stable_session(&cmd).await?;
    let result = async {
        // The harness never acknowledges: everything the subject sent stays
        // in its replay buffer.
        peer.ack_subject = false;
        for (id, text) in [(1u64, "one"), (3, "two"), (5, "three")] {
            peer.echo(id, text).await?;
        }
        let last = peer.subject_next - 1;
        ensure!(last >= 3, "conduit.stable: only {} frames from the subject", last + 1);
        // Claim the last two frames were lost with the link.
        let claimed = last - 2;
        let harness_last = peer.next_seq - 1;
        let old_log = std::mem::take(&mut peer.log);
        // Drop the link without Bye, as a network failure would.
        drop(peer);

        let hello = ClientHello { resume_key: Some(key.clone()), last_received: Some(claimed) };
        let (tx, rx, reply) = stable_hello(addr, hello).await?;
        let sh = match reply {
            Some(StableHelloReply::Welcome(sh)) => sh,
            other => fail!("session.resume: resuming with the live key was answered with {other:?}"),
        };
        ensure!(sh.resume_key == key, "stable.resume-key: the resumed conduit's Welcome carries another key");
        ensure!(
            sh.last_received == Some(harness_last),
            "session.resume: Welcome says the subject received up to {:?}, but it answered frame {harness_last}",
            sh.last_received
        );
        let mut peer = StablePeer::new(tx, rx, harness_last.wrapping_add(1), claimed + 1);
        peer.ack_subject = false;
        // rule: stable.replay-buffer — frames claimed+1..=last again, same
        // seq (checked by recv_frame) and same content, before anything new.
        for seq in claimed + 1..=last {
            let Some(f) = peer.recv_frame(&format!("the replay of frame {seq}")).await? else {
                fail!("stable.replay-buffer: the subject closed the resumed link before replaying frame {seq}");
            };
            let original = old_log.iter().find(|o| o.seq == seq).map(|o| &o.item);
            ensure!(original == Some(&f.item), "stable.replay-buffer: replayed frame {seq} differs from the original");
        }
        peer.ack_subject = true;
        peer.echo(7, "resumed").await?;
        ensure!(
            peer.log.first().map(|f| f.seq) == Some(claimed + 1),
            "stable.replay-buffer: the replay did not come first"
        );
        peer.bye().await
    }
    .await;
    running.conclude(result).await
}

/// A key the subject never issued (it draws 16+ random bytes).
fn foreign_key() -> ResumeKey {
    ResumeKey(Blob::new(Bytes::from_static(b"vox-spec-tests: not a real resume key")))
}

pub async fn stable_resume_key_unknown_rejected(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let hello = ClientHello { resume_key: Some(foreign_key()), last_received: Some(4) };
        let (_tx, mut rx, reply) = stable_hello(addr, hello).await?;
        match reply {
            Some(StableHelloReply::UnknownKey { .. }) => {}
            other => fail!("stable.resume-key: an unknown key was answered with {other:?}, expected UnknownKey"),
        }
        expect_link_end(&mut rx).await
    }
    .await;
    running.conclude(result).await
}

async fn expect_link_end(rx: &mut vox_core::link::LinkRx) -> CaseResult {
    match tokio::time::timeout(crate::peer::PATIENCE, rx.recv()).await {
        Err(_) => fail!("stable.resume-key: the link stayed open after UnknownKey"),
        Ok(Ok(Some(b))) => {
            fail!("stable.resume-key: {} more bytes after UnknownKey, expected the link to close", b.len())
        }
        Ok(Ok(None)) | Ok(Err(_)) => Ok(()),
    }
}

pub async fn session_resume_new_server_session_not_resumed(cmd: SubjectCmd) -> CaseResult {
    let (first, _addr, mut peer, key) = stable_session(&cmd).await?;
    peer.echo(1, "before the restart").await?;
    let last = peer.subject_next - 1;
    // The server goes away (killed: its sessions die with it) and a new
    // process takes over.
    drop(peer);
    drop(first);
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let hello = ClientHello { resume_key: Some(key), last_received: Some(last) };
        let (_tx, mut rx, reply) = stable_hello(addr, hello).await?;
        match reply {
            Some(StableHelloReply::UnknownKey { .. }) => {}
            Some(StableHelloReply::Welcome(_)) => {
                fail!("session.resume: a new server process welcomed a key from before its restart")
            }
            None => fail!("stable.resume-key: the new server closed the link without UnknownKey"),
        }
        expect_link_end(&mut rx).await
    }
    .await;
    running.conclude(result).await
}
