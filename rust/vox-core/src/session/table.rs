//! The session's connection table (rule `connection.*`): which virtual
//! connections exist, in which state, and how to judge a message for an id
//! that is gone without keeping unbounded state.
//!
//! Every id the table knows has one [`ConnState`], and every change goes
//! through [`ConnTable::apply`], which checks it against the state machine
//! ([`ConnState::next`]) before storing the result: no caller edits the
//! storage directly, so the table cannot reach a state the rules forbid.

use super::phase::{ConnEvent, ConnState, PhaseError};
use super::{ConnectionHandle, SessionError};
use crate::driver::ConnectionCore;
use crate::id_window::{IdWindow, Seen};
use crate::wire::{ConnectionId, ConnectionSettings, IdAllocator, Parity};
use crate::wire::{IdMap, id_map};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::oneshot;

pub(crate) type OpenReply = oneshot::Sender<Result<ConnectionHandle, SessionError>>;

/// A live connection and what its state owns.
pub(crate) enum ConnEntry {
    PendingOutbound { reply: OpenReply, settings: ConnectionSettings, parity: Parity },
    Open { core: Arc<ConnectionCore> },
}

impl ConnEntry {
    fn state(&self) -> ConnState {
        match self {
            ConnEntry::PendingOutbound { .. } => ConnState::PendingOutbound,
            ConnEntry::Open { .. } => ConnState::Open,
        }
    }
}

/// Who released a connection ([`ConnTable::release`]); it decides how the
/// peer's late messages are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// We closed it: the peer's messages may still cross (discarded).
    ByUs,
    /// The peer closed it, or one side rejected it: any further message is
    /// a violation.
    ByPeer,
}

/// What to do with a message for a connection id.
pub(crate) enum Lookup<'a> {
    Open(&'a Arc<ConnectionCore>),
    PendingOutbound,
    /// Crossed our close, or too old to judge: discard and count.
    Late,
    /// The peer closed or rejected it, or it never existed.
    Violation(String),
}

pub(crate) struct ConnTable {
    entries: IdMap<ConnectionId, ConnEntry>,
    /// Released connections and the state each ended in, oldest first: enough
    /// to judge messages that cross a close, bounded by `tombstone_cap`
    /// whatever the peer does.
    tombstones: VecDeque<(ConnectionId, ConnState)>,
    tombstone_cap: usize,
    local_parity: Parity,
    alloc: IdAllocator,
    highest_local: u64,
    /// The ids the peer opened, exactly for the most recent ones (rules
    /// `connection.close.crossing`, `rpc.channel.unknown`).
    peer_ids: IdWindow,
    pub(crate) late_messages: u64,
}

