//! Abuse budgets (rule `session.abuse-budget`): behaviour that is legal once
//! but costly when a peer repeats it without end is metered per session, as
//! HTTP/2 servers meter stream resets since the rapid-reset attacks.
//!
//! Each budget is a token bucket: it holds up to `burst` tokens, refills at
//! `per_second`, and every metered event takes one token. A peer that finds
//! the bucket empty has exceeded the budget: the session answers with a
//! `ProtocolError` naming it and tears down. The buckets are pure state:
//! the caller passes the current time, so tests drive them without a clock.

use tokio::time::Instant;

/// One budget's size: a burst, and a sustained rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Events allowed at once, from a full bucket.
    pub burst: u32,
    /// Events allowed per second, sustained. 0 means the burst is all there
    /// is for the whole session.
    pub per_second: u32,
}

impl BudgetConfig {
    /// A budget that never runs out (for tests and trusted peers).
    pub const UNLIMITED: BudgetConfig = BudgetConfig { burst: u32::MAX, per_second: u32::MAX };
}

/// The per-session abuse budgets. The defaults are generous: far above what
/// a correct client does, low enough that a peer cannot keep the session
/// busy without limit.
///
/// ```
/// use vox_core::session::{AbuseBudgets, BudgetConfig, SessionBuilder};
/// let mut builder = SessionBuilder::new();
/// builder.config_mut().budgets = AbuseBudgets {
///     pings: BudgetConfig { burst: 10, per_second: 1 },
///     ..AbuseBudgets::default()
/// };
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbuseBudgets {
    /// Requests the peer cancels (`CancelRequest`) while they are still in
    /// flight. Default: burst 10,000, 1,000 per second.
    pub cancelled_requests: BudgetConfig,
    /// Messages tolerated as late under the crossing rules (for an id
    /// already released) and discarded. Default: burst 10,000, 1,000 per
    /// second.
    pub late_messages: BudgetConfig,
    /// `Ping`s from the peer. Default: burst 1,000, 100 per second.
    pub pings: BudgetConfig,
    /// The peer's `OpenConnection`s that this side rejects. Default: burst
    /// 1,000, 100 per second.
    pub rejected_opens: BudgetConfig,
}

impl Default for AbuseBudgets {
    fn default() -> Self {
        AbuseBudgets {
            cancelled_requests: BudgetConfig { burst: 10_000, per_second: 1_000 },
            late_messages: BudgetConfig { burst: 10_000, per_second: 1_000 },
            pings: BudgetConfig { burst: 1_000, per_second: 100 },
            rejected_opens: BudgetConfig { burst: 1_000, per_second: 100 },
        }
    }
}

impl AbuseBudgets {
    /// Budgets that never run out.
    pub const UNLIMITED: AbuseBudgets = AbuseBudgets {
        cancelled_requests: BudgetConfig::UNLIMITED,
        late_messages: BudgetConfig::UNLIMITED,
        pings: BudgetConfig::UNLIMITED,
        rejected_opens: BudgetConfig::UNLIMITED,
    };
}

/// Which budget an event is metered against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetKind {
    /// [`AbuseBudgets::cancelled_requests`].
    CancelledRequests,
    /// [`AbuseBudgets::late_messages`].
    LateMessages,
    /// [`AbuseBudgets::pings`].
    Pings,
    /// [`AbuseBudgets::rejected_opens`].
    RejectedOpens,
}

impl BudgetKind {
    /// The budget's name, as it appears in the `ProtocolError`.
    pub fn name(self) -> &'static str {
        match self {
            BudgetKind::CancelledRequests => "cancelled-requests",
            BudgetKind::LateMessages => "late-messages",
            BudgetKind::Pings => "pings",
            BudgetKind::RejectedOpens => "rejected-opens",
        }
    }
}

/// A peer exceeded a budget.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "abuse budget `{name}` exceeded by the peer: more than {burst} at once or {per_second} per second (rule session.abuse-budget)",
    name = kind.name()
)]
pub struct BudgetExceeded {
    /// Which budget.
    pub kind: BudgetKind,
    /// Its burst.
    pub burst: u32,
    /// Its rate.
    pub per_second: u32,
}

/// One token bucket.
#[derive(Clone, Debug)]
struct Bucket {
    config: BudgetConfig,
    /// Tokens, in millitokens so that slow refill rates stay exact enough.
    milli: u64,
    last: Instant,
}

const MILLI: u64 = 1000;

impl Bucket {
    fn new(config: BudgetConfig, now: Instant) -> Bucket {
        Bucket { config, milli: u64::from(config.burst) * MILLI, last: now }
    }

