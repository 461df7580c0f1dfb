//! The halves a conduit hands out ([`StableTx`], [`StableRx`]): the session's
//! side of the conduit. Sending only fills the replay buffer and receiving
//! only takes from the reader's queue; the tasks do the link I/O, so a link
//! break is invisible here.

use super::shared::{Closing, Phase, ReceiveLimit, StableShared};
use super::{ConduitError, StableEnd, ended};
use crate::wire::{self, Blob, ConduitMsg};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Sending half of a stable conduit.
pub struct StableTx {
    pub(super) shared: Arc<StableShared>,
}

/// Receiving half of a stable conduit.
pub struct StableRx {
    pub(super) shared: Arc<StableShared>,
    pub(super) queue: mpsc::Receiver<Result<Bytes, ConduitError>>,
}

impl std::fmt::Debug for StableTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableTx").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StableRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableRx").finish_non_exhaustive()
    }
}

impl StableTx {
    /// Queues one encoded message. Waits while the replay buffer is full
    /// (backpressure, rule `stable.replay-buffer.bounded`); returns once the
    /// message is in the buffer, from where it is sent and, if needed, sent
    /// again.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a cancelled call
    /// queued nothing.
    ///
    /// # Errors
    /// [`ConduitError::Stable`] with why the conduit ended, once it has (a
    /// local close included); the message is then not queued.
    pub async fn send_encoded(&self, bytes: Bytes) -> Result<(), ConduitError> {
        let mut item = Blob::new(bytes);
        loop {
            let notified = self.shared.room.notified();
            {
                let mut core = self.shared.core.lock();
                if let Phase::Closed(end) = &core.phase {
                    return Err(ended(end));
                }
                match core.sm.push(item) {
                    Ok(_) => {
                        drop(core);
                        self.shared.writer_wake.notify_one();
                        return Ok(());
                    }
                    Err(back) => item = back,
                }
            }
            notified.await;
        }
    }

    /// Encodes and queues one message.
    ///
    /// # Cancel safety
    /// Cancel-safe, as [`send_encoded`](Self::send_encoded).
    ///
    /// # Errors
    /// [`ConduitError::Encode`] if `msg` cannot be encoded (a local bug);
    /// otherwise as [`send_encoded`](Self::send_encoded).
    pub async fn send(&self, msg: &ConduitMsg) -> Result<(), ConduitError> {
        self.send_encoded(wire::encode_conduit(msg)?).await
    }

    /// Bytes waiting for the peer's acknowledgement.
    pub fn replay_bytes(&self) -> usize {
        self.shared.core.lock().sm.replay_bytes()
    }

    /// Closes the conduit once the peer has acknowledged everything sent,
    /// then tells it with `Bye` so it does not wait for a reconnect.
    ///
    /// # Cancel safety
    /// Dropping the future ends the conduit at once (what is not
    /// acknowledged yet is lost): a caller that bounds the close with a
    /// timeout gets a conduit that is gone when the timeout fires.
    ///
    /// # Errors
    /// The reason the conduit ended, if it ended otherwise than by this
    /// close or the peer's `Bye`.
    pub async fn close(self) -> Result<(), ConduitError> {
        self.end(Closing::Graceful).await
    }

    /// Closes the conduit after the peer broke the rules: writes what is
    /// held (the session's `ProtocolError` last), then closes the link
    /// without waiting for acknowledgements, which the violator may never
    /// send (rule `session.protocol-error`).
    ///
    /// # Cancel safety
    /// Dropping the future ends the conduit at once.
    ///
    /// # Errors
    /// None in practice: the conduit ends either way; an earlier end that
    /// was not a local close or the peer's `Bye` is reported.
    pub async fn abort(self) -> Result<(), ConduitError> {
        let end = StableEnd::LocalClose;
        self.end(Closing::Abort { end }).await
    }

    async fn end(self, how: Closing) -> Result<(), ConduitError> {
        {
            let mut core = self.shared.core.lock();
            // An abort already under way (a violation) is not softened; a
            // closed conduit has nothing left to close.
            if let Some(closing) = core.phase.closing_mut() {
                if !matches!(closing, Closing::Abort { .. }) {
                    *closing = how;
                }
            }
        }
        self.shared.writer_wake.notify_one();
        loop {
            let notified = self.shared.room.notified();
            if let Phase::Closed(end) = &self.shared.core.lock().phase {
                return match end {
                    StableEnd::LocalClose | StableEnd::PeerBye => Ok(()),
                    other => Err(ended(other)),
                };
            }
            notified.await;
        }
    }

