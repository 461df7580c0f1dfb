//! The send gate: the only way a message of this connection reaches the
//! outbound queue. A place is reserved first (which may wait), then the
//! liveness check and the queueing happen under the core's lock, the same
//! lock that marks the connection lost, so nothing slips in after the end.

use super::ConnectionCore;
use crate::driver::channel::{LossCause, SendError};
use crate::plumbing::outbound::OutboundPermit;
use crate::plumbing::outbox::{ChannelOutbox, Joined};
use crate::sync::Arc;
use crate::wire::{Blob, ChannelId, Message, Payload};

/// What became of an item offered to a channel's outbox.
#[derive(Debug)]
pub(crate) enum Offer {
    /// Queued, its credit spent.
    Queued,
    /// No credit left: handed back, nothing spent.
    NoCredit(Blob),
    /// The outbox has no marker queued and no place was given for one:
    /// handed back, nothing spent.
    NeedsPlace(Blob),
}

impl ConnectionCore {
    /// Queues `payload` on this connection unless it has ended.
    pub(crate) async fn send(&self, payload: Payload) -> Result<(), LossCause> {
        let permit = self.reserve().await?;
        self.send_with(permit, payload)
    }

    pub(crate) async fn reserve(&self) -> Result<OutboundPermit<'_>, LossCause> {
        match self.outbound.reserve().await {
            Ok(p) => Ok(p),
            Err(_) => Err(self.lost().unwrap_or(LossCause::ConnectionClosed)),
        }
    }

    pub(crate) fn try_reserve(&self) -> Option<OutboundPermit<'_>> {
        self.outbound.try_reserve()
    }

    pub(crate) fn send_with(&self, permit: OutboundPermit<'_>, payload: Payload) -> Result<(), LossCause> {
        let st = self.state.lock();
        if let Err(c) = st.lost.admit() {
            return Err(c.clone());
        }
        permit.send(Message { connection_id: self.id, payload });
        Ok(())
    }

    /// Sends one channel item, spending one credit, atomically with respect
    /// to connection loss; fails with `NoCredit` when none is left.
    pub(crate) fn send_item_with(
        &self,
        permit: OutboundPermit<'_>,
        id: ChannelId,
        item: Blob,
    ) -> Result<(), SendError> {
        match self.send_item_now(permit, id, item)? {
            None => Ok(()),
            Some(_) => Err(SendError::NoCredit(id)),
        }
    }

    /// Like [`send_item_with`](Self::send_item_with), but a channel with no
    /// credit left hands the item back (`Ok(Some(item))`), the place
    /// released, instead of failing.
    pub(crate) fn send_item_now(
        &self,
        permit: OutboundPermit<'_>,
        id: ChannelId,
        item: Blob,
    ) -> Result<Option<Blob>, SendError> {
        let st = self.state.lock();
        if let Err(c) = st.lost.admit() {
            return Err(SendError::ConnectionLost(c.clone()));
        }
        match self.registry.spend_credit(id) {
            Ok(()) => {}
            Err(SendError::NoCredit(_)) => return Ok(Some(item)),
            Err(e) => return Err(e),
        }
        permit.send(Message { connection_id: self.id, payload: Payload::ChannelItem { id, item } });
        Ok(None)
    }

    /// Offers one item of a sending channel to its outbox (`outbox.rs`),
    /// spending one credit, atomically with respect to connection loss.
    /// Behind a marker already queued the item needs no place in the
    /// queue; otherwise it leads a new run and needs `permit` for its
    /// marker.
    pub(crate) fn offer_item(
        &self,
        permit: Option<OutboundPermit<'_>>,
        outbox: &Arc<ChannelOutbox>,
        id: ChannelId,
        item: Blob,
    ) -> Result<Offer, SendError> {
        let st = self.state.lock();
        if let Err(c) = st.lost.admit() {
            return Err(SendError::ConnectionLost(c.clone()));
        }
        let item = match outbox.join(item, || self.registry.spend_credit(id)) {
            Ok(Joined::Behind) => return Ok(Offer::Queued),
            Ok(Joined::NeedsPlace(item)) => item,
            Err((SendError::NoCredit(_), item)) => return Ok(Offer::NoCredit(item)),
            Err((e, _)) => return Err(e),
        };
        let Some(permit) = permit else { return Ok(Offer::NeedsPlace(item)) };
        match self.registry.spend_credit(id) {
            Ok(()) => {}
            Err(SendError::NoCredit(_)) => return Ok(Offer::NoCredit(item)),
            Err(e) => return Err(e),
        }
        if outbox.lead(item) {
            permit.send_outbox(outbox.clone());
        }
        Ok(Offer::Queued)
    }
}
