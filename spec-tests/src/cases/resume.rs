//! Session resume on a replacement bare conduit (rule `session.resume`) and
//! the retry of channel-bearing calls across it (PROTOCOL.md section 10),
//! with the subject listening and the harness initiating over raw links.
//!
//! A resumable session: the harness lists `SESSION_RESUME_FEATURE` in its
//! `Hello` and the subject issues a key in `HelloYourself`. The harness
//! breaks the conduit by dropping the TCP connection and resumes on a new
//! one with `Hello { resume_key: Some(key) }`. Whatever was in flight on the
//! old attachment is gone on both sides, so the harness never reuses a
//! request or channel id across the break.

use crate::error::CaseResult;
use crate::peer::{HelloAnswer, Peer, blob, decl, hello_msg, mid, ok_value, op_id_metadata, request};
use crate::subject::{self, Running, SubjectCmd};
use crate::{ensure, fail};
use bytes::Bytes;
use std::net::SocketAddr;
use vox_core::wire::{
    Blob, ChannelDirection, ChannelId, Message, Parity, Payload, ResponseBody, ResumeKey, SESSION_RESUME_FEATURE,
};

/// The harness's session parity in these cases.
const PARITY: Parity = Parity::Odd;

/// The length of the items of `generate_retry_*` in these cases.
const N: u32 = 10;

/// The initial credit of every channel in these cases: the old attempt
/// blocks after two items.
const CREDIT: u32 = 2;

/// A listening subject and a new resumable session with it over a bare
/// conduit; returns the subject, its address, the peer and the key.
async fn resumable_session(cmd: &SubjectCmd) -> CaseResult<(Running, SocketAddr, Peer, ResumeKey)> {
    let (running, addr) = subject::listen(cmd).await?;
    let mut peer = Peer::new(subject::dial(addr).await?);
    let key = match peer.bare_hello(hello_msg(PARITY, &[SESSION_RESUME_FEATURE], None)).await? {
        HelloAnswer::Yourself(hy) => match hy.resume_key {
            Some(k) => k,
            None => fail!("session.resume: a Hello listing {SESSION_RESUME_FEATURE} got no resume key"),
        },
        other => fail!("session.handshake: a new resumable session was answered with {other:?}"),
    };
    ensure!(key.0.len() >= 16, "session.resume: the resume key has {} bytes, fewer than 16", key.0.len());
    peer.lets_go().await?;
    Ok((running, addr, peer, key))
}

/// Binds a new bare conduit to the session of `key`: the subject must
/// answer `HelloYourself` repeating the key; the harness then says LetsGo.
async fn resume(addr: SocketAddr, key: &ResumeKey) -> CaseResult<Peer> {
    let mut peer = Peer::new(subject::dial(addr).await?);
    match peer.bare_hello(hello_msg(PARITY, &[SESSION_RESUME_FEATURE], Some(key.clone()))).await? {
        HelloAnswer::Yourself(hy) => ensure!(
            hy.resume_key.as_ref() == Some(key),
            "session.resume: resuming was answered with key {:?}, not the session's key (a new session?)",
            hy.resume_key
        ),
        other => fail!("session.resume: resuming with the session's live key was answered with {other:?}"),
    }
    peer.lets_go().await?;
    Ok(peer)
}

