//! Peer events: `ChannelItem`, `CloseChannel`, `ResetChannel`, `GrantCredit`.
//! Each checks the guard of the channel's current state and either applies
//! one transition or returns the violated rule, leaving the state untouched.

use std::mem;

use bytes::Bytes;

use super::{Inner, ended};
use crate::driver::channel::Wakeups;
use crate::driver::channel::error::{CloseCause, ItemOutcome, LossCause, RemoteOutcome, ViolationKind};
use crate::driver::channel::state::{ChannelState, Closing, Early, Half, Role};
use crate::mutant;
use crate::wire::ChannelId;

/// A peer message kind, for the rules shared by live and remembered channels.
#[derive(Clone, Copy, Debug)]
pub(super) enum Msg {
    Item,
    Close,
    Reset,
    Grant,
}

impl Msg {
    /// Only the sender sends items and closes; only the receiver sends resets
    /// and grants. So a message of this kind requires us to hold this role.
    fn our_role(self) -> Role {
        match self {
            Msg::Item | Msg::Close => Role::Receiver,
            Msg::Reset | Msg::Grant => Role::Sender,
        }
    }
}

/// How a message for an ended (or forgotten) channel is tolerated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// An item in flight when we reset.
    DiscardAfterReset,
    /// Crossed our own close or reset.
    Crossing,
    /// The id's state is gone: a late message.
    Late,
    /// A grant from the receiver after its own reset.
    GrantAfterReset,
}

/// rule: rpc.channel.crossing — what is tolerated after a channel ended,
/// judged from our role and whether the peer's own end already arrived.
pub(super) fn judge_ended(role: Role, peer_ended: &mut bool, msg: Msg) -> Result<Verdict, ViolationKind> {
    if role != msg.our_role() {
        return Err(ViolationKind::WrongDirection);
    }
    match msg {
        // rule: rpc.channel.close — nothing may follow the sender's close.
        Msg::Item if *peer_ended => Err(ViolationKind::ItemAfterClose),
        // rule: rpc.channel.reset — otherwise we reset: in-flight items are discarded.
        Msg::Item => Ok(Verdict::DiscardAfterReset),
        Msg::Close if *peer_ended => Err(ViolationKind::CloseAfterClose),
        Msg::Close => {
            *peer_ended = true;
            Ok(Verdict::Crossing)
        }
        // The receiver reset and still granted: it broke no rule, the grant
        // just has nothing left to add to.
        Msg::Grant if *peer_ended => Ok(Verdict::GrantAfterReset),
        Msg::Grant => Ok(Verdict::Crossing),
        Msg::Reset if *peer_ended => Err(ViolationKind::ResetAfterReset),
        Msg::Reset => {
            *peer_ended = true;
            Ok(Verdict::Crossing)
        }
    }
}

impl Inner {
    // --- remote events

