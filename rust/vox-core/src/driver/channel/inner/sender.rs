//! The local sender's events: waiting for and spending credit, closing, and
//! the handle going away. Every event first passes the sender's gate, which
//! turns a lost connection, a wrong end or an ended channel into the error
//! the handle should see.

use std::task::{Context, Poll};

use super::{Gate, Inner};
use crate::driver::channel::Wakeups;
use crate::driver::channel::error::{CloseCause, SendError};
use crate::driver::channel::state::{ChannelEntry, ChannelState, Closing, Half, Role};
use crate::mutant;
use crate::wire::ChannelId;

fn send_error_for(cause: &CloseCause) -> SendError {
    match cause {
        CloseCause::Closed => SendError::Closed,
        CloseCause::Reset => SendError::Reset,
        CloseCause::ConnectionLost(loss) => SendError::ConnectionLost(loss.clone()),
    }
}

/// `spend_credit` on an open sender. rule: rpc.flow-control.credit
fn spend_one(credit: &mut u32, id: ChannelId) -> Result<(), SendError> {
    match credit.checked_sub(1) {
        Some(left) => {
            *credit = left;
            Ok(())
        }
        None => Err(SendError::NoCredit(id)),
    }
}

impl Inner {
    fn send_gate(&mut self, id: ChannelId) -> Gate<SendError> {
        if let Some(loss) = &self.lost {
            // The handle has now seen the end; nothing else needs the entry.
            let error = SendError::ConnectionLost(loss.clone());
            self.forget_after_loss(id, Role::Sender);
            return Gate::Refused(error);
        }
        match self.channels.get(&id) {
            Some(entry) if entry.role() != Role::Sender => Gate::Refused(SendError::WrongDirection(id)),
            Some(ChannelEntry { state: ChannelState::Pending(_), .. }) => Gate::Refused(SendError::NotBound(id)),
            Some(_) => Gate::Live,
            None => match self.tombstones.get(id) {
                Some(t) if t.role == Role::Sender => Gate::Remembered(t.cause.clone()),
                Some(_) => Gate::Refused(SendError::WrongDirection(id)),
                None => Gate::Refused(SendError::UnknownChannel(id)),
            },
        }
    }

    /// The gate of every sender event: `Ok` when the entry is live, bound and
    /// ours to send on; otherwise the error the handle should see.
    fn sender_end(&mut self, id: ChannelId) -> Result<(), SendError> {
        match self.send_gate(id) {
            Gate::Live => Ok(()),
            Gate::Remembered(cause) => Err(send_error_for(&cause)),
            Gate::Refused(error) => Err(error),
        }
    }

    pub(in crate::driver::channel) fn poll_credit(
        &mut self,
        id: ChannelId,
        cx: &Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        if let Err(error) = self.sender_end(id) {
            return Poll::Ready(Err(error));
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            return Poll::Ready(Err(SendError::UnknownChannel(id)));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Sending { credit }) => {
                // rule: rpc.flow-control.credit — wait at zero.
                if *credit > 0 {
                    (Poll::Ready(Ok(())), false)
                } else {
                    entry.waker.register(cx);
                    (Poll::Pending, false)
                }
            }
            ChannelState::Closing(Closing::SenderClosePending) => (Poll::Ready(Err(SendError::Closed)), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Poll::Ready(Err(send_error_for(&closed.cause))), true)
            }
            _ => (Poll::Ready(Err(SendError::WrongDirection(id))), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    pub(in crate::driver::channel) fn spend_credit(&mut self, id: ChannelId) -> Result<(), SendError> {
        // The common case in one lookup: an open sender passes the gate by
        // its state alone (it is ours to send on, and bound), so only the
        // connection's loss needs checking.
        if self.lost.is_none()
            && let Some(ChannelEntry { state: ChannelState::Open(Half::Sending { credit }), .. }) =
                self.channels.get_mut(&id)
        {
            return spend_one(credit, id);
        }
        self.sender_end(id)?;
        let Some(entry) = self.channels.get_mut(&id) else {
            return Err(SendError::UnknownChannel(id));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Sending { credit }) => (spend_one(credit, id), false),
            ChannelState::Closing(Closing::SenderClosePending) => (Err(SendError::Closed), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Err(send_error_for(&closed.cause)), true)
            }
            _ => (Err(SendError::WrongDirection(id)), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    pub(in crate::driver::channel) fn refund_credit(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if self.lost.is_some() {
            return;
        }
        if let Some(entry) = self.channels.get_mut(&id) {
            // Once closed or reset the credit no longer matters; only an open
            // sender gets it back.
            if let ChannelState::Open(Half::Sending { credit }) = &mut entry.state {
                match credit.checked_add(1) {
                    Some(more) => *credit = more,
                    None => tracing::warn!(channel = %id, "credit refund would overflow, ignored"),
                }
                wake.push(entry.waker.take());
            }
        }
    }

    pub(in crate::driver::channel) fn local_close(
        &mut self,
        id: ChannelId,
        wake: &mut Wakeups,
    ) -> Result<(), SendError> {
        self.sender_end(id)?;
        let Some(entry) = self.channels.get_mut(&id) else {
            return Err(SendError::UnknownChannel(id));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Sending { .. }) => {
                // rule: rpc.channel.close — the close goes out through the flush,
                // which the driver polls after enqueueing the items already sent.
                entry.state = ChannelState::Closing(Closing::SenderClosePending);
                drop(entry.waker.take());
                self.outbound.due(id, wake);
                (Ok(()), false)
            }
            ChannelState::Closing(Closing::SenderClosePending) => (Err(SendError::Closed), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Err(send_error_for(&closed.cause)), true)
            }
            _ => (Err(SendError::WrongDirection(id)), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    pub(in crate::driver::channel) fn sender_dropped(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if self.lost.is_some() {
            self.forget_after_loss(id, Role::Sender);
            return;
        }
        let Some(entry) = self.channels.get_mut(&id) else { return };
        if entry.role() != Role::Sender {
            tracing::debug!(channel = %id, "sender_dropped on a channel where this side receives, ignored");
            return;
        }
        drop(entry.waker.take());
        match &mut entry.state {
            ChannelState::Open(Half::Sending { .. }) => {
                entry.state = ChannelState::Closing(Closing::SenderClosePending);
                let wake = if mutant::active("drop_wake_skipped") { &mut Wakeups::default() } else { wake };
                self.outbound.due(id, wake);
            }
            ChannelState::Closed(closed) => {
                closed.observed = true;
                self.settle(id);
            }
            // Pending has no handle yet; a close already owed stays owed.
            _ => {}
        }
    }
}
