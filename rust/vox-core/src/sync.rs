//! Synchronisation primitives used by vox-core's production code.
//!
//! Everything that shares state between tasks imports its `Arc`, `Mutex` and
//! atomics from here, never from `std` or `parking_lot` directly, so that a
//! `--cfg loom` build swaps in loom's model-checked versions and the loom
//! models exercise exactly the code that ships.
//!
//! The one wake-up primitive, [`Signal`], is written here on top of those
//! shimmed types instead of being re-exported from tokio: tokio's `Notify`
//! keeps its state in std atomics that loom cannot see, so the same source
//! serves both builds and the loom models check the shipped wake-up.

#[cfg(not(loom))]
mod imp {
    pub use parking_lot::{Mutex, MutexGuard};
    pub use std::sync::Arc;
    pub use std::sync::atomic;
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::MutexGuard;
    pub use loom::sync::atomic;

    /// loom's mutex with a `parking_lot`-shaped API: `lock()` returns the
    /// guard directly, so production code is identical under both builds.
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// Wraps `value` in a mutex.
        pub fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        /// Locks the mutex. Poisoning is ignored, as `parking_lot` does: the
        /// code under these locks does not panic on any reachable path, so a
        /// poisoned lock would only follow a bug the loom run reports anyway.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            match self.0.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            }
        }
    }
}

pub use imp::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
pub use imp::{Arc, Mutex, MutexGuard, atomic};

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// A single-waiter wake-up with a stored permit (the subset of tokio's
/// `Notify::notify_one` / `notified` the control mailbox needs).
///
/// [`Signal::notify`] stores a permit and wakes the registered waiter, if
/// any; [`Signal::poll_wait`] consumes the permit or registers the caller's
/// waker. A notify that happens before the waiter registers is therefore kept,
/// not lost. Only one task may wait at a time (the mailbox's run loop): a
/// second waiter replaces the first's waker.
///
/// Permit and waker live under one mutex, not in an atomic beside it: the
/// check-then-register must be atomic with respect to `notify`, and a lock
/// makes that evident (the control plane posts rarely; the lock is cheap).
#[derive(Debug, Default)]
pub struct Signal {
    state: Mutex<SignalState>,
}

#[derive(Debug, Default)]
struct SignalState {
    permit: bool,
    waiter: Option<Waker>,
}

impl Signal {
    /// A signal with no stored permit and no waiter.
    pub fn new() -> Signal {
        Signal { state: Mutex::new(SignalState::default()) }
    }

    /// Stores a permit and wakes the waiter. Never waits for the waiter.
    pub fn notify(&self) {
        let waiter = {
            let mut state = self.state.lock();
            state.permit = true;
            state.waiter.take()
        };
        // Woken outside the lock: the waker may run the waiter's poll inline.
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// `Ready` once a permit is available (consuming it); otherwise registers
    /// `cx`'s waker and returns `Pending`.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if std::mem::take(&mut state.permit) {
            return Poll::Ready(());
        }
        state.waiter = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Waits for a permit. Cancel-safe: dropping the future consumes nothing.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_wait(cx))
    }
}
