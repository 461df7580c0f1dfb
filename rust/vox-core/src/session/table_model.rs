//! The connection table against a small, obviously-correct reference model
//! (proptest; `PROPTEST_CASES`, default 1,000). Random sequences of local and
//! peer events, illegal ones included — reused and wrong-parity ids, answers
//! for connections we never opened, closes crossing ours, late messages — are
//! applied to the real [`ConnTable`] the way the run loop applies them, and
//! every verdict is compared with the model's.
//!
//! The model keeps the full history of every id (no bounded window to get
//! wrong) plus the release order; "still remembered" is then simply "among
//! the last `cap` releases".

use super::*;
use crate::driver::ConnectionCore;
use crate::plumbing::outbound;
use crate::wire::ConnectionSettings;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefState {
    PendingOutbound,
    Open,
    Released(Released),
    /// Ended by a teardown or detach (`drain`): no tombstone, the id stays used.
    Drained,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Open,
    PendingOutbound,
    Late,
    Violation,
}

struct Reference {
    parity: Parity,
    cap: usize,
    ids: BTreeMap<u64, RefState>,
    released: Vec<u64>,
    highest_local: u64,
    highest_peer: u64,
    /// Every id the peer opened (ids here stay far inside the table's
    /// exact window, so all of them are remembered).
    peer_opened: std::collections::BTreeSet<u64>,
    late: u64,
}

impl Reference {
    fn live(&self) -> usize {
        self.ids.values().filter(|s| matches!(s, RefState::PendingOutbound | RefState::Open)).count()
    }

    fn remembered(&self, id: u64) -> bool {
        self.released.iter().rev().take(self.cap).any(|r| *r == id)
    }

    fn release(&mut self, id: u64, how: Released) {
        self.ids.insert(id, RefState::Released(how));
        self.released.push(id);
    }

