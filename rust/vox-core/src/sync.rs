//! Synchronisation primitives used by vox-core's production code.
//!
//! Everything that shares state between tasks imports its `Arc`, `Mutex` and
//! atomics from here, never from `std` or `parking_lot` directly, so that a
//! `--cfg loom` build swaps in loom's model-checked versions and the loom
//! models exercise exactly the code that ships.

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
