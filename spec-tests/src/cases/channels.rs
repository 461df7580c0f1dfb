//! Channels: items, close, reset, credit, early items, unknown ids, crossing.

use crate::error::CaseResult;
use crate::peer::{Peer, blob, decl, ok_value, request};
use crate::subject::{self, SubjectCmd};
use crate::{ensure, fail};
use vox_core::wire::{ChannelDirection, ChannelId, Message, Metadata, Payload, ResponseBody};

const TO_HANDLER: ChannelDirection = ChannelDirection::CallerToHandler;
const TO_CALLER: ChannelDirection = ChannelDirection::HandlerToCaller;

fn item(id: u64, v: &impl serde::Serialize) -> Payload {
    Payload::ChannelItem { id: ChannelId(id), item: blob(v) }
}

fn close(id: u64) -> Payload {
    Payload::CloseChannel { id: ChannelId(id), metadata: Metadata::new() }
}

/// Receives `generate` output on channel `ch` as the receiver granting
/// `grant` at a time, checking the subject never exceeds its credit.
async fn receive_generated(
    peer: &mut Peer,
    req: u64,
    ch: u64,
    initial: u32,
    grant: u32,
    n: u32,
) -> CaseResult<Vec<i32>> {
    let mut credit = initial;
    let mut got = Vec::new();
    let mut response: Option<ResponseBody> = None;
    let mut closed = false;
    while !closed || response.is_none() {
        if credit == 0 && !closed {
            // Everything the subject sent before our ping is now in; none of
            // it may be an item.
            for m in peer.barrier().await? {
                match m.payload {
                    Payload::ChannelItem { id, .. } if id.0 == ch => {
                        fail!(
                            "rpc.flow-control.credit: the subject sent item {} on channel {ch} with no credit left",
                            got.len()
                        )
                    }
                    Payload::CloseChannel { id, .. } if id.0 == ch => closed = true,
                    Payload::Response { id, ret, .. } if id.0 == req => response = Some(ret),
                    other => fail!("unexpected {other:?}"),
                }
            }
            if closed {
                continue;
            }
            peer.send(0, Payload::GrantCredit { id: ChannelId(ch), additional: grant }).await?;
            credit += grant;
            continue;
        }
        let m = peer.expect("generate items").await?;
        match m.payload {
            Payload::ChannelItem { id, item } if id.0 == ch => {
                ensure!(!closed, "rpc.channel.close: item after CloseChannel");
                ensure!(credit > 0, "rpc.flow-control.credit: item without credit");
                credit -= 1;
                got.push(vox_core::wire::decode::<i32>("item", item.bytes())?);
            }
            Payload::CloseChannel { id, .. } if id.0 == ch => closed = true,
            Payload::Response { id, ret, .. } if id.0 == req => response = Some(ret),
            other => fail!("unexpected {other:?}"),
        }
    }
    ensure!(got.len() as u32 == n || n == u32::MAX, "got {} items, expected {n}", got.len());
    if let Some(r) = response {
        let () = ok_value(&r)?;
    }
    Ok(got)
}