    pub(in crate::driver::channel) fn on_remote_item(
        &mut self,
        id: ChannelId,
        item: Bytes,
        wake: &mut Wakeups,
    ) -> Result<ItemOutcome, ViolationKind> {
        if self.lost.is_some() {
            return Ok(ItemOutcome::ConnectionLost);
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            return match self.absent(id, Msg::Item)? {
                Verdict::DiscardAfterReset => Ok(self.discard_after_reset(id)),
                // Only grants get this verdict, never an item.
                Verdict::Late | Verdict::Crossing | Verdict::GrantAfterReset => Ok(ItemOutcome::DiscardedLate),
            };
        };
        if entry.role() != Role::Receiver {
            return Err(ViolationKind::WrongDirection);
        }
        match &mut entry.state {
            ChannelState::Pending(Early::Receiving { items, outstanding, closed, .. }) => {
                if *closed && !mutant::active("item_after_close") {
                    return Err(ViolationKind::ItemAfterClose);
                }
                // rule: rpc.channel.early-items — bounded by the initial credit,
                // since nothing can have been granted before bind.
                *outstanding = outstanding.checked_sub(1).ok_or(ViolationKind::ItemWithoutCredit)?;
                items.push_back(item);
                let depth = items.len();
                self.note_depth(depth);
                Ok(ItemOutcome::Buffered)
            }
            ChannelState::Open(Half::Receiving(half)) => {
                if mutant::active("credit_unchecked") {
                    half.outstanding = half.outstanding.max(1);
                }
                // rule: rpc.flow-control.credit — received never exceeds granted.
                half.outstanding = half.outstanding.checked_sub(1).ok_or(ViolationKind::ItemWithoutCredit)?;
                half.queue.push_back(item);
                let depth = half.queue.len();
                wake.push(entry.waker.take());
                self.note_depth(depth);
                Ok(ItemOutcome::Delivered)
            }
            ChannelState::Closing(Closing::ReceiverDraining { queue }) if mutant::active("item_after_close") => {
                queue.push_back(item);
                Ok(ItemOutcome::Delivered)
            }
            // rule: rpc.channel.close
            ChannelState::Closing(Closing::ReceiverDraining { .. }) => Err(ViolationKind::ItemAfterClose),
            // rule: rpc.channel.reset
            ChannelState::Closing(Closing::ReceiverResetPending) => Ok(self.discard_after_reset(id)),
            ChannelState::Closed(closed) => match judge_ended(Role::Receiver, &mut closed.peer_ended, Msg::Item)? {
                Verdict::DiscardAfterReset => Ok(self.discard_after_reset(id)),
                Verdict::Late | Verdict::Crossing | Verdict::GrantAfterReset => Ok(ItemOutcome::DiscardedLate),
            },
            _ => Err(ViolationKind::WrongDirection),
        }
    }

    pub(in crate::driver::channel) fn on_remote_close(
        &mut self,
        id: ChannelId,
        wake: &mut Wakeups,
    ) -> Result<RemoteOutcome, ViolationKind> {
        if self.lost.is_some() {
            return Ok(RemoteOutcome::ConnectionLost);
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            let verdict = self.absent(id, Msg::Close)?;
            return Ok(self.tolerated(id, verdict));
        };
        if entry.role() != Role::Receiver {
            return Err(ViolationKind::WrongDirection);
        }
        match &mut entry.state {
            ChannelState::Pending(Early::Receiving { closed, .. }) => {
                if *closed {
                    return Err(ViolationKind::CloseAfterClose);
                }
                *closed = true;
                Ok(RemoteOutcome::Buffered)
            }
            ChannelState::Open(Half::Receiving(half)) => {
                // rule: rpc.channel.close — queued items are still delivered; a
                // grant still owed is pointless now and is dropped with the half.
                let queue = mem::take(&mut half.queue);
                entry.state = if queue.is_empty() {
                    ended(Role::Receiver, CloseCause::Closed, true, false)
                } else {
                    ChannelState::Closing(Closing::ReceiverDraining { queue })
                };
                wake.push(entry.waker.take());
                Ok(RemoteOutcome::Applied)
            }
            ChannelState::Closing(Closing::ReceiverDraining { .. }) => Err(ViolationKind::CloseAfterClose),
            ChannelState::Closing(Closing::ReceiverResetPending) => {
                // rule: rpc.channel.crossing — the sender closed before seeing our
                // reset: the entry is finished and the reset need not be sent.
                entry.state = ended(Role::Receiver, CloseCause::Reset, true, true);
                self.settle(id);
                Ok(self.tolerated(id, Verdict::Crossing))
            }
            ChannelState::Closed(closed) => {
                let verdict = judge_ended(Role::Receiver, &mut closed.peer_ended, Msg::Close)?;
                Ok(self.tolerated(id, verdict))
            }
            _ => Err(ViolationKind::WrongDirection),
        }
    }

