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

    /// Sends `item` now, spending a credit, if there is a credit and the
    /// outbound path has room: `Ok(Some(item))` hands it back otherwise,
    /// having spent nothing. One lock of the registry, which is why a send
    /// tries this before waiting for credit.
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
            Some(permit) => Ok(self.send_item_now(permit, id, Blob::new(item))?.map(Blob::into_bytes)),
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

#[cfg(test)]
mod tests {
    use super::ChannelPort;
    use crate::driver::ConnectionCore;
    use crate::driver::channel::ChannelLimits;
    use crate::plumbing::outbound;
    use crate::wire::{ChannelDirection, ConnectionId, ConnectionSettings, Parity, Payload};
    use bytes::Bytes;

    // rule: rpc.flow-control.credit — the send that does not wait spends a
    // credit only when it queues the item: without credit, or without room
    // on the outbound path, the item comes back and nothing is spent.
    #[test]
    fn rpc_flow_control_credit_try_send_item_hands_back_what_it_cannot_send() {
        let (out, mut rx) = outbound::detached(2);
        let settings = ConnectionSettings::default();
        let core = ConnectionCore::new(
            ConnectionId(1),
            Parity::Odd,
            settings.clone(),
            settings,
            out,
            None,
            ChannelLimits { max_channels: 4, max_receive_window: 16 },
            None,
        );
        let registry = core.registry_for_models();
        let id = registry.create_outgoing(ChannelDirection::CallerToHandler, 1).expect("channel").id;
        let item = |n: u8| Bytes::from(vec![n]);
        assert_eq!(core.try_send_item(id, item(1)), Ok(None), "a credit and room: sent");
        assert_eq!(core.try_send_item(id, item(2)), Ok(Some(item(2))), "no credit: handed back");
        registry.on_remote_grant(id, 2).expect("grant");
        assert_eq!(core.try_send_item(id, item(2)), Ok(None));
        assert_eq!(core.try_send_item(id, item(3)), Ok(Some(item(3))), "no room: handed back");
        let queued: Vec<Payload> = std::iter::from_fn(|| rx.try_recv().ok()).map(|m| m.payload).collect();
        assert_eq!(queued.len(), 2, "{queued:?}");
        for (m, n) in queued.iter().zip([1u8, 2]) {
            assert!(matches!(m, Payload::ChannelItem { id: i, item } if *i == id && item.bytes()[..] == [n]), "{m:?}");
        }
        assert_eq!(core.try_send_item(id, item(3)), Ok(None), "the credit the full queue refused is still there");
        assert_eq!(core.try_send_item(id, item(4)), Ok(Some(item(4))), "and it was the last one");
    }
}
