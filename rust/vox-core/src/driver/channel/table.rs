//! The (state x event) transition table, produced by driving real registries.
//!
//! Each row builds a fresh registry, brings one channel into a state through
//! the public API only, applies one event and records the outcome and the
//! state that results. Because it runs the real guards, a change in behaviour
//! shows up as a diff against the checked-in snapshot.

use std::fmt::Write as _;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::{LossCause, Registry, RegistryConfig};
use crate::wire::{ChannelDecl, ChannelDirection, ChannelId, Parity, Payload};

type Setup = fn(&Registry) -> ChannelId;
type Event = fn(&Registry, ChannelId) -> String;

/// Our side allocates odd ids; the peer announces even ones.
fn config() -> RegistryConfig {
    RegistryConfig {
        local_parity: Parity::Odd,
        max_initial_credit: 16,
        max_channels: 16,
        tombstones: 4,
        max_receive_window: 16,
    }
}

fn poll<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    f(&mut cx)
}

fn flush(registry: &Registry) -> Vec<Payload> {
    let mut out = Vec::new();
    let _ = poll(|cx| registry.poll_outbound(cx, &mut out));
    out
}

fn announce(registry: &Registry, direction: ChannelDirection) -> ChannelId {
    let id = ChannelId(2);
    let _ = registry.on_remote_announce(&[ChannelDecl { id, direction, initial_credit: 1 }]);
    id
}

fn outgoing(registry: &Registry, direction: ChannelDirection, credit: u32) -> ChannelId {
    match registry.create_outgoing(direction, credit) {
        Ok(decl) => decl.id,
        Err(_) => ChannelId(0),
    }
}

fn open_send(registry: &Registry) -> ChannelId {
    outgoing(registry, ChannelDirection::CallerToHandler, 1)
}

fn open_recv(registry: &Registry) -> ChannelId {
    outgoing(registry, ChannelDirection::HandlerToCaller, 1)
}

fn open_recv_full(registry: &Registry) -> ChannelId {
    let id = open_recv(registry);
    let _ = registry.on_remote_item(id, Bytes::from_static(b"a"));
    id
}

fn closing_send(registry: &Registry) -> ChannelId {
    let id = open_send(registry);
    let _ = registry.local_close(id);
    id
}

fn closing_reset(registry: &Registry) -> ChannelId {
    let id = open_recv(registry);
    let _ = registry.local_reset(id);
    id
}

fn scenarios() -> Vec<(&'static str, Setup)> {
    vec![
        ("Pending recv", |r| announce(r, ChannelDirection::CallerToHandler)),
        ("Pending recv, early close", |r| {
            let id = announce(r, ChannelDirection::CallerToHandler);
            let _ = r.on_remote_close(id);
            id
        }),
        ("Pending send", |r| announce(r, ChannelDirection::HandlerToCaller)),
        ("Pending send, early reset", |r| {
            let id = announce(r, ChannelDirection::HandlerToCaller);
            let _ = r.on_remote_reset(id);
            id
        }),
        ("Open send, credit 1", open_send),
        ("Open send, credit 0", |r| outgoing(r, ChannelDirection::CallerToHandler, 0)),
        ("Open recv, window 1", open_recv),
        ("Open recv, credit used", open_recv_full),
        ("Closing send, close owed", closing_send),
        ("Closing recv, draining", |r| {
            let id = open_recv_full(r);
            let _ = r.on_remote_close(id);
            id
        }),
        ("Closing recv, reset owed", closing_reset),
        ("Closed send, peer reset", |r| {
            let id = open_send(r);
            let _ = r.on_remote_reset(id);
            id
        }),
        ("Closed recv, peer closed", |r| {
            let id = open_recv(r);
            let _ = r.on_remote_close(id);
            id
        }),
        ("Tombstone send, we closed", |r| {
            let id = closing_send(r);
            flush(r);
            id
        }),
        ("Tombstone send, peer reset", |r| {
            let id = open_send(r);
            let _ = r.on_remote_reset(id);
            let _ = r.spend_credit(id);
            id
        }),
        ("Tombstone recv, peer closed", |r| {
            let id = open_recv(r);
            let _ = r.on_remote_close(id);
            let _ = poll(|cx| r.poll_recv(id, cx));
            id
        }),
        ("Tombstone recv, we reset", |r| {
            let id = closing_reset(r);
            flush(r);
            id
        }),
        ("Forgotten (late) id", |r| {
            // Five ended channels with a window of four tombstones: the first is forgotten.
            let first = closing_send(r);
            for _ in 0..4 {
                closing_send(r);
            }
            flush(r);
            first
        }),
        ("Unknown id", |_| ChannelId(100)),
        ("Connection lost", |r| {
            let id = open_send(r);
            r.on_connection_lost(LossCause::ConnectionClosed);
            id
        }),
    ]
}