/// Calls `echo(text)` on the root as the harness's `n`-th request id.
async fn echo(peer: &mut Peer, n: u64, text: &str) -> CaseResult {
    let id = peer.own_id(n);
    peer.send(0, request(id, "echo", text, vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == text, "echo({text:?}) returned {s:?}");
    Ok(())
}

/// An attempt of `method(N, out)` as request `req` with operation id `op`
/// and `out` on channel `ch` (initial credit [`CREDIT`]).
fn attempt(method: &str, req: u64, ch: u64, op: u64) -> Payload {
    Payload::Request {
        id: vox_core::wire::RequestId(req),
        method_id: mid(method),
        args: blob(&N),
        channels: vec![decl(ch, ChannelDirection::HandlerToCaller, CREDIT)],
        metadata: op_id_metadata(op),
    }
}

/// The first attempt: starts `method` with operation id `op` and reads the
/// first [`CREDIT`] items (the generator then waits for credit). Returns the
/// old request and channel ids.
async fn first_attempt(peer: &mut Peer, method: &str, op: u64) -> CaseResult<(u64, u64)> {
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, attempt(method, req, ch, op)).await?;
    let mut got = 0i32;
    while got < CREDIT as i32 {
        let m = peer.expect("the first items of the first attempt").await?;
        match m.payload {
            Payload::ChannelItem { id, item } if id.0 == ch => {
                let v: i32 = vox_core::wire::decode("item", item.bytes())?;
                ensure!(v == got, "rpc.channel.item: item {got} of the first attempt is {v}");
                got += 1;
            }
            Payload::ProtocolError { description } => {
                fail!("the subject sent ProtocolError({description:?}) during the first attempt")
            }
            other => fail!("unexpected {other:?} during the first attempt"),
        }
    }
    Ok((req, ch))
}

/// Fails on anything the new attachment carries for the old attempt.
fn check_not_old(m: &Message, old_req: u64, old_ch: u64) -> CaseResult {
    match &m.payload {
        Payload::ChannelItem { id, .. }
        | Payload::CloseChannel { id, .. }
        | Payload::ResetChannel { id, .. }
        | Payload::GrantCredit { id, .. }
            if id.0 == old_ch =>
        {
            fail!(
                "retry.channel.disconnect.closes: after the resume the subject sent {:?} on channel {old_ch} of the \
                 broken attachment",
                m.payload
            )
        }
        Payload::Response { id, .. } if id.0 == old_req => {
            fail!("session.resume: the subject answered request {old_req} of the broken attachment after the resume")
        }
        Payload::ProtocolError { description } => {
            fail!("the subject sent ProtocolError({description:?}) after the resume")
        }
        _ => Ok(()),
    }
}

/// The common part of the channel-retry cases, on a new resumable session:
/// the first attempt of `method` with two items read, the break (TCP
/// dropped), the resume, and the retry with the same op id and args on a
/// fresh request id and a fresh channel id. Returns the resumed peer and
/// the old and new (request, channel) ids.
async fn break_and_retry(
    mut peer: Peer,
    addr: SocketAddr,
    key: &ResumeKey,
    method: &str,
) -> CaseResult<(Peer, (u64, u64), (u64, u64))> {
    let op = 0x0b5e_55ed;
    let old = first_attempt(&mut peer, method, op).await?;
    // The break: the TCP connection goes away mid-stream, no goodbye.
    drop(peer);
    let mut peer = resume(addr, key).await?;
    let new = (peer.own_id(1), peer.own_id(1));
    peer.send(0, attempt(method, new.0, new.1, op)).await?;
    Ok((peer, old, new))
}

/// Ends a case on a resumable session: while the harness still holds the
/// session's link, the subject must be alive; it is then killed (it would
/// otherwise keep the session for its recovery timeout).
async fn end_alive(running: Running, result: CaseResult<Peer>) -> CaseResult {
    match result {
        Ok(peer) => {
            let r = running.stop_alive().await;
            drop(peer);
            r
        }
        Err(e) => running.conclude_alive(Err(e)).await,
    }
}

