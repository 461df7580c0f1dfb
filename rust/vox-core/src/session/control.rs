//! The session's ONE control mailbox.
//!
//! Every request to the run loop is a [`ControlMsg`]. They arrive by one of
//! two lanes of the same mailbox, and the run loop takes them in order:
//!
//! - the **bounded queue** for async callers (`open_connection`,
//!   `close_connection`): when it is full the caller waits;
//! - the **reserved lane** for requests that come from `Drop` or other
//!   non-async code (a connection's last caller dropped, the root's last
//!   caller dropped, `shutdown()`): these cannot wait, so each one is a mark
//!   in shared state under one lock plus a wake-up. A connection can be
//!   marked at most once (its liveness token drops once) and the root and
//!   shutdown marks are flags, so the lane is bounded by the number of open
//!   connections, which the session already limits. See ADR 0002.

use super::SessionError;
use super::handle::ConnectionHandle;
use crate::mutant;
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering, Signal};
use crate::wire::{ConnectionId, ConnectionSettings, Metadata};
use std::collections::VecDeque;
use tokio::sync::{mpsc, oneshot};

/// A request to the session run loop.
#[derive(Debug)]
pub enum ControlMsg {
    /// Open a virtual connection (`SessionHandle::open_connection`).
    OpenConnection {
        /// Our settings for the new connection.
        settings: ConnectionSettings,
        /// Metadata for the peer's acceptor.
        metadata: Metadata,
        /// Where the result goes.
        reply: oneshot::Sender<Result<ConnectionHandle, SessionError>>,
    },
    /// Close a virtual connection (`SessionHandle::close_connection`).
    CloseConnection {
        /// Which connection.
        id: ConnectionId,
        /// Closing metadata.
        metadata: Metadata,
        /// Where the result goes.
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    /// The last caller of a virtual connection was dropped (reserved lane).
    ConnectionDropped(ConnectionId),
    /// The last caller of the root connection was dropped (reserved lane).
    RootDropped,
    /// `SessionHandle::shutdown()` was called (reserved lane).
    Shutdown,
    /// `SessionHandle::drain`: refuse new requests, let the ones in flight
    /// finish within `grace`, then end the session gracefully.
    Drain {
        /// The longest in-flight handlers get.
        grace: std::time::Duration,
    },
    /// A replacement conduit for this session completed its handshake
    /// (rule `session.resume`); the run loop binds it as the next attachment.
    Reattach(Box<super::resume::NewConduit>),
    /// `SessionHandle::snapshot`: what the session holds now.
    Snapshot {
        /// Where the snapshot goes.
        reply: oneshot::Sender<super::snapshot::SessionSnapshot>,
    },
}

#[derive(Default)]
struct Reserved {
    shutdown: bool,
    root_dropped: bool,
    dropped: VecDeque<ConnectionId>,
}

struct MailboxShared {
    reserved: Mutex<Reserved>,
    wake: Signal,
    queue_high_water: AtomicUsize,
    capacity: usize,
}

/// Sending side of the mailbox; cheap to clone.
#[derive(Clone)]
pub struct MailboxTx {
    queue: mpsc::Sender<ControlMsg>,
    shared: Arc<MailboxShared>,
}

/// Receiving side of the mailbox, owned by the run loop.
pub struct MailboxRx {
    queue: mpsc::Receiver<ControlMsg>,
    shared: Arc<MailboxShared>,
}

/// Creates a mailbox whose bounded queue holds `capacity` messages.
pub fn mailbox(capacity: usize) -> (MailboxTx, MailboxRx) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let shared = Arc::new(MailboxShared {
        reserved: Mutex::new(Reserved::default()),
        wake: Signal::new(),
        queue_high_water: AtomicUsize::new(0),
        capacity,
    });
    (MailboxTx { queue: tx, shared: shared.clone() }, MailboxRx { queue: rx, shared })
}

