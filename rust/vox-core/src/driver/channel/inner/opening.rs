//! Opening channels: ours (allocated here, announced by the driver in a
//! request) and the peer's (announced in its request, held as `Pending`
//! until the handler binds them).

use std::mem;

use super::{Inner, ended};
use crate::driver::channel::error::{CloseCause, LocalError, ViolationKind};
use crate::driver::channel::state::{
    ChannelEntry, ChannelState, Closing, Early, Half, ItemQueue, RecvHalf, Role, WakerSlot,
};
use crate::wire::{ChannelDecl, ChannelDirection, ChannelId};

impl Inner {
    pub(in crate::driver::channel) fn create_outgoing(
        &mut self,
        direction: ChannelDirection,
        initial_credit: u32,
    ) -> Result<ChannelDecl, LocalError> {
        if let Some(loss) = &self.lost {
            return Err(LocalError::ConnectionLost(loss.clone()));
        }
        if self.channels.len() >= self.config.max_channels {
            return Err(LocalError::TooManyChannels { max: self.config.max_channels });
        }
        if initial_credit > self.config.max_initial_credit {
            return Err(LocalError::CreditAboveLimit { credit: initial_credit, max: self.config.max_initial_credit });
        }
        // rule: rpc.channel.allocation — caller allocates, local parity, increasing.
        let raw = self.local_ids.allocate().ok_or(LocalError::IdSpaceExhausted)?;
        self.highest_local = Some(raw);
        let id = ChannelId(raw);
        let half = match direction {
            ChannelDirection::CallerToHandler => Half::Sending { credit: initial_credit },
            ChannelDirection::HandlerToCaller => Half::Receiving(RecvHalf::new(initial_credit)),
        };
        self.channels.insert(id, ChannelEntry { waker: WakerSlot::new(), state: ChannelState::Open(half) });
        Ok(ChannelDecl { id, direction, initial_credit })
    }

    // --- remote announce

    pub(in crate::driver::channel) fn on_remote_announce(
        &mut self,
        decls: &[ChannelDecl],
    ) -> Result<(), crate::driver::channel::Violation> {
        if self.lost.is_some() {
            return Ok(());
        }
        let remote = self.config.local_parity.opposite();
        let mut highest = self.remote_ids.highest();
        // Validate everything first so a bad request leaves no partial state.
        for (index, decl) in decls.iter().enumerate() {
            let fail = |kind| Err(crate::driver::channel::Violation { id: decl.id, kind });
            let raw = decl.id.0;
            if raw == 0 {
                return fail(ViolationKind::ReservedId);
            }
            // rule: rpc.channel.allocation — the announcer uses its own parity.
            if decl.id.parity() != remote {
                return fail(ViolationKind::WrongParity);
            }
            if let Some(h) = highest {
                if raw <= h {
                    let seen =
                        raw == h || self.channels.contains_key(&decl.id) || self.tombstones.get(decl.id).is_some();
                    return fail(if seen { ViolationKind::Duplicate } else { ViolationKind::NotIncreasing });
                }
            }
            if decl.initial_credit > self.config.max_initial_credit {
                return fail(ViolationKind::CreditAboveLimit {
                    credit: decl.initial_credit,
                    max: self.config.max_initial_credit,
                });
            }
            if self.channels.len().saturating_add(index).saturating_add(1) > self.config.max_channels {
                return fail(ViolationKind::TooManyChannels { max: self.config.max_channels });
            }
            highest = Some(raw);
        }
        for decl in decls {
            // The handler holds the other end from the caller: CallerToHandler means we receive.
            let early = match decl.direction {
                ChannelDirection::CallerToHandler => Early::Receiving {
                    items: ItemQueue::new(),
                    window: decl.initial_credit,
                    outstanding: decl.initial_credit,
                    closed: false,
                },
                ChannelDirection::HandlerToCaller => Early::Sending { credit: decl.initial_credit, reset: false },
            };
            self.channels
                .insert(decl.id, ChannelEntry { waker: WakerSlot::new(), state: ChannelState::Pending(early) });
            self.remote_ids.insert(decl.id.0);
        }
        Ok(())
    }

    pub(in crate::driver::channel) fn bind(&mut self, id: ChannelId) -> Result<(), LocalError> {
        if let Some(loss) = &self.lost {
            return Err(LocalError::ConnectionLost(loss.clone()));
        }
        let entry = self.channels.get_mut(&id).ok_or(LocalError::UnknownChannel(id))?;
        let ChannelState::Pending(early) = &mut entry.state else {
            return Err(LocalError::AlreadyBound(id));
        };
        // rule: rpc.channel.early-items — early items first, then the early close/reset.
        entry.state = match early {
            Early::Receiving { items, window, outstanding, closed } => {
                let queue = mem::take(items);
                match (*closed, queue.is_empty()) {
                    (true, true) => ended(Role::Receiver, CloseCause::Closed, true, false),
                    (true, false) => ChannelState::Closing(Closing::ReceiverDraining { queue }),
                    (false, _) => ChannelState::Open(Half::Receiving(RecvHalf {
                        queue,
                        window: *window,
                        outstanding: *outstanding,
                        consumed_since_grant: 0,
                        grant_pending: 0,
                    })),
                }
            }
            Early::Sending { credit, reset } => {
                if *reset {
                    ended(Role::Sender, CloseCause::Reset, true, false)
                } else {
                    ChannelState::Open(Half::Sending { credit: *credit })
                }
            }
        };
        Ok(())
    }
}