    pub(in crate::driver::channel) fn on_remote_reset(
        &mut self,
        id: ChannelId,
        wake: &mut Wakeups,
    ) -> Result<RemoteOutcome, ViolationKind> {
        if self.lost.is_some() {
            return Ok(RemoteOutcome::ConnectionLost);
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            let verdict = self.absent(id, Msg::Reset)?;
            return Ok(self.tolerated(id, verdict));
        };
        if entry.role() != Role::Sender {
            return Err(ViolationKind::WrongDirection);
        }
        match &mut entry.state {
            ChannelState::Pending(Early::Sending { reset, .. }) => {
                if *reset {
                    return Err(ViolationKind::ResetAfterReset);
                }
                *reset = true;
                Ok(RemoteOutcome::Buffered)
            }
            ChannelState::Open(Half::Sending { .. }) => {
                // rule: rpc.channel.reset — the sender's next send reports it.
                entry.state = ended(Role::Sender, CloseCause::Reset, true, false);
                wake.push(entry.waker.take());
                Ok(RemoteOutcome::Applied)
            }
            ChannelState::Closing(Closing::SenderClosePending) => {
                // Our close has not left yet and is no longer needed; the handle
                // already let go, so the entry is finished.
                entry.state = ended(Role::Sender, CloseCause::Reset, true, true);
                self.settle(id);
                Ok(RemoteOutcome::Applied)
            }
            ChannelState::Closed(closed) => {
                let verdict = judge_ended(Role::Sender, &mut closed.peer_ended, Msg::Reset)?;
                Ok(self.tolerated(id, verdict))
            }
            _ => Err(ViolationKind::WrongDirection),
        }
    }

    pub(in crate::driver::channel) fn on_remote_grant(
        &mut self,
        id: ChannelId,
        additional: u32,
        wake: &mut Wakeups,
    ) -> Result<RemoteOutcome, ViolationKind> {
        if self.lost.is_some() {
            return Ok(RemoteOutcome::ConnectionLost);
        }
        let Some(entry) = self.channels.get_mut(&id) else {
            let verdict = self.absent(id, Msg::Grant)?;
            return Ok(self.tolerated(id, verdict));
        };
        if entry.role() != Role::Sender {
            return Err(ViolationKind::WrongDirection);
        }
        match &mut entry.state {
            ChannelState::Pending(Early::Sending { credit, reset }) => {
                if *reset {
                    return Ok(self.tolerated(id, Verdict::GrantAfterReset));
                }
                *credit = credit.checked_add(additional).ok_or(ViolationKind::GrantOverflow)?;
                Ok(RemoteOutcome::Buffered)
            }
            ChannelState::Open(Half::Sending { credit }) => {
                // rule: rpc.flow-control.credit — credit is only ever added, never past u32.
                *credit = credit.checked_add(additional).ok_or(ViolationKind::GrantOverflow)?;
                wake.push(entry.waker.take());
                Ok(RemoteOutcome::Applied)
            }
            // rule: rpc.channel.crossing — a grant after our close is ignored.
            ChannelState::Closing(Closing::SenderClosePending) => Ok(self.tolerated(id, Verdict::Crossing)),
            ChannelState::Closed(closed) => {
                let verdict = judge_ended(Role::Sender, &mut closed.peer_ended, Msg::Grant)?;
                Ok(self.tolerated(id, verdict))
            }
            _ => Err(ViolationKind::WrongDirection),
        }
    }

    pub(in crate::driver::channel) fn on_connection_lost(&mut self, cause: LossCause, wake: &mut Wakeups) {
        if self.lost.is_some() {
            return;
        }
        // Pending entries have no handle to tell; the others end with the loss
        // and wait for their handle to observe it.
        self.channels.retain(|_, entry| {
            wake.push(entry.waker.take());
            if matches!(entry.state, ChannelState::Pending(_)) {
                return false;
            }
            let role = entry.role();
            entry.state = ended(role, CloseCause::ConnectionLost(cause.clone()), false, false);
            true
        });
        self.outbound.clear();
        wake.push(self.outbound.waker.take());
        // Every later event answers with the loss, so no id needs remembering.
        self.tombstones.clear();
        self.lost = Some(cause);
    }
}