fn show<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> String {
    match result {
        Ok(value) => format!("Ok({value:?})"),
        Err(error) => format!("Err({error})"),
    }
}

fn show_poll<T: std::fmt::Debug, E: std::fmt::Display>(result: Poll<Result<T, E>>) -> String {
    match result {
        Poll::Ready(result) => format!("Ready({})", show(result)),
        Poll::Pending => "Pending".to_owned(),
    }
}

fn events() -> Vec<(&'static str, Event)> {
    vec![
        ("announce again", |r, id| {
            let decl = ChannelDecl { id, direction: ChannelDirection::CallerToHandler, initial_credit: 1 };
            show(r.on_remote_announce(&[decl]))
        }),
        ("remote item", |r, id| show(r.on_remote_item(id, Bytes::from_static(b"x")))),
        ("remote close", |r, id| show(r.on_remote_close(id))),
        ("remote reset", |r, id| show(r.on_remote_reset(id))),
        ("remote grant 1", |r, id| show(r.on_remote_grant(id, 1))),
        ("remote grant MAX", |r, id| show(r.on_remote_grant(id, u32::MAX))),
        ("bind", |r, id| show(r.bind(id))),
        ("poll_credit", |r, id| show_poll(poll(|cx| r.poll_credit(id, cx)))),
        ("spend_credit", |r, id| show(r.spend_credit(id))),
        ("refund_credit", |r, id| {
            r.refund_credit(id);
            "()".to_owned()
        }),
        ("local_close", |r, id| show(r.local_close(id))),
        ("sender_dropped", |r, id| {
            r.sender_dropped(id);
            "()".to_owned()
        }),
        ("poll_recv", |r, id| show_poll(poll(|cx| r.poll_recv(id, cx)))),
        ("local_reset", |r, id| show(r.local_reset(id))),
        ("receiver_dropped", |r, id| {
            r.receiver_dropped(id);
            "()".to_owned()
        }),
        ("poll_outbound", |r, _| {
            let kinds: Vec<&str> = flush(r).iter().map(Payload::kind).collect();
            format!("[{}]", kinds.join(", "))
        }),
        ("connection lost", |r, _| {
            r.on_connection_lost(LossCause::ProtocolError {
                fault: crate::plumbing::loss::Fault::Peer,
                description: "test".to_owned(),
            });
            "()".to_owned()
        }),
    ]
}

/// Renders one line per (state, event) pair: the state the channel was
/// driven into, the event, the event's result, and the channel's state
/// afterwards. Deterministic; used by the snapshot test and the ADR.
pub fn transition_table() -> String {
    let mut text = String::from(
        "# Channel transition table, generated by vox_core::driver::channel::transition_table().\n\
         # Our ids are odd, the peer's even; windows/credits are 1; 4 tombstones.\n\
         # state | event | result => state afterwards\n",
    );
    for (state, setup) in scenarios() {
        text.push('\n');
        for (event, apply) in events() {
            let registry = Registry::new(config());
            let id = setup(&registry);
            let result = apply(&registry, id);
            let after = registry.describe(id);
            let _ = writeln!(text, "{state:<28} | {event:<16} | {result} => {after}");
        }
    }
    text
}
