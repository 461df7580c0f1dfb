//! What the table judges an attempt by (its args digest and its method's
//! policy) and the table's limits ([`OperationConfig`]).

use std::time::Duration;

/// A digest of a request's serialized args, used to detect a reused id with
/// different args (rule `retry.op-id`).
///
/// It must be computed over bytes that are the same for every attempt: if the
/// args encoding embeds channel ids (fresh per attempt, rule
/// `retry.channel.volatile.rebinding`), hash a form with those ids left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgsDigest(pub [u8; 32]);

impl ArgsDigest {
    /// BLAKE3 of the args bytes.
    pub fn of(args: &[u8]) -> ArgsDigest {
        ArgsDigest(*blake3::hash(args).as_bytes())
    }
}

/// Per-method retry policy (PROTOCOL.md section 10). The default is
/// volatile and non-idem, the safe choice: nothing kept, nothing re-run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MethodPolicy {
    /// Running the method twice has the same effect as running it once, so a
    /// retry whose earlier outcome is unknown or gone may run it again.
    pub idem: bool,
    /// The final outcome (including a user error) is kept and replayed to
    /// duplicates; otherwise it is delivered and dropped (`Released`).
    pub persist: bool,
}

/// Limits of the session's operation table (PROTOCOL.md section 10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationConfig {
    /// How long a finished record (Sealed, Released, Indeterminate) is kept
    /// after it finished. A Live record never expires.
    pub ttl: Duration,
    /// The most records (of any state) the table holds. When a new id arrives
    /// at capacity, the finished record closest to expiry is expired early
    /// (its id is then rejected as
    /// `Rejection::Expired`, exactly as after
    /// its TTL); if every record is Live, the attempt gets
    /// `Rejection::Full`.
    pub max_records: usize,
    /// The most attempts attached to one Live execution; one more gets
    /// `Rejection::TooManyWaiters`.
    /// Waiters of a dead attachment should be removed with
    /// `OperationTable::detach`.
    pub max_waiters_per_op: usize,
    /// How many expired ids are remembered exactly. Older ones fold into a
    /// watermark: every id at or below the highest forgotten id that has no
    /// record is rejected as expired. This is never unsafe (an expired id is
    /// never taken as new) but may reject a genuinely new id that is lower
    /// than the watermark, i.e. a first attempt that arrives after later
    /// calls' records already expired; with increasing ids that is a call
    /// delayed by more than a TTL, which fails closed.
    pub max_expired_ids: usize,
}

impl Default for OperationConfig {
    fn default() -> Self {
        OperationConfig {
            ttl: Duration::from_secs(60),
            max_records: 4096,
            max_waiters_per_op: 8,
            max_expired_ids: 4096,
        }
    }
}