pub async fn rpc_channel_generate_in_order_with_credit(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "generate", &50u32, vec![decl(ch, TO_CALLER, 4)])).await?;
    let got = receive_generated(&mut peer, req, ch, 4, 7, 50).await?;
    ensure!(got == (0..50).collect::<Vec<_>>(), "link.order: items arrived as {got:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_flow_control_zero_initial_credit_waits_for_grant(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "generate", &3u32, vec![decl(ch, TO_CALLER, 0)])).await?;
    let got = receive_generated(&mut peer, req, ch, 0, 3, 3).await?;
    ensure!(got == vec![0, 1, 2], "items {got:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_channel_sum_early_items(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    // The request, all items within the initial credit, and the close, in
    // one burst: they arrive before the handler binds its Rx.
    peer.send(0, request(req, "sum", &(), vec![decl(ch, TO_HANDLER, 16)])).await?;
    for v in 1..=16i32 {
        peer.send(0, item(ch, &v)).await?;
    }
    peer.send(0, close(ch)).await?;
    let total: i64 = ok_value(&peer.response(0, req).await?)?;
    ensure!(total == 136, "rpc.channel.early-items: sum returned {total}, expected 136");
    drop(peer);
    running.finish().await
}

pub async fn rpc_channel_transform_both_directions(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let req = peer.own_id(0);
    let (up, down) = (peer.own_id(0), peer.own_id(1));
    peer.send(0, request(req, "transform", &(), vec![decl(up, TO_HANDLER, 16), decl(down, TO_CALLER, 16)])).await?;
    let words = ["alpha", "beta", "gamma"];
    for w in words {
        peer.send(0, item(up, &w)).await?;
    }
    peer.send(0, close(up)).await?;
    let mut got = Vec::new();
    let mut closed = false;
    let mut done = false;
    while !(closed && done) {
        let m = peer.expect("transform output").await?;
        match m.payload {
            Payload::ChannelItem { id, item } if id.0 == down => {
                got.push(vox_core::wire::decode::<String>("item", item.bytes())?)
            }
            Payload::CloseChannel { id, .. } if id.0 == down => closed = true,
            Payload::Response { id, ret, .. } if id.0 == req => {
                let () = ok_value(&ret)?;
                done = true;
            }
            Payload::GrantCredit { .. } => {}
            other => fail!("unexpected {other:?}"),
        }
    }
    ensure!(got == ["ALPHA", "BETA", "GAMMA"], "transform returned {got:?}");
    drop(peer);
    running.finish().await
}

/// A request whose handler sleeps and never binds its channel: the channel
/// stays announced-but-unbound, whatever the scheduling.
async fn parked_channel(peer: &mut Peer, credit: u32) -> CaseResult<u64> {
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "sleep_ms", &600_000u64, vec![decl(ch, TO_HANDLER, credit)])).await?;
    Ok(ch)
}

pub async fn rpc_flow_control_early_item_beyond_credit_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let ch = parked_channel(&mut peer, 2).await?;
    for v in 0..3i32 {
        peer.send(0, item(ch, &v)).await?;
    }
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_channel_close_item_after_close_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let ch = parked_channel(&mut peer, 8).await?;
    peer.send(0, item(ch, &1i32)).await?;
    peer.send(0, close(ch)).await?;
    peer.send(0, item(ch, &2i32)).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_channel_unknown_id_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let ch = peer.own_id(500);
    peer.send(0, item(ch, &1i32)).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

/// Three ids of the harness's parity on the root, in order: `low` and
/// `high` are announced, `gap` between them never is.
fn window_ids(peer: &Peer) -> (u64, u64, u64) {
    (peer.own_id(0), peer.own_id(1), peer.own_id(2))
}

pub async fn rpc_channel_unknown_id_below_high_water_item_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let req = peer.own_id(0);
    let (low, gap, high) = window_ids(&peer);
    // A parked request announcing `low` and `high`: both stay announced.
    peer.send(0, request(req, "sleep_ms", &600_000u64, vec![decl(low, TO_HANDLER, 4), decl(high, TO_HANDLER, 4)]))
        .await?;
    peer.send(0, item(low, &1i32)).await?;
    peer.send(0, item(high, &2i32)).await?;
    peer.barrier().await?;
    // `gap` is below the highest id announced but was never announced: not
    // a late message for a released id, an unknown one.
    peer.send(0, item(gap, &3i32)).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_channel_unknown_id_below_high_water_grant_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let req = peer.own_id(0);
    let (low, gap, high) = window_ids(&peer);
    // transform(Rx<String>, Tx<String>): the subject receives on `low` and
    // sends on `high`; it runs until `low` is closed.
    peer.send(0, request(req, "transform", &(), vec![decl(low, TO_HANDLER, 4), decl(high, TO_CALLER, 4)])).await?;
    peer.barrier().await?;
    // A grant for `gap`, below the highest id announced, never announced.
    peer.send(0, Payload::GrantCredit { id: ChannelId(gap), additional: 1 }).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_channel_wrong_direction_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    // The handler sends on a Tx channel; an item from the caller is wrong.
    peer.send(0, request(req, "generate", &1_000_000u32, vec![decl(ch, TO_CALLER, 0)])).await?;
    peer.send(0, item(ch, &1i32)).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_channel_allocation_wrong_parity_is_protocol_error(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let req = peer.own_id(0);
    let wrong = peer.subject_parity.first();
    peer.send(0, request(req, "sum", &(), vec![decl(wrong, TO_HANDLER, 4)])).await?;
    peer.expect_protocol_error().await?;
    running.finish().await
}

