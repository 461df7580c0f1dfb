//! The session's connection table (rule `connection.*`): which virtual
//! connections exist, in which state, and how to judge a message for an id
//! that is gone without keeping unbounded state.

use super::phase::{ConnEvent, ConnState, PhaseError};
use super::{ConnectionHandle, SessionError};
use crate::driver::ConnectionCore;
use crate::id_window::{IdWindow, Seen};
use crate::wire::{ConnectionId, ConnectionSettings, IdAllocator, Parity};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::oneshot;

pub(crate) type OpenReply = oneshot::Sender<Result<ConnectionHandle, SessionError>>;

pub(crate) enum Entry {
    PendingOutbound { reply: OpenReply, settings: ConnectionSettings, parity: Parity },
    Open { core: Arc<ConnectionCore> },
}

impl Entry {
    fn state(&self) -> ConnState {
        match self {
            Entry::PendingOutbound { .. } => ConnState::PendingOutbound,
            Entry::Open { .. } => ConnState::Open,
        }
    }
}

/// How a released connection ended, for judging late messages.
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
    entries: HashMap<ConnectionId, Entry>,
    tombstones: VecDeque<(ConnectionId, Released)>,
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
            entries: HashMap::new(),
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

    fn bury(&mut self, id: ConnectionId, how: Released) {
        if self.tombstone_cap == 0 {
            return;
        }
        if self.tombstones.len() == self.tombstone_cap {
            self.tombstones.pop_front();
        }
        self.tombstones.push_back((id, how));
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
        self.entries.insert(id, Entry::PendingOutbound { reply, settings, parity });
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

    pub(crate) fn insert_open(&mut self, id: ConnectionId, core: Arc<ConnectionCore>) -> Result<(), PhaseError> {
        ConnState::PendingInbound.next(ConnEvent::WeAccepted)?;
        self.entries.insert(id, Entry::Open { core });
        Ok(())
    }

    pub(crate) fn reject_inbound(&mut self, id: ConnectionId) {
        self.bury(id, Released::ByPeer);
    }

    /// `AcceptConnection` or `RejectConnection` for `id`.
    pub(crate) fn take_pending(
        &mut self,
        id: ConnectionId,
        event: ConnEvent,
    ) -> Result<(OpenReply, ConnectionSettings, Parity), String> {
        match self.entries.get(&id).map(Entry::state) {
            Some(ConnState::PendingOutbound) => {}
            Some(s) => return Err(format!("{event:?} for connection {id} in state {s:?}")),
            None => return Err(format!("{event:?} for connection {id}, which we did not open")),
        }
        if let Err(e) = ConnState::PendingOutbound.next(event) {
            return Err(e.to_string());
        }
        match self.entries.remove(&id) {
            Some(Entry::PendingOutbound { reply, settings, parity }) => {
                if event == ConnEvent::PeerRejected {
                    self.bury(id, Released::ByPeer);
                }
                Ok((reply, settings, parity))
            }
            _ => Err(format!("connection {id} is not pending")),
        }
    }

    pub(crate) fn set_open(&mut self, id: ConnectionId, core: Arc<ConnectionCore>) {
        self.entries.insert(id, Entry::Open { core });
    }

    /// Removes an open connection, recording who released it.
    pub(crate) fn release(&mut self, id: ConnectionId, how: Released) -> Option<Arc<ConnectionCore>> {
        match self.entries.remove(&id) {
            Some(Entry::Open { core }) => {
                let event = if how == Released::ByUs { ConnEvent::LocalClose } else { ConnEvent::PeerClosed };
                debug_assert!(ConnState::Open.next(event).is_ok());
                self.bury(id, how);
                Some(core)
            }
            Some(other) => {
                self.entries.insert(id, other);
                None
            }
            None => None,
        }
    }

    /// Judges a message for `id`.
    pub(crate) fn lookup(&mut self, id: ConnectionId) -> Lookup<'_> {
        if self.entries.contains_key(&id) {
            return match self.entries.get(&id) {
                Some(Entry::Open { core }) => Lookup::Open(core),
                _ => Lookup::PendingOutbound,
            };
        }
        if let Some((_, how)) = self.tombstones.iter().rev().find(|(t, _)| *t == id) {
            return match how {
                // rule: connection.close.crossing
                Released::ByUs => {
                    self.late_messages += 1;
                    Lookup::Late
                }
                Released::ByPeer => Lookup::Violation(format!("message on connection {id} after it was released")),
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
        if let Some(entry) = self.tombstones.iter_mut().rev().find(|(t, _)| *t == id) {
            entry.1 = Released::ByPeer;
        }
    }

    /// Whether `id` was released by us recently (a crossing close is fine).
    pub(crate) fn released_by_us(&self, id: ConnectionId) -> bool {
        self.tombstones.iter().any(|(t, how)| *t == id && *how == Released::ByUs)
    }

    /// The cores of the open connections.
    pub(crate) fn open_cores(&self) -> Vec<Arc<ConnectionCore>> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Open { core } => Some(core.clone()),
                Entry::PendingOutbound { .. } => None,
            })
            .collect()
    }

    /// Everything, for teardown.
    pub(crate) fn drain(&mut self) -> Vec<Entry> {
        self.entries.drain().map(|(_, e)| e).collect()
    }
}

// Property test of this table against a reference model (issue 5, ADR 0001).
#[cfg(test)]
#[path = "table_model.rs"]
mod model;