    /// Cuts the current link without closing the conduit, as a network
    /// failure would. For fault-injection tests.
    pub fn break_link(&self) {
        let epoch = self.shared.core.lock().epoch;
        self.shared.on_broken(epoch);
    }
}

impl Drop for StableTx {
    /// Dropping the sending half without closing it closes the conduit
    /// gracefully in the background: what was queued is still delivered,
    /// then `Bye`, for at most
    /// [`StableConfig::drop_close_timeout`](super::StableConfig::drop_close_timeout). Dropping
    /// it while a [`close`](Self::close) or [`abort`](Self::abort) was under
    /// way (its future was cancelled, e.g. by a timeout) ends the conduit
    /// at once.
    fn drop(&mut self) {
        let mut core = self.shared.core.lock();
        let Some(closing) = core.phase.closing_mut() else { return };
        if *closing != Closing::No {
            drop(core);
            self.shared.finish(StableEnd::LocalClose);
            return;
        }
        *closing = Closing::Graceful;
        drop(core);
        self.shared.writer_wake.notify_one();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let limit = self.shared.config.drop_close_timeout;
            let shared = Arc::downgrade(&self.shared);
            runtime.spawn(async move {
                tokio::time::sleep(limit).await;
                if let Some(shared) = shared.upgrade() {
                    shared.finish(StableEnd::LocalClose);
                }
            });
        }
    }
}

impl StableRx {
    /// The next message, or `None` once the conduit was closed on purpose.
    /// Link breaks are invisible here: delivery resumes on the next link.
    ///
    /// # Cancel safety
    /// Cancel-safe, so it may be used in `tokio::select!`: a dropped future
    /// leaves the next message queued.
    ///
    /// # Errors
    /// [`ConduitError::Decode`] for an item that is not a message (the
    /// conduit then closes within
    /// [`StableConfig::violation_deadline`](super::StableConfig::violation_deadline)), or
    /// [`ConduitError::Stable`] with why the conduit ended.
    pub async fn recv(&mut self) -> Result<Option<ConduitMsg>, ConduitError> {
        let Some(bytes) = self.recv_item().await? else { return Ok(None) };
        match wire::decode::<ConduitMsg>("ConduitMsg", &bytes) {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => {
                self.violated(StableEnd::Undecodable(e.to_string()));
                Err(e.into())
            }
        }
    }

    /// The peer broke the rules above this conduit (an item that does not
    /// decode): the conduit writes what is held, the session's
    /// `ProtocolError` among it, closes, and ends within
    /// [`StableConfig::violation_deadline`](super::StableConfig::violation_deadline)
    /// whatever happens.
    pub fn violated(&self, end: StableEnd) {
        self.shared.violated(end);
    }

    /// Bounds the messages every link of this conduit delivers: `Some(max)`
    /// while the session handshake runs (rule `session.setup.limits`),
    /// `None` for the links' configured maximum afterwards.
    pub fn restrict(&self, max: Option<usize>) {
        self.shared.core.lock().receive_limit = match max {
            Some(max) => ReceiveLimit::Setup(max),
            None => ReceiveLimit::Full,
        };
        self.shared.reader_wake.notify_one();
    }

    /// The peer's network address, as the conduit's first link recorded it.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.peer_addr
    }

    /// The peer's verified identity, as the conduit's first link recorded it.
    pub fn peer_identity(&self) -> Option<crate::link::PeerIdentity> {
        self.shared.peer_identity.clone()
    }

    /// The next delivered item, undecoded (see [`recv`](Self::recv)).
    pub(crate) async fn recv_item(&mut self) -> Result<Option<Bytes>, ConduitError> {
        let next = match self.queue.try_recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // Nothing queued: the reader may read the next item (it
                // waits for this while the session handshake runs).
                self.shared.demands.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.shared.demand.notify_one();
                self.queue.recv().await
            }
        };
        match next {
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(e)) => Err(e),
            None => match &self.shared.core.lock().phase {
                Phase::Closed(StableEnd::LocalClose | StableEnd::PeerBye) => Ok(None),
                Phase::Closed(other) => Err(ended(other)),
                // The reader task only stops once the conduit is closed.
                _ => Ok(None),
            },
        }
    }
}