pub async fn rpc_channel_reset_stops_sender(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "generate", &1_000_000u32, vec![decl(ch, TO_CALLER, 8)])).await?;
    peer.expect_where("a first item", |m| matches!(m.payload, Payload::ChannelItem { .. })).await?;
    peer.send(0, Payload::ResetChannel { id: ChannelId(ch), metadata: Metadata::new() }).await?;
    let mut items = 0;
    loop {
        let m = peer.expect("the generate response after the reset").await?;
        match m.payload {
            Payload::ChannelItem { .. } => items += 1,
            Payload::CloseChannel { .. } => {}
            Payload::Response { id, ret, .. } if id.0 == req => {
                let () = ok_value(&ret)?;
                break;
            }
            other => fail!("unexpected {other:?}"),
        }
    }
    ensure!(items <= 8, "rpc.channel.reset: the subject kept sending ({items} items after the reset)");
    for m in peer.barrier().await? {
        ensure!(!matches!(m.payload, Payload::ChannelItem { .. }), "rpc.channel.reset: items after the response");
    }
    drop(peer);
    running.finish().await
}

/// The receiver resets and then, in the same direction, still grants: no
/// rule forbids it and grants after a channel ended are ignored, so the
/// sender must not call it a protocol error.
pub async fn rpc_channel_crossing_grant_after_own_reset_tolerated(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "generate", &1_000_000u32, vec![decl(ch, TO_CALLER, 2)])).await?;
    peer.expect_where("a first item", |m| matches!(m.payload, Payload::ChannelItem { .. })).await?;
    peer.send(0, Payload::ResetChannel { id: ChannelId(ch), metadata: Metadata::new() }).await?;
    peer.send(0, Payload::GrantCredit { id: ChannelId(ch), additional: 4 }).await?;
    loop {
        let m = peer.expect("the generate response after the reset and grant").await?;
        match m.payload {
            Payload::ChannelItem { .. } | Payload::CloseChannel { .. } => {}
            Payload::Response { id, ret, .. } if id.0 == req => {
                let () = ok_value(&ret)?;
                break;
            }
            Payload::ProtocolError { description } => {
                fail!(
                    "rpc.channel.crossing: a grant after the receiver's own reset was called a violation: {description}"
                )
            }
            other => fail!("unexpected {other:?}"),
        }
    }
    let id = peer.own_id(1);
    peer.send(0, request(id, "echo", "alive", vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "alive", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}

pub async fn rpc_channel_crossing_late_messages_tolerated(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let (req, ch) = (peer.own_id(0), peer.own_id(0));
    peer.send(0, request(req, "generate", &2u32, vec![decl(ch, TO_CALLER, 16)])).await?;
    let got = receive_generated(&mut peer, req, ch, 16, 16, 2).await?;
    ensure!(got == vec![0, 1], "items {got:?}");
    // The channel is over (closed and answered); these are late, not unknown.
    peer.send(0, Payload::GrantCredit { id: ChannelId(ch), additional: 5 }).await?;
    peer.send(0, Payload::ResetChannel { id: ChannelId(ch), metadata: Metadata::new() }).await?;
    let extra: Vec<Message> = peer.barrier().await?;
    ensure!(extra.is_empty(), "rpc.channel.crossing: late messages produced {extra:?}");
    let id = peer.own_id(1);
    peer.send(0, request(id, "echo", "alive", vec![])).await?;
    let s: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(s == "alive", "echo returned {s:?}");
    drop(peer);
    running.finish().await
}
