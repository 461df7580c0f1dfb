//! The receive window of an open receiver ([`RecvHalf`]): when consumed
//! items are granted back to the sender, and how the window grows for a
//! consumer that keeps up. Pure arithmetic on the half, no registry state.

use crate::driver::channel::state::{ItemQueue, RecvHalf};

/// A receive window only grows while it holds at most this many bytes of
/// items the size of the last one taken, each counted with its queue entry
/// (see [`RecvHalf::consumed`]).
const GROWN_WINDOW_BYTES: usize = 256 * 1024;

/// What one queued item costs beside its bytes: its entry in the queue.
/// Counting it keeps a window of tiny items (a `u64` is one to ten bytes)
/// within [`GROWN_WINDOW_BYTES`] of memory too, not only of payload.
const QUEUE_ENTRY_BYTES: usize = std::mem::size_of::<bytes::Bytes>();

impl RecvHalf {
    pub(super) fn new(window: u32) -> RecvHalf {
        RecvHalf { queue: ItemQueue::new(), window, outstanding: window, consumed_since_grant: 0, grant_pending: 0 }
    }

    /// The consumer took one item of `item_len` bytes. Returns whether a
    /// grant became due: with a window W > 0, consumed items are granted back
    /// in batches of `max(1, W / 2)` so grants stay cheap yet the sender
    /// never starves.
    ///
    /// The window also grows here (receive-window tuning): if the consumer
    /// has emptied the queue when a grant falls due, the window and not the
    /// consumer sets the pace, so the grant also doubles the window, up to
    /// `max_window` items (`RegistryConfig::max_receive_window`) and to
    /// [`GROWN_WINDOW_BYTES`] worth of items of this size with their queue
    /// entries. A window never shrinks below the initial credit, and a slow
    /// consumer never grows it.
    pub(super) fn consumed(&mut self, item_len: usize, max_window: u32) -> bool {
        if self.window == 0 {
            return false;
        }
        self.consumed_since_grant = self.consumed_since_grant.saturating_add(1);
        let batch = (self.window / 2).max(1);
        if self.consumed_since_grant < batch {
            return false;
        }
        // Bounded by the window through the receiver invariant.
        self.grant_pending = self.grant_pending.saturating_add(self.consumed_since_grant);
        self.consumed_since_grant = 0;
        if self.queue.is_empty() {
            let by_bytes = u32::try_from(GROWN_WINDOW_BYTES / (item_len + QUEUE_ENTRY_BYTES)).unwrap_or(u32::MAX);
            let grown = self.window.saturating_mul(2).min(max_window).min(by_bytes);
            if grown > self.window {
                // Window and pending grant grow together: the invariant holds.
                self.grant_pending = self.grant_pending.saturating_add(grown - self.window);
                self.window = grown;
            }
        }
        true
    }

    /// The consumer waits on an empty queue. With a zero window nothing is
    /// ever granted back by consumption, so grant one item at a time, when
    /// the sender holds no credit and no grant is on its way already.
    pub(super) fn waiting_on_empty(&mut self) -> bool {
        if self.window == 0 && self.outstanding == 0 && self.grant_pending == 0 {
            self.grant_pending = 1;
            return true;
        }
        false
    }
}