impl MailboxTx {
    /// Sends an async request; waits while the queue is full. Fails only when
    /// the run loop has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a dropped future
    /// queued nothing.
    ///
    /// # Errors
    /// Gives `msg` back once the run loop has ended; nothing was queued.
    pub async fn send(&self, msg: ControlMsg) -> Result<(), ControlMsg> {
        let permit = match self.queue.reserve().await {
            Ok(p) => p,
            Err(_) => return Err(msg),
        };
        permit.send(msg);
        let used = self.shared.capacity - self.queue.capacity();
        self.shared.queue_high_water.fetch_max(used, Ordering::Relaxed);
        Ok(())
    }

    /// Posts a request from a non-async context (a `Drop`, `shutdown()`).
    /// Never waits and never fails; a request posted after the run loop ended
    /// is moot and ignored.
    pub fn post(&self, msg: DropRequest) {
        {
            let mut r = self.shared.reserved.lock();
            match msg {
                DropRequest::Shutdown => r.shutdown = true,
                DropRequest::RootDropped => r.root_dropped = true,
                DropRequest::ConnectionDropped(id) => r.dropped.push_back(id),
            }
        }
        // `notify` stores a permit if the run loop is not waiting yet, so
        // the wake-up cannot be lost (loom model 5 checks this).
        if !mutant::active("mailbox_wake_skipped") {
            self.shared.wake.notify();
        }
    }

    /// The most messages ever waiting in the bounded queue at once.
    pub fn queue_high_water(&self) -> usize {
        self.shared.queue_high_water.load(Ordering::Relaxed)
    }

    /// The bounded queue's capacity.
    pub fn queue_capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Messages in the reserved lane right now.
    pub fn reserved_len(&self) -> usize {
        let r = self.shared.reserved.lock();
        r.dropped.len() + usize::from(r.shutdown) + usize::from(r.root_dropped)
    }
}

/// A request that comes from non-async code and uses the reserved lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropRequest {
    /// `shutdown()`.
    Shutdown,
    /// Last root caller dropped.
    RootDropped,
    /// Last caller of a virtual connection dropped.
    ConnectionDropped(ConnectionId),
}

impl MailboxRx {
    /// Requests waiting in the bounded queue (the reserved lane's marks
    /// are not counted: each is at most one pending signal).
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    fn take_reserved(&self) -> Option<ControlMsg> {
        let mut r = self.shared.reserved.lock();
        // Shutdown first: it makes every other pending request moot.
        if r.shutdown {
            r.shutdown = false;
            return Some(ControlMsg::Shutdown);
        }
        if let Some(id) = r.dropped.pop_front() {
            return Some(ControlMsg::ConnectionDropped(id));
        }
        if r.root_dropped {
            r.root_dropped = false;
            return Some(ControlMsg::RootDropped);
        }
        None
    }

    /// The next request. Reserved-lane requests are taken first because they
    /// cannot have waited. Returns `None` only when every sender is gone and
    /// the lanes are empty.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a request is taken
    /// only when the future completes.
    ///
    /// # Errors
    /// Never fails; `None` means every sender is gone and both lanes are empty.
    pub async fn recv(&mut self) -> Option<ControlMsg> {
        loop {
            if let Some(m) = self.take_reserved() {
                return Some(m);
            }
            tokio::select! {
                biased;
                _ = self.shared.wake.wait() => continue,
                m = self.queue.recv() => {
                    if m.is_some() {
                        return m;
                    }
                    // Every async sender is gone; the reserved lane may still
                    // be posted to by drops, so keep waiting on it.
                    self.shared.wake.wait().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn control_mailbox_queued_counts_the_requests_waiting() {
        let (tx, mut rx) = mailbox(4);
        assert_eq!(rx.queued(), 0);
        for _ in 0..2 {
            tx.send(ControlMsg::Drain { grace: std::time::Duration::ZERO }).await.expect("room");
        }
        assert_eq!(rx.queued(), 2, "two requests waiting");
        assert!(rx.recv().await.is_some());
        assert_eq!(rx.queued(), 1, "one taken");
    }
}
