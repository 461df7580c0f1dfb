//! The local receiver's events: taking items (which makes grants due),
//! resetting, and the handle going away. Every event first passes the
//! receiver's gate, as the sender's do.

use std::task::{Context, Poll};

use bytes::Bytes;

use super::outbound::DueQueue;
use super::{Gate, Inner, ended};
use crate::driver::channel::Wakeups;
use crate::driver::channel::error::{CloseCause, RecvError};
use crate::driver::channel::state::{ChannelEntry, ChannelState, Closing, Half, RecvHalf, Role, WakerSlot};
use crate::mutant;
use crate::wire::ChannelId;

fn recv_result_for(cause: &CloseCause) -> Result<Option<Bytes>, RecvError> {
    match cause {
        CloseCause::Closed => Ok(None),
        CloseCause::Reset => Err(RecvError::Reset),
        CloseCause::ConnectionLost(loss) => Err(RecvError::ConnectionLost(loss.clone())),
    }
}

/// `poll_recv` on an open receiver: the next item (a grant may fall due),
/// or `Pending` with the waker registered.
fn recv_open(
    half: &mut RecvHalf,
    waker: &mut WakerSlot,
    outbound: &mut DueQueue,
    max_window: u32,
    id: ChannelId,
    cx: &Context<'_>,
    wake: &mut Wakeups,
) -> Poll<Result<Option<Bytes>, RecvError>> {
    match half.queue.pop_front() {
        Some(item) => {
            if half.consumed(item.len(), max_window) {
                outbound.due(id, wake);
            }
            Poll::Ready(Ok(Some(item)))
        }
        None => {
            if half.waiting_on_empty() {
                outbound.due(id, wake);
            }
            waker.register(cx);
            Poll::Pending
        }
    }
}

impl Inner {
    fn recv_gate(&mut self, id: ChannelId) -> Gate<RecvError> {
        if let Some(loss) = &self.lost {
            // rule: session.protocol-error — after loss the handle sees the loss, not items.
            let error = RecvError::ConnectionLost(loss.clone());
            self.forget_after_loss(id, Role::Receiver);
            return Gate::Refused(error);
        }
        match self.channels.get(&id) {
            Some(entry) if entry.role() != Role::Receiver => Gate::Refused(RecvError::WrongDirection(id)),
            Some(ChannelEntry { state: ChannelState::Pending(_), .. }) => Gate::Refused(RecvError::NotBound(id)),
            Some(_) => Gate::Live,
            None => match self.tombstones.get(id) {
                Some(t) if t.role == Role::Receiver => Gate::Remembered(t.cause.clone()),
                Some(_) => Gate::Refused(RecvError::WrongDirection(id)),
                None => Gate::Refused(RecvError::UnknownChannel(id)),
            },
        }
    }

    pub(in crate::driver::channel) fn poll_recv(
        &mut self,
        id: ChannelId,
        cx: &Context<'_>,
        wake: &mut Wakeups,
    ) -> Poll<Result<Option<Bytes>, RecvError>> {
        // The common case in one lookup: an open receiver passes the gate by
        // its state alone (it is ours to receive on, and bound), so only the
        // connection's loss needs checking.
        if self.lost.is_none()
            && let Some(ChannelEntry { state: ChannelState::Open(Half::Receiving(half)), waker }) =
                self.channels.get_mut(&id)
        {
            return recv_open(half, waker, &mut self.outbound, self.config.max_receive_window, id, cx, wake);
        }
        match self.recv_gate(id) {
            Gate::Live => {}
            Gate::Remembered(cause) => return Poll::Ready(recv_result_for(&cause)),
            Gate::Refused(error) => return Poll::Ready(Err(error)),
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            return Poll::Ready(Err(RecvError::UnknownChannel(id)));
        };
        let (result, settle) = match &mut entry.state {
            ChannelState::Open(Half::Receiving(half)) => {
                let max_window = self.config.max_receive_window;
                (recv_open(half, &mut entry.waker, &mut self.outbound, max_window, id, cx, wake), false)
            }
            ChannelState::Closing(Closing::ReceiverDraining { queue }) => match queue.pop_front() {
                // rule: rpc.channel.close — items delivered before the close are never lost.
                Some(item) => (Poll::Ready(Ok(Some(item))), false),
                None => {
                    entry.state = ended(Role::Receiver, CloseCause::Closed, true, true);
                    (Poll::Ready(Ok(None)), true)
                }
            },
            ChannelState::Closing(Closing::ReceiverResetPending) => (Poll::Ready(Err(RecvError::Reset)), false),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                (Poll::Ready(recv_result_for(&closed.cause)), true)
            }
            _ => (Poll::Ready(Err(RecvError::WrongDirection(id))), false),
        };
        if settle {
            self.settle(id);
        }
        result
    }

    /// The receiver stops: reset if the sender may still send, otherwise just
    /// finish. Unread items are dropped, counted and traced.
    fn receiver_stops(&mut self, id: ChannelId, wake: &mut Wakeups) -> Result<(), RecvError> {
        let Some(entry) = self.channels.get_mut(&id) else {
            return Err(RecvError::UnknownChannel(id));
        };
        drop(entry.waker.take());
        let (result, dropped) = match &mut entry.state {
            ChannelState::Open(Half::Receiving(half)) => {
                // rule: rpc.channel.reset — the reset leaves through the flush; a
                // grant still owed is superseded by it.
                let dropped = half.queue.len();
                entry.state = ChannelState::Closing(Closing::ReceiverResetPending);
                self.outbound.due(id, wake);
                (Ok(()), dropped)
            }
            ChannelState::Closing(Closing::ReceiverDraining { queue }) => {
                // The sender already closed: there is nothing to stop.
                let dropped = queue.len();
                entry.state = ended(Role::Receiver, CloseCause::Closed, true, true);
                (Ok(()), dropped)
            }
            ChannelState::Closing(Closing::ReceiverResetPending) => (Ok(()), 0),
            ChannelState::Closed(closed) => {
                closed.observed = true;
                let result = match &closed.cause {
                    CloseCause::ConnectionLost(loss) => Err(RecvError::ConnectionLost(loss.clone())),
                    CloseCause::Closed | CloseCause::Reset => Ok(()),
                };
                (result, 0)
            }
            _ => (Err(RecvError::WrongDirection(id)), 0),
        };
        self.drop_unread(id, dropped);
        self.settle(id);
        result
    }

    pub(in crate::driver::channel) fn local_reset(
        &mut self,
        id: ChannelId,
        wake: &mut Wakeups,
    ) -> Result<(), RecvError> {
        match self.recv_gate(id) {
            Gate::Live => self.receiver_stops(id, wake),
            // Already ended; a reset has nothing left to stop.
            Gate::Remembered(_) => Ok(()),
            Gate::Refused(error) => Err(error),
        }
    }

    pub(in crate::driver::channel) fn receiver_dropped(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if let Gate::Live = self.recv_gate(id) {
            let wake = if mutant::active("drop_wake_skipped") { &mut Wakeups::default() } else { wake };
            // Never fails for a live receiver; the only errors are about the loss.
            let _ = self.receiver_stops(id, wake);
        }
    }
}
