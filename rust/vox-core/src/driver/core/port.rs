//! The port between a connection's channel handles (`Tx`, `Rx`, and the
//! handler side's `ChannelBinder`) and the core: the only things a handle
//! may ask of its connection. Handles see neither the channel registry nor
//! the outbound path; the core answers every question about a channel's
//! state from its registry, so "is this channel bound?" has one answer
//! there, and the handle's own slot says only whether the handle has been
//! told its channel yet.

use super::ConnectionCore;
use super::gate::Offer;
use crate::driver::channel::{LocalError, RecvError, SendError};
use crate::driver::handle::Role;
use crate::plumbing::outbox::ChannelOutbox;
use crate::sync::Arc;
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

    /// Sends `item` now through the channel's `outbox`, spending a credit,
    /// if there is a credit and the item needs no place in the outbound
    /// queue or finds one free: `Ok(Some(item))` hands it back otherwise,
    /// having spent nothing. One lock of the registry, which is why a send
    /// tries this before waiting for credit.
    fn try_send_item(
        &self,
        id: ChannelId,
        outbox: &Arc<ChannelOutbox>,
        item: Bytes,
    ) -> Result<Option<Bytes>, SendError>;

    /// Sends `item` through the channel's `outbox`, spending a credit,
    /// waiting for room on the outbound path if it needs a place. Call
    /// after [`poll_credit`](Self::poll_credit) said a credit is there (one
    /// sender per channel: it stays there unless a reset or the
    /// connection's loss came in between, which is then the error).
    fn send_item(
        &self,
        id: ChannelId,
        outbox: &Arc<ChannelOutbox>,
        item: Bytes,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

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

    fn try_send_item(
        &self,
        id: ChannelId,
        outbox: &Arc<ChannelOutbox>,
        item: Bytes,
    ) -> Result<Option<Bytes>, SendError> {
        // Most items of a busy stream join a marker already queued and need
        // no place; only a run's first item reserves one.
        let item = match self.offer_item(None, outbox, id, Blob::new(item))? {
            Offer::Queued => return Ok(None),
            Offer::NoCredit(item) => return Ok(Some(item.into_bytes())),
            Offer::NeedsPlace(item) => item,
        };
        let Some(permit) = self.try_reserve() else { return Ok(Some(item.into_bytes())) };
        match self.offer_item(Some(permit), outbox, id, item)? {
            Offer::Queued => Ok(None),
            Offer::NoCredit(item) | Offer::NeedsPlace(item) => Ok(Some(item.into_bytes())),
        }
    }

    async fn send_item(&self, id: ChannelId, outbox: &Arc<ChannelOutbox>, item: Bytes) -> Result<(), SendError> {
        let item = match self.offer_item(None, outbox, id, Blob::new(item))? {
            Offer::Queued => return Ok(()),
            Offer::NoCredit(_) => return Err(SendError::NoCredit(id)),
            Offer::NeedsPlace(item) => item,
        };
        // A free place in the outbound queue needs no await.
        let permit = match self.try_reserve() {
            Some(permit) => permit,
            None => self.reserve().await.map_err(SendError::ConnectionLost)?,
        };
        match self.offer_item(Some(permit), outbox, id, item)? {
            Offer::Queued => Ok(()),
            Offer::NoCredit(_) | Offer::NeedsPlace(_) => Err(SendError::NoCredit(id)),
        }
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
    use crate::plumbing::outbox::ChannelOutbox;
    use crate::wire::{ChannelDirection, ConnectionId, ConnectionSettings, Message, Parity, Payload};
    use bytes::Bytes;

    // rule: rpc.flow-control.credit — the send that does not wait spends a
    // credit only when it queues the item: without credit, or without room
    // for the marker a run's first item needs, the item comes back and
    // nothing is spent. Items behind a queued marker need no room.
    #[test]
    fn rpc_flow_control_credit_try_send_item_hands_back_what_it_cannot_send() {
        let (out, mut rx) = outbound::detached(1);
        let settings = ConnectionSettings::default();
        let core = ConnectionCore::new(
            ConnectionId(1),
            Parity::Odd,
            settings.clone(),
            settings,
            out.clone(),
            None,
            ChannelLimits { max_channels: 4, max_receive_window: 16 },
            None,
        );
        let registry = core.registry_for_models();
        let id = registry.create_outgoing(ChannelDirection::CallerToHandler, 1).expect("channel").id;
        let outbox = ChannelOutbox::new(ConnectionId(1), id);
        let item = |n: u8| Bytes::from(vec![n]);
        assert_eq!(core.try_send_item(id, &outbox, item(1)), Ok(None), "a credit and room: sent");
        assert_eq!(core.try_send_item(id, &outbox, item(2)), Ok(Some(item(2))), "no credit: handed back");
        registry.on_remote_grant(id, 2).expect("grant");
        assert_eq!(core.try_send_item(id, &outbox, item(2)), Ok(None), "behind the queued marker: no room needed");
        let queued: Vec<Payload> = std::iter::from_fn(|| rx.try_recv().ok()).map(|m| m.payload).collect();
        assert_eq!(queued.len(), 2, "{queued:?}");
        for (m, n) in queued.iter().zip([1u8, 2]) {
            assert!(matches!(m, Payload::ChannelItem { id: i, item } if *i == id && item.bytes()[..] == [n]), "{m:?}");
        }
        let filler = Message { connection_id: ConnectionId(1), payload: Payload::Ping { nonce: 7 } };
        out.try_reserve().expect("the queue is empty again").send(filler);
        assert_eq!(core.try_send_item(id, &outbox, item(3)), Ok(Some(item(3))), "a new run, no room: handed back");
        assert!(matches!(rx.try_recv().map(|m| m.payload), Ok(Payload::Ping { nonce: 7 })));
        assert_eq!(
            core.try_send_item(id, &outbox, item(3)),
            Ok(None),
            "the credit the full queue refused is still there"
        );
        assert_eq!(core.try_send_item(id, &outbox, item(4)), Ok(Some(item(4))), "and it was the last one");
        assert!(
            matches!(rx.try_recv().map(|m| m.payload), Ok(Payload::ChannelItem { item, .. }) if item.bytes()[..] == [3])
        );
    }
}
