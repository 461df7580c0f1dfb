//! The shared slot behind a `Tx`/`Rx` pair: unbound (items buffered up to
//! the initial credit, a waker for the first poll), then bound to a
//! connection's channel registry, then gone. Kept apart from the typed
//! handles so that the one question "is this end bound?" is answered here.

use super::*;

/// What one end of a caller-side pair knows about its binding.
pub(super) enum SlotState {
    /// Not bound yet; the end's handle may be waiting (at most one task: the
    /// handle is not `Clone` and waits through `&mut self` or `self`). A
    /// `Tx` end keeps what was sent before its call, up to the channel's
    /// initial credit, to go out right after the call's `Request`.
    Unbound {
        waker: Option<Waker>,
        early: Early,
    },
    /// Bound, and the call is sending the early items: the handle waits
    /// until they are out, so that nothing it sends later overtakes them.
    Flushing {
        waker: Option<Waker>,
    },
    Bound {
        core: Arc<ConnectionCore>,
        id: ChannelId,
    },
    /// The call failed before announcing the channel.
    Failed(Arc<str>),
    /// This end was dropped before its call bound the channel.
    Abandoned,
}

/// Both ends of a caller-side pair, in one allocation, until they are bound.
/// A bound handle copies its binding out on first use and lets go of this.
pub(crate) struct Pair {
    /// Index 0: the `Tx` end, 1: the `Rx` end.
    pub(super) ends: Mutex<[SlotState; 2]>,
    /// The item translation both typed ends share (`xlate.rs`).
    pub(super) xlate: super::xlate::Xlate,
}

pub(super) fn index(role: Role) -> usize {
    match role {
        Role::Sender => 0,
        Role::Receiver => 1,
    }
}

/// Where a handle finds its channel.
pub(crate) enum ChannelSlot {
    /// Bound: the connection and the id (handler side from the start, caller
    /// side once the call bound it and the handle was used). No allocation.
    Bound { core: Arc<ConnectionCore>, id: ChannelId },
    /// Caller side, possibly not bound yet. The credit is only needed when
    /// an end is handed to a call; kept here, not in the shared pair.
    Paired(Arc<Pair>, u32),
    /// Handed to a call or closed: dropping the handle releases nothing.
    Gone,
}

impl ChannelSlot {
    pub(super) fn pair(xlate: super::xlate::Xlate) -> Arc<Pair> {
        let unbound = || SlotState::Unbound { waker: None, early: Early::default() };
        Arc::new(Pair { ends: Mutex::new([unbound(), unbound()]), xlate })
    }

    pub(crate) fn bound(core: Arc<ConnectionCore>, id: ChannelId) -> ChannelSlot {
        ChannelSlot::Bound { core, id }
    }