    fn spend(&mut self, kind: BudgetKind, now: Instant) -> Result<(), BudgetExceeded> {
        let cap = u64::from(self.config.burst) * MILLI;
        let elapsed = now.saturating_duration_since(self.last);
        // Refill: per_second tokens per second, in millitokens per ms.
        let refill =
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX).saturating_mul(u64::from(self.config.per_second));
        if refill > 0 {
            self.milli = self.milli.saturating_add(refill).min(cap);
            self.last = now;
        }
        if self.milli < MILLI {
            return Err(BudgetExceeded { kind, burst: self.config.burst, per_second: self.config.per_second });
        }
        self.milli -= MILLI;
        Ok(())
    }
}

/// The state of one session's budgets.
#[derive(Clone, Debug)]
pub(crate) struct Budgets {
    cancelled_requests: Bucket,
    late_messages: Bucket,
    pings: Bucket,
    rejected_opens: Bucket,
}

impl Budgets {
    pub(crate) fn new(config: &AbuseBudgets, now: Instant) -> Budgets {
        Budgets {
            cancelled_requests: Bucket::new(config.cancelled_requests, now),
            late_messages: Bucket::new(config.late_messages, now),
            pings: Bucket::new(config.pings, now),
            rejected_opens: Bucket::new(config.rejected_opens, now),
        }
    }

    /// Meters one event of `kind` at `now`.
    pub(crate) fn spend(&mut self, kind: BudgetKind, now: Instant) -> Result<(), BudgetExceeded> {
        let bucket = match kind {
            BudgetKind::CancelledRequests => &mut self.cancelled_requests,
            BudgetKind::LateMessages => &mut self.late_messages,
            BudgetKind::Pings => &mut self.pings,
            BudgetKind::RejectedOpens => &mut self.rejected_opens,
        };
        bucket.spend(kind, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const KIND: BudgetKind = BudgetKind::Pings;

    #[test]
    fn session_abuse_budget_burst_is_spent_then_refused_naming_the_budget() {
        let t0 = Instant::now();
        let mut b = Bucket::new(BudgetConfig { burst: 3, per_second: 0 }, t0);
        for _ in 0..3 {
            assert_eq!(b.spend(KIND, t0), Ok(()));
        }
        let err = b.spend(KIND, t0).unwrap_err();
        assert_eq!(err.kind, BudgetKind::Pings);
        assert!(err.to_string().contains("`pings`"), "{err}");
        // No refill rate: time does not help.
        assert!(b.spend(KIND, t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn session_abuse_budget_refills_at_its_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(BudgetConfig { burst: 2, per_second: 10 }, t0);
        assert!(b.spend(KIND, t0).is_ok());
        assert!(b.spend(KIND, t0).is_ok());
        assert!(b.spend(KIND, t0).is_err());
        // 100 ms at 10/s is exactly one token.
        assert!(b.spend(KIND, t0 + Duration::from_millis(99)).is_err());
        assert!(b.spend(KIND, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.spend(KIND, t0 + Duration::from_millis(100)).is_err());
        // A long pause refills to the burst, never beyond it.
        let later = t0 + Duration::from_secs(60);
        assert!(b.spend(KIND, later).is_ok());
        assert!(b.spend(KIND, later).is_ok());
        assert!(b.spend(KIND, later).is_err());
    }

    #[test]
    fn session_abuse_budget_sustained_rate_at_the_limit_is_never_refused() {
        let t0 = Instant::now();
        let mut b = Bucket::new(BudgetConfig { burst: 1, per_second: 1000 }, t0);
        for ms in 0..5000u64 {
            assert!(b.spend(KIND, t0 + Duration::from_millis(ms)).is_ok(), "refused at {ms} ms");
        }
    }

    #[test]
    fn session_abuse_budget_unlimited_never_runs_out() {
        let t0 = Instant::now();
        let mut all = Budgets::new(&AbuseBudgets::UNLIMITED, t0);
        for _ in 0..100_000 {
            assert!(all.spend(BudgetKind::LateMessages, t0).is_ok());
        }
    }

    #[test]
    fn session_abuse_budget_kinds_are_metered_separately() {
        let t0 = Instant::now();
        let one = BudgetConfig { burst: 1, per_second: 0 };
        let config = AbuseBudgets { cancelled_requests: one, late_messages: one, pings: one, rejected_opens: one };
        let mut all = Budgets::new(&config, t0);
        for kind in
            [BudgetKind::CancelledRequests, BudgetKind::LateMessages, BudgetKind::Pings, BudgetKind::RejectedOpens]
        {
            assert!(all.spend(kind, t0).is_ok(), "{kind:?}");
            assert_eq!(all.spend(kind, t0).unwrap_err().kind, kind);
        }
    }
}