pub async fn channel_retry_non_idem_fails_closed(cmd: SubjectCmd) -> CaseResult {
    let (running, addr, peer, key) = resumable_session(&cmd).await?;
    let result = async {
        let (mut peer, (old_req, old_ch), (req, ch)) =
            break_and_retry(peer, addr, &key, "generate_retry_non_idem").await?;
        let no_item = |m: &Message| -> CaseResult {
            check_not_old(m, old_req, old_ch)?;
            if let Payload::ChannelItem { id, .. } = &m.payload
                && id.0 == ch
            {
                fail!(
                    "retry.channel.recovery.non-idem: the retry of an ambiguous non-idem call ran again: an item on \
                     its fresh channel {ch}"
                );
            }
            Ok(())
        };
        let ret = loop {
            let m = peer.expect("the response to the non-idem retry").await?;
            no_item(&m)?;
            match m.payload {
                Payload::Response { id, ret, .. } if id.0 == req => break ret,
                // The fresh channel may be closed or reset; nothing else.
                Payload::CloseChannel { id, .. } | Payload::ResetChannel { id, .. } if id.0 == ch => {}
                Payload::Ping { .. } | Payload::Pong { .. } => {}
                other => fail!("unexpected {other:?} while waiting for the response to the non-idem retry"),
            }
        };
        ensure!(
            ret == ResponseBody::Indeterminate,
            "retry.channel.recovery.non-idem: the retry of an ambiguous non-idem call with channels was answered \
             {ret:?}, expected Indeterminate"
        );
        for m in peer.barrier().await? {
            no_item(&m)?;
        }
        // The session still serves.
        echo(&mut peer, 2, "after indeterminate").await?;
        Ok(peer)
    }
    .await;
    end_alive(running, result).await
}

pub async fn channel_retry_idem_reruns_with_fresh_channels(cmd: SubjectCmd) -> CaseResult {
    let (running, addr, peer, key) = resumable_session(&cmd).await?;
    let result = async {
        let (mut peer, (old_req, old_ch), (req, ch)) = break_and_retry(peer, addr, &key, "generate_retry_idem").await?;
        let got = receive_rerun(&mut peer, (old_req, old_ch), (req, ch)).await?;
        let want: Vec<i32> = (0..N as i32).collect();
        ensure!(
            got == want,
            "retry.channel.volatile.rebinding: the re-run sent {got:?} on its fresh channel, expected {want:?} (from 0)"
        );
        if let Some(m) = peer.barrier().await?.first() {
            check_not_old(m, old_req, old_ch)?;
            fail!("retry.channel.volatile.rebinding: {:?} after the re-run completed", m.payload);
        }
        echo(&mut peer, 2, "after the re-run").await?;
        Ok(peer)
    }
    .await;
    end_alive(running, result).await
}

/// Receives the re-run of the idem retry on its fresh channel `ch`: items
/// within the fresh declaration's credit (granting [`CREDIT`] more whenever
/// it runs out), `CloseChannel`, and an `Ok` response to `req`. Anything of
/// the old attempt, or any other answer, fails at once.
async fn receive_rerun(peer: &mut Peer, (old_req, old_ch): (u64, u64), (req, ch): (u64, u64)) -> CaseResult<Vec<i32>> {
    const RULE: &str = "retry.channel.volatile.rebinding";
    let mut credit = CREDIT;
    let mut got = Vec::new();
    let (mut closed, mut answered) = (false, false);
    while !closed || !answered {
        let batch = if credit == 0 && !closed {
            // Everything the subject sent before our ping is now in; an
            // item among it was sent without credit.
            let before = peer.barrier().await?;
            if !before.iter().any(|m| matches!(&m.payload, Payload::CloseChannel { id, .. } if id.0 == ch)) {
                peer.send(0, Payload::GrantCredit { id: ChannelId(ch), additional: CREDIT }).await?;
            }
            before
        } else {
            vec![peer.expect("the re-run's items, close and response").await?]
        };
        let granted = credit == 0 && !closed;
        for m in batch {
            check_not_old(&m, old_req, old_ch)?;
            match m.payload {
                Payload::ChannelItem { id, item } if id.0 == ch => {
                    ensure!(!closed, "rpc.channel.close: an item after CloseChannel on the re-run's channel");
                    ensure!(
                        credit > 0,
                        "{RULE}: the re-run sent item {} on its fresh channel without credit (credit carried over?)",
                        got.len()
                    );
                    credit -= 1;
                    got.push(vox_core::wire::decode::<i32>("item", item.bytes())?);
                }
                Payload::CloseChannel { id, .. } if id.0 == ch => closed = true,
                Payload::Response { id, ret, .. } if id.0 == req => match ret {
                    ResponseBody::Ok(_) => {
                        let () = ok_value(&ret)?;
                        answered = true;
                    }
                    other => {
                        fail!("{RULE}: the retry of an idem call with channels was answered {other:?}, not re-run")
                    }
                },
                other => fail!("{RULE}: unexpected {other:?} during the re-run"),
            }
        }
        if granted && !closed {
            credit += CREDIT;
        }
    }
    Ok(got)
}

