//! What the table judges an attempt by (its args digest and its method's
//! policy) and the table's limits ([`OperationConfig`]).

use std::time::Duration;

/// A digest of a request's serialized args, used to detect a reused id with
/// different args (rule `retry.op-id`).
///
/// It must be computed over bytes that are the same for every attempt: if the
/// args encoding embeds channel ids (fresh per attempt, rule
/// `retry.channel.volatile.rebinding`), hash a form with those ids left out.
///
/// A digest is only ever compared with the digest of another attempt of the
/// same operation id, inside this process, so it needs neither to be stable
/// across processes nor to resist anyone who knows its key:
/// - args of at most [`SMALL_ARGS`] bytes (nearly every call) take a 64-bit
///   SipHash-1-3 under a key drawn once per process, followed by their
///   length. That costs about a third of BLAKE3 on a 64-byte argument, the
///   digest was 4-6 % of a small call's instructions (docs/perf.md), and a
///   peer that cannot read the key cannot aim for a collision;
/// - larger args take the first 128 bits of BLAKE3, whose SIMD path is the
///   faster one there. Two args of different lengths never compare equal,
///   so the two kinds never meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgsDigest(pub [u8; 16]);

/// The largest args digested with the keyed SipHash; see [`ArgsDigest`].
pub const SMALL_ARGS: usize = 1024;

impl ArgsDigest {
    /// The digest of the args bytes.
    pub fn of(args: &[u8]) -> ArgsDigest {
        use std::hash::{BuildHasher, Hasher};
        static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let mut out = [0u8; 16];
        if args.len() <= SMALL_ARGS {
            let mut h = KEY.get_or_init(std::hash::RandomState::new).build_hasher();
            h.write(args);
            out[..8].copy_from_slice(&h.finish().to_le_bytes());
            out[8..].copy_from_slice(&(args.len() as u64).to_le_bytes());
        } else {
            out.copy_from_slice(&blake3::hash(args).as_bytes()[..16]);
        }
        ArgsDigest(out)
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

#[cfg(test)]
mod tests {
    use super::{ArgsDigest, SMALL_ARGS};

    // rule: retry.op-id — a reused id is judged by its args: the same
    // bytes give the same digest, and different bytes (same length or
    // not, on either side of the small/large boundary) a different one.
    #[test]
    fn retry_op_id_args_digest_tells_args_apart() {
        let small = vec![7u8; 64];
        let mut small2 = small.clone();
        small2[63] = 8;
        let large = vec![7u8; SMALL_ARGS + 1];
        let mut large2 = large.clone();
        large2[0] = 8;
        let edge = vec![7u8; SMALL_ARGS];
        assert_eq!(ArgsDigest::of(&small), ArgsDigest::of(&small.clone()));
        assert_eq!(ArgsDigest::of(&large), ArgsDigest::of(&large.clone()));
        let all = [&small[..], &small2, &small[..63], &[], &edge, &large, &large2];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(ArgsDigest::of(a), ArgsDigest::of(b), "{} and {} bytes", a.len(), b.len());
            }
        }
    }
}