    fn verdict(&mut self, id: u64) -> Verdict {
        match self.ids.get(&id) {
            Some(RefState::Open) => return Verdict::Open,
            Some(RefState::PendingOutbound) => return Verdict::PendingOutbound,
            Some(RefState::Released(how)) if self.remembered(id) => {
                return match how {
                    Released::ByUs => {
                        self.late += 1;
                        Verdict::Late
                    }
                    Released::ByPeer => Verdict::Violation,
                };
            }
            _ => {}
        }
        // rule: rpc.channel.unknown — the peer's ids are known exactly: one
        // it skipped is unknown even below its highest.
        let known =
            if Parity::of(id) == self.parity { id <= self.highest_local } else { self.peer_opened.contains(&id) };
        if known {
            self.late += 1;
            Verdict::Late
        } else {
            Verdict::Violation
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// `open_connection` from a local caller.
    OpenOutbound,
    /// The peer's `OpenConnection`, then our acceptor's decision.
    PeerOpen { id: u64, accept: bool },
    /// The peer's `AcceptConnection` / `RejectConnection`.
    PeerAnswer { id: u64, accept: bool },
    /// `close_connection` or the last caller dropped.
    LocalClose { id: u64 },
    /// The peer's `CloseConnection` (possibly crossing ours).
    PeerClose { id: u64 },
    /// Any other message on the connection.
    Message { id: u64 },
    /// The attachment ends (resume) or the session tears down: `drain`.
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    // The root id 0 included: opens and answers for it are refused, and the
    // run loop gives its other messages to the root core, never the table.
    let id = 0u64..16;
    prop_oneof![
        2 => Just(Op::OpenOutbound),
        2 => (id.clone(), any::<bool>()).prop_map(|(id, accept)| Op::PeerOpen { id, accept }),
        2 => (id.clone(), any::<bool>()).prop_map(|(id, accept)| Op::PeerAnswer { id, accept }),
        2 => id.clone().prop_map(|id| Op::LocalClose { id }),
        2 => id.clone().prop_map(|id| Op::PeerClose { id }),
        3 => id.prop_map(|id| Op::Message { id }),
        1 => Just(Op::Drain),
    ]
}

fn core(id: ConnectionId, parity: Parity, out: &outbound::Outbound) -> Arc<ConnectionCore> {
    let settings = ConnectionSettings::default();
    ConnectionCore::new(
        id,
        parity,
        settings.clone(),
        settings,
        out.clone(),
        None,
        crate::driver::channel::ChannelLimits { max_channels: 4, max_receive_window: 16 },
        None,
    )
}

fn judge(lookup: Lookup<'_>) -> Verdict {
    match lookup {
        Lookup::Open(_) => Verdict::Open,
        Lookup::PendingOutbound => Verdict::PendingOutbound,
        Lookup::Late => Verdict::Late,
        Lookup::Violation(_) => Verdict::Violation,
    }
}

fn run(parity: Parity, cap: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (out, _rx) = outbound::detached(4);
    let mut table = ConnTable::new(parity, cap);
    let mut model = Reference {
        parity,
        cap,
        ids: BTreeMap::new(),
        released: Vec::new(),
        highest_local: 0,
        highest_peer: 0,
        peer_opened: std::collections::BTreeSet::new(),
        late: 0,
    };
    let mut replies = Vec::new();
    for op in ops {
        match op {
            Op::OpenOutbound => {
                let (reply, rx) = oneshot::channel();
                replies.push(rx);
                let Ok((id, conn_parity)) = table.open_outbound(ConnectionSettings::default(), reply) else {
                    return Err(TestCaseError::fail("id space exhausted in a short run"));
                };
                // rule connection.parity: ours, increasing, never the root.
                prop_assert_eq!(id.0, model.highest_local + if model.highest_local == 0 { parity.first() } else { 2 });
                prop_assert_eq!(conn_parity, parity);
                model.highest_local = id.0;
                model.ids.insert(id.0, RefState::PendingOutbound);
            }
            Op::PeerOpen { id, accept } => {
                // rule: connection.root — never an open for id 0.
                let legal = id != 0 && Parity::of(id) != parity && id > model.highest_peer;
                let got = table.check_inbound_open(ConnectionId(id));
                prop_assert_eq!(got.is_ok(), legal, "inbound open {}: {:?}", id, got);
                if legal {
                    model.highest_peer = id;
                    model.peer_opened.insert(id);
                    if accept {
                        prop_assert!(table.insert_open(ConnectionId(id), core(ConnectionId(id), parity, &out)).is_ok());
                        model.ids.insert(id, RefState::Open);
                    } else {
                        table.reject_inbound(ConnectionId(id));
                        model.release(id, Released::ByPeer);
                    }
                }
            }
            Op::PeerAnswer { id, accept } => {
                let legal = model.ids.get(&id) == Some(&RefState::PendingOutbound);
                // The run loop's order for an accept: check, make the core, apply.
                let got = if accept {
                    match table.pending(ConnectionId(id), ConnEvent::PeerAccepted) {
                        Ok((_, conn_parity)) => {
                            prop_assert_eq!(conn_parity, parity);
                            table.accept_outbound(ConnectionId(id), core(ConnectionId(id), conn_parity, &out))
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    table.reject_outbound(ConnectionId(id))
                };
                prop_assert_eq!(got.is_ok(), legal, "answer for {}", id);
                if legal {
                    if accept {
                        model.ids.insert(id, RefState::Open);
                    } else {
                        model.release(id, Released::ByPeer);
                    }
                }
            }
            Op::LocalClose { id } => {
                let legal = model.ids.get(&id) == Some(&RefState::Open);
                let got = table.release(ConnectionId(id), Released::ByUs);
                prop_assert_eq!(got.is_some(), legal, "local close of {}", id);
                if legal {
                    model.release(id, Released::ByUs);
                }
            }
            // rule: connection.root — the run loop hands the root's messages
            // to the root core (a `CloseConnection` for it is a violation
            // there); the table is not asked.
            Op::PeerClose { id: 0 } | Op::Message { id: 0 } => {}
            Op::PeerClose { id } => {
                // The run loop's order: release, else a crossing close, else judge.
                if model.ids.get(&id) == Some(&RefState::Open) {
                    prop_assert!(table.release(ConnectionId(id), Released::ByPeer).is_some());
                    model.release(id, Released::ByPeer);
                } else {
                    prop_assert!(table.release(ConnectionId(id), Released::ByPeer).is_none());
                    let crossing =
                        model.remembered(id) && model.ids.get(&id) == Some(&RefState::Released(Released::ByUs));
                    prop_assert_eq!(table.released_by_us(ConnectionId(id)), crossing, "crossing close of {}", id);
                    if crossing {
                        table.mark_peer_closed(ConnectionId(id));
                        model.ids.insert(id, RefState::Released(Released::ByPeer));
                    } else {
                        let expected = model.verdict(id);
                        prop_assert_eq!(judge(table.lookup(ConnectionId(id))), expected, "close of {}", id);
                    }
                }
            }
            Op::Message { id } => {
                let expected = model.verdict(id);
                prop_assert_eq!(judge(table.lookup(ConnectionId(id))), expected, "message on {}", id);
            }
            Op::Drain => {
                // Everything live comes out, exactly once: the open cores and
                // the pending opens (whose openers the run loop then answers).
                let mut drained: Vec<(bool, u64)> = table
                    .drain()
                    .into_iter()
                    .map(|entry| match entry {
                        ConnEntry::Open { core } => (true, core.id().0),
                        ConnEntry::PendingOutbound { .. } => (false, u64::MAX),
                    })
                    .collect();
                drained.sort_unstable();
                let mut want: Vec<(bool, u64)> = model
                    .ids
                    .iter()
                    .filter_map(|(id, state)| match state {
                        RefState::Open => Some((true, *id)),
                        RefState::PendingOutbound => Some((false, u64::MAX)),
                        _ => None,
                    })
                    .collect();
                want.sort_unstable();
                prop_assert_eq!(drained, want, "drain hands over every live entry");
                for state in model.ids.values_mut() {
                    if matches!(state, RefState::Open | RefState::PendingOutbound) {
                        *state = RefState::Drained;
                    }
                }
            }
        }
        // Invariants after every step.
        prop_assert_eq!(table.len(), model.live());
        prop_assert_eq!(table.open_count(), model.live(), "pending opens count as open connections");
        let mut cores: Vec<u64> = table.open_cores().iter().map(|core| core.id().0).collect();
        cores.sort_unstable();
        let open: Vec<u64> =
            model.ids.iter().filter(|(_, state)| **state == RefState::Open).map(|(id, _)| *id).collect();
        prop_assert_eq!(cores, open, "open_cores is exactly the open connections");
        prop_assert_eq!(table.late_messages, model.late);
        prop_assert!(table.tombstones.len() <= cap, "tombstones stay within their bound");
    }
    Ok(())
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES overrides the default 1,000 (see `.ci/proofs`).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// Rules connection.open, connection.parity, connection.close and
    /// connection.close.crossing: the table's verdicts equal the model's.
    #[test]
    fn connection_table_matches_reference_model(
        odd in any::<bool>(),
        cap in 0usize..5,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(if odd { Parity::Odd } else { Parity::Even }, cap, ops)?;
    }
}

/// Rules connection.open, connection.close, connection.close.crossing: the
/// connection state machine, every (state, event) pair against the
/// transitions the rules allow; any other pair is a `PhaseError` naming both.
#[test]
fn connection_state_machine_allows_exactly_the_rule_transitions() {
    use ConnEvent::*;
    use ConnState::*;
    let states = [None, Some(PendingOutbound), Some(Open), Some(ClosedByUs), Some(ClosedByPeer)];
    let events = [LocalOpen, PeerAccepted, PeerRejected, WeAccepted, WeRejected, LocalClose, PeerClosed];
    for state in states {
        for event in events {
            let allowed = match (state, event) {
                (None, LocalOpen) => Some(PendingOutbound),
                (None, WeAccepted) | (Some(PendingOutbound), PeerAccepted) => Some(Open),
                (None, WeRejected) | (Some(PendingOutbound), PeerRejected) => Some(ClosedByPeer),
                (Some(Open), LocalClose) => Some(ClosedByUs),
                (Some(Open) | Some(ClosedByUs), PeerClosed) => Some(ClosedByPeer),
                _ => None,
            };
            let got = ConnState::next(state, event);
            match allowed {
                Some(to) => assert_eq!(got, Ok(to), "{state:?} + {event:?}"),
                None => {
                    let error = got.expect_err("illegal transition");
                    let from = state.map_or("Unknown".to_owned(), |s| format!("{s:?}"));
                    assert_eq!((error.from, error.event), (from.as_str(), format!("{event:?}").as_str()));
                    assert_eq!(error.to_string(), format!("illegal transition: {event:?} in phase {from}"));
                }
            }
        }
    }
}

/// Only a pending or open connection is live (it counts against the limit
/// and a teardown must end it); a released one is a tombstone.
#[test]
fn connection_state_live_exactly_while_pending_or_open() {
    use ConnState::*;
    for (state, live) in [(PendingOutbound, true), (Open, true), (ClosedByUs, false), (ClosedByPeer, false)] {
        assert_eq!(state.is_live(), live, "{state:?}");
    }
}

/// The table's one transition refuses to make a connection live without
/// the entry that owns it (a caller bug), and leaves the table as it was:
/// no tombstone in a live state, the id still free to open.
#[test]
fn connection_table_live_state_needs_its_entry() {
    let mut table = ConnTable::new(Parity::Odd, 4);
    let id = ConnectionId(2);
    for event in [ConnEvent::WeAccepted, ConnEvent::LocalOpen] {
        let Err(refused) = table.apply(id, event, None) else { panic!("{event:?}: a live state without its entry") };
        assert_eq!(refused.event, "an entry not of the new state");
        assert_eq!(table.state(id), None, "{event:?} left the table unchanged");
        assert_eq!(table.len(), 0);
    }
}

/// The table's one transition stores an entry only in the state it stands
/// for: an open core handed over for a pending open is refused, and the
/// table is left as it was.
#[tokio::test]
async fn connection_table_entry_must_match_the_new_state() {
    let (out, _rx) = outbound::detached(4);
    let mut table = ConnTable::new(Parity::Odd, 4);
    let id = ConnectionId(3);
    let wrong = ConnEntry::Open { core: core(id, Parity::Odd, &out) };
    let Err(refused) = table.apply(id, ConnEvent::LocalOpen, Some(wrong)) else {
        panic!("a pending open stored with an open core");
    };
    assert_eq!(refused.event, "an entry not of the new state");
    assert_eq!((table.state(id), table.len()), (None, 0));
}

/// An answer for a connection that is already open names its state, not
/// "which we did not open" (the text reaches the peer's ProtocolError).
#[tokio::test]
async fn connection_table_answer_for_an_open_connection_names_its_state() {
    let (out, _rx) = outbound::detached(4);
    let mut table = ConnTable::new(Parity::Odd, 4);
    let (reply, _answer) = oneshot::channel();
    let Ok((id, parity)) = table.open_outbound(ConnectionSettings::default(), reply) else { panic!("open") };
    assert!(table.pending(id, ConnEvent::PeerAccepted).is_ok());
    assert!(table.accept_outbound(id, core(id, parity, &out)).is_ok());
    let again = table.pending(id, ConnEvent::PeerAccepted).expect_err("already open");
    assert!(again.contains("in state Open"), "{again}");
    let never = table.pending(ConnectionId(99), ConnEvent::PeerAccepted).expect_err("never opened");
    assert!(never.contains("which we did not open"), "{never}");
}