/// 32 bytes the subject never issued (drawn fresh for each run).
fn random_key() -> ResumeKey {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut key = Vec::with_capacity(32);
    for i in 0..4u64 {
        let mut h = state.build_hasher();
        h.write_u64(i);
        h.write_u128(nanos);
        key.extend_from_slice(&h.finish().to_le_bytes());
    }
    ResumeKey(Blob::new(Bytes::from(key)))
}

pub async fn session_resume_unknown_key_is_refused(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let mut peer = Peer::new(subject::dial(addr).await?);
        match peer.bare_hello(hello_msg(PARITY, &[SESSION_RESUME_FEATURE], Some(random_key()))).await? {
            HelloAnswer::Sorry(_) => {}
            HelloAnswer::Yourself(hy) => fail!(
                "session.resume: an unknown resume key was answered with HelloYourself (key {:?}), expected Sorry",
                hy.resume_key
            ),
            HelloAnswer::Closed => fail!("session.resume: an unknown resume key: link closed without Sorry"),
        }
        peer.expect_closed("the link to close after Sorry for an unknown resume key").await
    }
    .await;
    // The refused link was the subject's first: it may exit (0) or keep
    // listening; either way it must not have crashed.
    running.conclude_stopped(result).await
}

pub async fn session_resume_without_feature_has_no_key(cmd: SubjectCmd) -> CaseResult {
    let (running, addr) = subject::listen(&cmd).await?;
    let result = async {
        let mut peer = Peer::new(subject::dial(addr).await?);
        match peer.bare_hello(hello_msg(PARITY, &[], None)).await? {
            HelloAnswer::Yourself(hy) => ensure!(
                hy.resume_key.is_none(),
                "session.resume: a Hello without {SESSION_RESUME_FEATURE} got resume key {:?}",
                hy.resume_key
            ),
            other => fail!("session.handshake: a plain Hello was answered with {other:?}"),
        }
        peer.lets_go().await?;
        echo(&mut peer, 0, "not resumable").await
        // Dropping the link ends this session: nothing to recover.
    }
    .await;
    running.conclude(result).await
}

pub async fn session_resume_while_old_link_still_open(cmd: SubjectCmd) -> CaseResult {
    let (running, addr, mut old, key) = resumable_session(&cmd).await?;
    let result = async {
        echo(&mut old, 0, "before").await?;
        // In flight on the old attachment: gone with it.
        let parked = old.own_id(1);
        old.send(0, request(parked, "sleep_ms", &600_000u64, vec![])).await?;
        // The round trip makes sure the subject has the parked request.
        if let Some(m) = old.barrier().await?.first() {
            fail!("unexpected {:?} before the resume", m.payload);
        }
        // The resume arrives while the old link is still up: the subject
        // has not seen the old attachment die.
        let mut peer = resume(addr, &key).await?;
        echo(&mut peer, 2, "resumed while the old link is open").await?;
        // Now the old link ends; the resumed session must not end with it.
        drop(old);
        for m in peer.barrier().await? {
            check_not_old(&m, parked, u64::MAX)?;
        }
        echo(&mut peer, 3, "after the old link closed").await?;
        for m in peer.barrier().await? {
            check_not_old(&m, parked, u64::MAX)?;
        }
        Ok(peer)
    }
    .await;
    match result {
        Ok(peer) => {
            let r = running.stop_alive().await;
            drop(peer);
            r
        }
        Err(e) => running.conclude_alive(Err(e)).await,
    }
}
