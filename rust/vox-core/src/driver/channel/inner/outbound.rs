//! The flush: control messages (grants, closes, resets) owed to the peer,
//! queued by channel id as events make them due and written out when the
//! driver polls [`Inner::poll_outbound`].

use std::collections::{HashSet, VecDeque};
use std::task::{Context, Poll, Waker};

use super::{Inner, ended};
use crate::driver::channel::Wakeups;
use crate::driver::channel::error::CloseCause;
use crate::driver::channel::state::{ChannelState, Closing, Half, Role};
use crate::wire::{ChannelId, Metadata, Payload};

/// Control messages owed to the peer: a FIFO of channel ids, each present at
/// most once (guarded by `queued`); what to send is read from the channel's
/// state at flush time, so repeated events coalesce. The membership set lives
/// here rather than as a flag in each map entry: only channels with a flush
/// owed pay for it, and a flag would make every entry a word larger.
#[derive(Debug, Default)]
pub(super) struct DueQueue {
    fifo: VecDeque<ChannelId>,
    queued: HashSet<ChannelId>,
    pub(super) waker: Option<Waker>,
}

impl DueQueue {
    pub(super) fn due(&mut self, id: ChannelId, wake: &mut Wakeups) {
        if self.queued.insert(id) {
            self.fifo.push_back(id);
        }
        wake.push(self.waker.take());
    }

    pub(super) fn pop(&mut self) -> Option<ChannelId> {
        let id = self.fifo.pop_front()?;
        self.queued.remove(&id);
        Some(id)
    }

    pub(super) fn is_queued(&self, id: ChannelId) -> bool {
        self.queued.contains(&id)
    }

    pub(super) fn clear(&mut self) {
        self.fifo.clear();
        self.queued.clear();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

impl Inner {
    pub(in crate::driver::channel) fn poll_outbound(&mut self, cx: &Context<'_>, out: &mut Vec<Payload>) -> Poll<()> {
        let before = out.len();
        while let Some(id) = self.outbound.pop() {
            // An entry removed meanwhile (e.g. by connection loss) owes nothing.
            let Some(entry) = self.channels.get_mut(&id) else { continue };
            match &mut entry.state {
                ChannelState::Open(Half::Receiving(half)) if half.grant_pending != 0 => {
                    // rule: rpc.flow-control.credit — the sender only holds credit once told.
                    out.push(Payload::GrantCredit { id, additional: half.grant_pending });
                    half.outstanding = half.outstanding.saturating_add(half.grant_pending);
                    half.grant_pending = 0;
                }
                ChannelState::Closing(Closing::SenderClosePending) => {
                    out.push(Payload::CloseChannel { id, metadata: Metadata::default() });
                    entry.state = ended(Role::Sender, CloseCause::Closed, false, true);
                }
                ChannelState::Closing(Closing::ReceiverResetPending) => {
                    out.push(Payload::ResetChannel { id, metadata: Metadata::default() });
                    entry.state = ended(Role::Receiver, CloseCause::Reset, false, true);
                }
                // Superseded since it became due (e.g. our close crossed the peer's reset).
                _ => {}
            }
            self.settle(id);
        }
        if out.len() > before {
            Poll::Ready(())
        } else {
            register(&mut self.outbound.waker, cx);
            Poll::Pending
        }
    }
}
