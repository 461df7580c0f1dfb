//! The port between a connection's channel handles (`Tx`, `Rx`, and the
//! handler side's `ChannelBinder`) and the core: the only things a handle
//! may ask of its connection. Handles see neither the channel registry nor
//! the outbound path; the core answers every question about a channel's
//! state from its registry, so "is this channel bound?" has one answer
//! there, and the handle's own slot says only whether the handle has been
//! told its channel yet.

use super::ConnectionCore;
use crate::driver::channel::{LocalError, RecvError, SendError};
use crate::driver::handle::Role;
use crate::wire::{Blob, ChannelId, ConnectionId};
use bytes::Bytes;
use std::future::Future;
use std::task::{Context, Poll};

/// What a channel handle may ask of its connection.
pub(crate) trait ChannelPort: Send + Sync {
    /// The connection the channel belongs to (for spans).
    fn connection_id(&self) -> ConnectionId;

    /// `Ready(Ok(()))` once channel `id` has a credit (not spent);
    /// otherwise the waker is registered.
    fn poll_credit(&self, id: ChannelId, cx: &mut Context<'_>) -> Poll<Result<(), SendError>>;

    /// Sends `item` now, spending a credit, if the outbound path has room:
    /// `Ok(Some(item))` hands it back when it has none. Call after
    /// [`poll_credit`](Self::poll_credit) said a credit is there.
    fn try_send_item(&self, id: ChannelId, item: Bytes) -> Result<Option<Bytes>, SendError>;

    /// Sends `item`, spending a credit, waiting for room on the outbound
    /// path. Call after [`poll_credit`](Self::poll_credit) said a credit is
    /// there (one sender per channel: it stays there unless a reset or the
    /// connection's loss came in between, which is then the error).
    fn send_item(&self, id: ChannelId, item: Bytes) -> impl Future<Output = Result<(), SendError>> + Send;

    /// The next item of channel `id`, `None` at its end; otherwise the
    /// waker is registered.
    fn poll_recv(&self, id: ChannelId, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, RecvError>>;

    /// The sender is done: the close goes out after every item it sent.
    fn close(&self, id: ChannelId) -> Result<(), SendError>;

    /// The handle of end `role` is gone: a sender closes after its items
    /// (rule `rpc.channel.close`), a receiver resets (rule
    /// `rpc.channel.reset`).
    fn release(&self, id: ChannelId, role: Role);

    /// A handler takes an announced channel; fails if it is already taken
    /// or no longer known.
    fn bind(&self, id: ChannelId) -> Result<(), LocalError>;
}

impl ChannelPort for ConnectionCore {
    fn connection_id(&self) -> ConnectionId {
        self.id
    }

    fn poll_credit(&self, id: ChannelId, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.registry.poll_credit(id, cx)
    }

    fn try_send_item(&self, id: ChannelId, item: Bytes) -> Result<Option<Bytes>, SendError> {
        match self.try_reserve() {
            Some(permit) => self.send_item_with(permit, id, Blob::new(item)).map(|()| None),
            None => Ok(Some(item)),
        }
    }

    async fn send_item(&self, id: ChannelId, item: Bytes) -> Result<(), SendError> {
        // Fast path: a free place in the outbound queue needs no await.
        let permit = match self.try_reserve() {
            Some(permit) => permit,
            None => self.reserve().await.map_err(SendError::ConnectionLost)?,
        };
        self.send_item_with(permit, id, Blob::new(item))
    }

    fn poll_recv(&self, id: ChannelId, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, RecvError>> {
        self.registry.poll_recv(id, cx)
    }

    fn close(&self, id: ChannelId) -> Result<(), SendError> {
        self.registry.local_close(id)
    }

    fn release(&self, id: ChannelId, role: Role) {
        match role {
            Role::Sender => self.registry.sender_dropped(id),
            Role::Receiver => self.registry.receiver_dropped(id),
        }
    }

    fn bind(&self, id: ChannelId) -> Result<(), LocalError> {
        self.registry.bind(id)
    }
}
