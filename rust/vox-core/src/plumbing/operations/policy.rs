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
/// same operation id in the same session, inside this process. A session's
/// table holds the attempts of one peer only, so a collision could only
/// misjudge that peer's own reuse of its own id: the digest needs to tell
/// apart args that differ by accident, not to resist the peer. It is a
/// 64-bit rapidhash (v3) under secrets drawn once per process, followed by
/// the args' length, so args of different lengths never compare equal.
///
/// Why this hash: the digest is computed for every attempt that carries an
/// operation id, over all of its args. BLAKE3, used before for args over
/// 1 KiB, took about 38 % of a 1 MiB echo's instructions (docs/perf.md,
/// session 15) and SipHash-1-3 is no faster on long input; rapidhash reads
/// about five times faster than either on this machine, and on short args
/// it is cheaper than SipHash too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgsDigest(pub [u8; 16]);

impl ArgsDigest {
    /// The digest of the args bytes.
    pub fn of(args: &[u8]) -> ArgsDigest {
        use rapidhash::v3::{RapidSecrets, rapidhash_v3_seeded};
        use std::hash::BuildHasher;
        static SECRETS: std::sync::OnceLock<RapidSecrets> = std::sync::OnceLock::new();
        // A random seed without another dependency: std's per-process
        // random SipHash keys, applied to a constant.
        let secrets = SECRETS.get_or_init(|| RapidSecrets::seed(std::hash::RandomState::new().hash_one(0u64)));
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&rapidhash_v3_seeded(args, secrets).to_le_bytes());
        out[8..].copy_from_slice(&(args.len() as u64).to_le_bytes());
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
    use super::ArgsDigest;
    use std::collections::HashSet;

    // rule: retry.op-id — a reused id is judged by its args: the same
    // bytes give the same digest, and different bytes (same length or not)
    // a different one.
    #[test]
    fn retry_op_id_args_digest_tells_args_apart() {
        let small = vec![7u8; 64];
        let mut small2 = small.clone();
        small2[63] = 8;
        let large = vec![7u8; 64 * 1024 + 3];
        let mut large2 = large.clone();
        large2[0] = 8;
        assert_eq!(ArgsDigest::of(&small), ArgsDigest::of(&small.clone()));
        assert_eq!(ArgsDigest::of(&large), ArgsDigest::of(&large.clone()));
        let all = [&small[..], &small2, &small[..63], &[], &large, &large2, &large[..1025]];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(ArgsDigest::of(a), ArgsDigest::of(b), "{} and {} bytes", a.len(), b.len());
            }
        }
    }

    // rule: retry.op-id — one changed bit anywhere in the args, short or
    // long, changes the digest: every one-bit change of a 2 KiB argument,
    // and of each prefix length up to 64 bytes, gives a digest of its own.
    #[test]
    fn retry_op_id_args_digest_changes_with_every_bit() {
        let args: Vec<u8> = (0..2048u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let mut seen = HashSet::new();
        assert!(seen.insert(ArgsDigest::of(&args)));
        for byte in 0..args.len() {
            for bit in [0, 3, 7] {
                let mut changed = args.clone();
                changed[byte] ^= 1 << bit;
                assert!(seen.insert(ArgsDigest::of(&changed)), "bit {bit} of byte {byte}: a digest seen before");
            }
        }
        for len in 0..=64 {
            for byte in 0..len {
                let mut changed = args[..len].to_vec();
                changed[byte] ^= 0x80;
                assert!(seen.insert(ArgsDigest::of(&changed)), "byte {byte} of {len}: a digest seen before");
            }
            assert!(seen.insert(ArgsDigest::of(&args[..len])), "the first {len} bytes: a digest seen before");
        }
    }
}
