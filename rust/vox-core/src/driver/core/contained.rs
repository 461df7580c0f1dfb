//! Panic containment for handlers polled in place. A plain call's handler
//! runs inside the request's own task (or on the receive loop for its first
//! poll) instead of a task of its own, so it needs the isolation a task
//! would have given it.

use crate::driver::handler::BoxFuture;
use std::task::{Context, Poll};

/// A handler future polled in place, with panics caught the way a task
/// catches them: the panicking future is dropped (with it its reply sink,
/// so the caller gets `HandlerFailed`) and the process goes on.
pub(super) struct Contained(Option<BoxFuture>);

impl Contained {
    /// Creates the handler's future; a panic while creating it is contained
    /// like one while polling it (the call, with its reply sink, is dropped).
    pub(super) fn start(make: impl FnOnce() -> BoxFuture) -> Contained {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) {
            Ok(fut) => Contained(Some(fut)),
            Err(_) => {
                tracing::debug!("handler panicked");
                Contained(None)
            }
        }
    }

    pub(super) fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Drops the handler (cancellation); a panic while dropping is contained too.
    pub(super) fn stop(&mut self) {
        let dead = self.0.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(dead)));
    }
}

impl std::future::Future for Contained {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        use std::panic::{AssertUnwindSafe, catch_unwind};
        let Some(fut) = self.0.as_mut() else { return Poll::Ready(()) };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.0 = None;
                Poll::Ready(())
            }
            Err(_) => {
                tracing::debug!("handler panicked");
                // Dropping a future that panicked may panic again.
                self.stop();
                Poll::Ready(())
            }
        }
    }
}