    /// Looks at the pair once: `Ready` with the binding (cached in `self`)
    /// or the reason there is none, `Pending` (waker registered) if unbound.
    pub(super) fn poll_bound(&mut self, role: Role, cx: Option<&mut Context<'_>>) -> Poll<Result<(), ChannelError>> {
        let binding = match self {
            ChannelSlot::Bound { .. } => return Poll::Ready(Ok(())),
            ChannelSlot::Gone => return Poll::Ready(Err(ChannelError::Closed)),
            ChannelSlot::Paired(pair, _) => {
                let mut ends = pair.ends.lock();
                match &mut ends[index(role)] {
                    SlotState::Bound { core, id } => (core.clone(), *id),
                    SlotState::Failed(reason) => {
                        return Poll::Ready(Err(ChannelError::NotAnnounced(reason.to_string())));
                    }
                    SlotState::Abandoned => return Poll::Ready(Err(ChannelError::Closed)),
                    SlotState::Unbound { waker, .. } | SlotState::Flushing { waker } => {
                        if let Some(cx) = cx {
                            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                                *waker = Some(cx.waker().clone());
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
        };
        // Cache the binding: later operations skip the pair's lock, and the
        // pair is freed once the call's `ChannelArg` is gone too.
        *self = ChannelSlot::Bound { core: binding.0, id: binding.1 };
        Poll::Ready(Ok(()))
    }

    pub(super) async fn wait_bound(&mut self, role: Role) -> Result<(Arc<ConnectionCore>, ChannelId), ChannelError> {
        std::future::poll_fn(|cx| self.poll_bound(role, Some(cx))).await?;
        self.current(role).ok_or(ChannelError::Closed)
    }

    pub(super) fn current(&mut self, role: Role) -> Option<(Arc<ConnectionCore>, ChannelId)> {
        match self.poll_bound(role, None) {
            Poll::Ready(Ok(())) => match self {
                ChannelSlot::Bound { core, id } => Some((core.clone(), *id)),
                _ => None,
            },
            _ => None,
        }
    }

    /// A caller-side `Tx` whose call is not made yet keeps `item` for it,
    /// within the initial credit (`None`); otherwise the item comes back.
    pub(super) fn keep_early(&mut self, item: Bytes) -> Option<Bytes> {
        let ChannelSlot::Paired(pair, credit) = self else { return Some(item) };
        let mut ends = pair.ends.lock();
        match &mut ends[index(Role::Sender)] {
            SlotState::Unbound { early, .. } if !early.closed && early.items.len() < *credit as usize => {
                early.items.push(item);
                None
            }
            _ => Some(item),
        }
    }

    /// A caller-side `Tx` whose call is not made yet: its close goes out
    /// after the call's request and early items (`true`).
    pub(super) fn close_early(&mut self) -> bool {
        let ChannelSlot::Paired(pair, _) = self else { return false };
        let mut ends = pair.ends.lock();
        match &mut ends[index(Role::Sender)] {
            SlotState::Unbound { early, .. } => {
                early.closed = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn drop_end(&mut self, role: Role) {
        match std::mem::replace(self, ChannelSlot::Gone) {
            ChannelSlot::Bound { core, id } => release(&core, id, role),
            ChannelSlot::Paired(pair, _) => {
                let mut ends = pair.ends.lock();
                let end = &mut ends[index(role)];
                match std::mem::replace(end, SlotState::Abandoned) {
                    SlotState::Bound { core, id } => {
                        drop(ends);
                        release(&core, id, role);
                    }
                    // Items sent before the call still go out after it, then
                    // the close (rule rpc.channel.close: a dropped sender
                    // closes after its items).
                    SlotState::Unbound { mut early, .. } if !early.items.is_empty() => {
                        early.closed = true;
                        *end = SlotState::Unbound { waker: None, early };
                    }
                    SlotState::Unbound { .. } => {}
                    // The call is sending the early items: it closes after them.
                    SlotState::Flushing { .. } => *end = SlotState::Abandoned,
                    other => *end = other,
                }
            }
            ChannelSlot::Gone => {}
        }
    }
}

/// What a caller-side `Tx` did before its call: items to send right after
/// the `Request`, and whether the close follows them.
#[derive(Default)]
pub(crate) struct Early {
    pub(crate) items: Vec<Bytes>,
    pub(crate) closed: bool,
}

/// The end of a pair that a call binds: the end the caller kept.
pub(crate) struct SlotRef {
    pub(super) pair: Arc<Pair>,
    pub(super) role: Role,
}

impl SlotRef {
    /// Called by the call once the request is queued. Returns the items a
    /// `Tx` end took before the call, which the call sends next and then
    /// hands over with [`flushed`](Self::flushed).
    pub(crate) fn bind(&self, core: Arc<ConnectionCore>, id: ChannelId) -> Option<Early> {
        let mut ends = self.pair.ends.lock();
        let end = &mut ends[index(self.role)];
        match end {
            SlotState::Abandoned => {
                drop(ends);
                release(&core, id, self.role);
                None
            }
            SlotState::Unbound { early, waker } if !early.items.is_empty() || early.closed => {
                let early = std::mem::take(early);
                *end = SlotState::Flushing { waker: waker.take() };
                Some(early)
            }
            _ => {
                let waiting = std::mem::replace(end, SlotState::Bound { core, id });
                drop(ends);
                if let SlotState::Unbound { waker: Some(waker), .. } = waiting {
                    waker.wake();
                }
                None
            }
        }
    }

    /// The early items are out (`Ok`), or could not all be sent (`Err`,
    /// the call was dropped or the channel ended): the end becomes usable,
    /// or reports why not. A handle dropped meanwhile releases the channel.
    pub(crate) fn flushed(&self, core: Arc<ConnectionCore>, id: ChannelId, result: Result<bool, String>) {
        let mut ends = self.pair.ends.lock();
        let end = &mut ends[index(self.role)];
        let next = match (&*end, result) {
            (SlotState::Abandoned, _) => {
                drop(ends);
                release(&core, id, self.role);
                return;
            }
            // Closed before the call: no handle is left to use the end.
            (_, Ok(true)) => SlotState::Abandoned,
            (_, Ok(false)) => SlotState::Bound { core, id },
            (_, Err(reason)) => {
                release(&core, id, self.role);
                SlotState::Failed(Arc::from(reason))
            }
        };
        let waiting = std::mem::replace(end, next);
        drop(ends);
        if let SlotState::Flushing { waker: Some(waker) } = waiting {
            waker.wake();
        }
    }

    /// Called when the call failed before announcing the channel.
    pub(super) fn fail(&self, reason: &str) {
        let mut ends = self.pair.ends.lock();
        let end = &mut ends[index(self.role)];
        if let SlotState::Unbound { waker, .. } | SlotState::Flushing { waker } = end {
            let waker = waker.take();
            *end = SlotState::Failed(Arc::from(reason));
            drop(ends);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// rule: rpc.channel.close — a dropped sender closes after its items; a
/// dropped receiver resets (rule: rpc.channel.reset).
pub(super) fn release(core: &ConnectionCore, id: ChannelId, role: Role) {
    core.release(id, role);
}