impl ConnTable {
    pub(crate) fn new(local_parity: Parity, tombstone_cap: usize) -> Self {
        ConnTable {
            entries: id_map(),
            tombstones: VecDeque::new(),
            tombstone_cap,
            local_parity,
            alloc: IdAllocator::new(local_parity),
            highest_local: 0,
            peer_ids: IdWindow::default(),
            late_messages: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn open_count(&self) -> usize {
        self.entries.len()
    }

    /// `None`: never held, or released longer ago than the tombstones
    /// remember, or ended with the attachment ([`drain`](Self::drain)).
    fn state(&self, id: ConnectionId) -> Option<ConnState> {
        match self.entries.get(&id) {
            Some(entry) => Some(entry.state()),
            None => self.tombstones.iter().rev().find(|(t, _)| *t == id).map(|(_, state)| *state),
        }
    }

    /// The one place a connection changes state: `event` is checked against
    /// the state machine, then the new state is stored, with `entry` when it
    /// is live. Returns what the previous state owned.
    fn apply(
        &mut self,
        id: ConnectionId,
        event: ConnEvent,
        entry: Option<ConnEntry>,
    ) -> Result<Option<ConnEntry>, PhaseError> {
        let from = self.state(id);
        let to = ConnState::next(from, event)?;
        match entry {
            Some(entry) if entry.state() == to => Ok(self.entries.insert(id, entry)),
            None if !to.is_live() => {
                let previous = self.entries.remove(&id);
                match self.tombstones.iter_mut().rev().find(|(t, _)| *t == id) {
                    // Still released (a crossing close): same place in the order.
                    Some(tombstone) => tombstone.1 = to,
                    None => self.bury(id, to),
                }
                Ok(previous)
            }
            // A caller handing over the wrong payload is a bug here, not
            // the peer's doing: refuse it without touching the table.
            _ => Err(PhaseError { from: ConnState::name(from), event: "an entry not of the new state" }),
        }
    }

    fn bury(&mut self, id: ConnectionId, state: ConnState) {
        if self.tombstone_cap == 0 {
            return;
        }
        if self.tombstones.len() == self.tombstone_cap {
            self.tombstones.pop_front();
        }
        self.tombstones.push_back((id, state));
    }

    /// Allocates an id and records a pending outbound open.
    pub(crate) fn open_outbound(
        &mut self,
        settings: ConnectionSettings,
        reply: OpenReply,
    ) -> Result<(ConnectionId, Parity), (OpenReply, SessionError)> {
        let Some(raw) = self.alloc.allocate() else {
            return Err((reply, SessionError::IdSpaceExhausted));
        };
        let id = ConnectionId(raw);
        self.highest_local = raw;
        // The opener picks the connection parity; we use our session parity.
        let parity = self.local_parity;
        // Ids are allocated once, so the id is new and this cannot fail.
        let opened = self.apply(id, ConnEvent::LocalOpen, Some(ConnEntry::PendingOutbound { reply, settings, parity }));
        debug_assert!(opened.is_ok());
        Ok((id, parity))
    }

    /// Validates an inbound `OpenConnection` id (rule `connection.open`).
    pub(crate) fn check_inbound_open(&mut self, id: ConnectionId) -> Result<(), String> {
        if id.is_root() {
            return Err("OpenConnection on the root connection id 0".into());
        }
        if id.parity() == self.local_parity {
            return Err(format!("OpenConnection with id {id} of the acceptor's parity"));
        }
        if self.peer_ids.highest().is_some_and(|h| id.0 <= h) {
            return Err(format!("OpenConnection reuses connection id {id} (ids only increase)"));
        }
        self.peer_ids.insert(id.0);
        Ok(())
    }

    /// Our acceptor accepted the peer's open of `id` (checked by
    /// [`check_inbound_open`](Self::check_inbound_open)).
    pub(crate) fn insert_open(&mut self, id: ConnectionId, core: Arc<ConnectionCore>) -> Result<(), PhaseError> {
        self.apply(id, ConnEvent::WeAccepted, Some(ConnEntry::Open { core })).map(drop)
    }

    /// Our acceptor rejected the peer's open of `id` (checked by
    /// [`check_inbound_open`](Self::check_inbound_open)).
    pub(crate) fn reject_inbound(&mut self, id: ConnectionId) {
        let rejected = self.apply(id, ConnEvent::WeRejected, None);
        debug_assert!(rejected.is_ok());
    }

    /// Whether the peer may answer `event` (`AcceptConnection` or
    /// `RejectConnection`) for `id`: only for an open of ours it has not
    /// answered yet. Gives our settings and parity for it, which its core is
    /// made with.
    pub(crate) fn pending(&self, id: ConnectionId, event: ConnEvent) -> Result<(ConnectionSettings, Parity), String> {
        match self.entries.get(&id) {
            Some(ConnEntry::PendingOutbound { settings, parity, .. }) => Ok((settings.clone(), *parity)),
            Some(entry) => Err(format!("{event:?} for connection {id} in state {:?}", entry.state())),
            _ => Err(format!("{event:?} for connection {id}, which we did not open")),
        }
    }

    /// `AcceptConnection` for `id` (see [`pending`](Self::pending)): the
    /// connection is open, served by `core`. Returns the opener's reply.
    pub(crate) fn accept_outbound(&mut self, id: ConnectionId, core: Arc<ConnectionCore>) -> Result<OpenReply, String> {
        self.answer(id, ConnEvent::PeerAccepted, Some(ConnEntry::Open { core }))
    }

    /// `RejectConnection` for `id`. Returns the opener's reply.
    pub(crate) fn reject_outbound(&mut self, id: ConnectionId) -> Result<OpenReply, String> {
        self.answer(id, ConnEvent::PeerRejected, None)
    }

    fn answer(&mut self, id: ConnectionId, event: ConnEvent, entry: Option<ConnEntry>) -> Result<OpenReply, String> {
        self.pending(id, event)?;
        match self.apply(id, event, entry) {
            Ok(Some(ConnEntry::PendingOutbound { reply, .. })) => Ok(reply),
            Ok(_) => Err(format!("connection {id} is not pending")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Removes an open connection, recording who released it.
    pub(crate) fn release(&mut self, id: ConnectionId, how: Released) -> Option<Arc<ConnectionCore>> {
        if self.state(id) != Some(ConnState::Open) {
            return None;
        }
        let event = if how == Released::ByUs { ConnEvent::LocalClose } else { ConnEvent::PeerClosed };
        match self.apply(id, event, None) {
            Ok(Some(ConnEntry::Open { core })) => Some(core),
            _ => None,
        }
    }

    /// Judges a message for `id`.
    pub(crate) fn lookup(&mut self, id: ConnectionId) -> Lookup<'_> {
        if self.entries.contains_key(&id) {
            return match self.entries.get(&id) {
                Some(ConnEntry::Open { core }) => Lookup::Open(core),
                _ => Lookup::PendingOutbound,
            };
        }
        if let Some((_, state)) = self.tombstones.iter().rev().find(|(t, _)| *t == id) {
            return match state {
                // rule: connection.close.crossing
                ConnState::ClosedByUs => {
                    self.late_messages += 1;
                    Lookup::Late
                }
                _ => Lookup::Violation(format!("message on connection {id} after it was released")),
            };
        }
        // Ours are allocated consecutively, so the high-water mark is exact;
        // the peer's may skip ids, so they are judged by its window.
        let known = if id.parity() == self.local_parity {
            id.0 <= self.highest_local
        } else {
            self.peer_ids.seen(id.0) != Seen::Never
        };
        if known {
            // Released longer ago than the tombstones remember: tolerated, counted.
            self.late_messages += 1;
            Lookup::Late
        } else {
            // rule: rpc.channel.unknown — never opened (also below the
            // highest id opened, within the remembered window).
            Lookup::Violation(format!("message on unknown connection {id} (never opened)"))
        }
    }

    /// The peer's `CloseConnection` crossed ours: from now on any message
    /// from the peer on `id` is a violation (rule `connection.close.crossing`).
    pub(crate) fn mark_peer_closed(&mut self, id: ConnectionId) {
        if self.state(id) == Some(ConnState::ClosedByUs) {
            let crossed = self.apply(id, ConnEvent::PeerClosed, None);
            debug_assert!(crossed.is_ok());
        }
    }

    /// Whether `id` was released by us recently (a crossing close is fine).
    pub(crate) fn released_by_us(&self, id: ConnectionId) -> bool {
        self.state(id) == Some(ConnState::ClosedByUs)
    }

    /// The cores of the open connections.
    /// Every live connection by id, with its state and, when open, its
    /// core (for the debug snapshot).
    pub(crate) fn live(&self) -> Vec<(ConnectionId, ConnState, Option<&Arc<ConnectionCore>>)> {
        let mut live: Vec<_> = self
            .entries
            .iter()
            .map(|(id, entry)| match entry {
                ConnEntry::Open { core } => (*id, ConnState::Open, Some(core)),
                ConnEntry::PendingOutbound { .. } => (*id, ConnState::PendingOutbound, None),
            })
            .collect();
        live.sort_by_key(|(id, _, _)| id.0);
        live
    }

    pub(crate) fn open_cores(&self) -> Vec<Arc<ConnectionCore>> {
        self.entries
            .values()
            .filter_map(|e| match e {
                ConnEntry::Open { core } => Some(core.clone()),
                ConnEntry::PendingOutbound { .. } => None,
            })
            .collect()
    }

    /// Every live connection, for teardown or a lost attachment. They are
    /// forgotten, not released: the session or attachment ended them, not
    /// either side, and the ids stay used (a late message for one is judged
    /// by the id high-water marks). Released connections stay remembered.
    pub(crate) fn drain(&mut self) -> Vec<ConnEntry> {
        self.entries.drain().map(|(_, e)| e).collect()
    }
}

// Property test of this table against a reference model (issue 5, ADR 0001).
#[cfg(test)]
#[path = "table_model.rs"]
mod model;
