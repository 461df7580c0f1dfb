//! [`IdMap`] and [`IdSet`]: hash maps and sets keyed by a 64-bit id, hashed
//! with a keyed multiply instead of SipHash.
//!
//! The channel registry looks a channel up five or six times per item, the
//! driver and the operation table a request or an operation two or three
//! times per call; with std's SipHash that was 18 % of a stream item's
//! instructions (docs/perf.md, issue 20). An id is one `u64`, so one
//! 64×64→128-bit multiply of the id and a key, folded, spreads it well.
//! Some ids are chosen by the peer (the requests, channels and operations
//! it starts), so the two keys are random per map, drawn from std's
//! `RandomState`: a peer cannot aim its ids at one bucket without knowing
//! them. Every such map is bounded as well (`max_concurrent_requests`,
//! `max_channels`, the tombstone and operation-table capacities), so even a
//! bad spread costs a bounded number of probes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` keyed by an id newtype (or any key that hashes as one `u64`).
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHashing>;

/// A `HashSet` of ids, hashed as an [`IdMap`].
pub(crate) type IdSet<K> = HashSet<K, IdHashing>;

/// A new, empty [`IdSet`] with fresh keys.
pub(crate) fn id_set<K>() -> IdSet<K> {
    HashSet::with_hasher(IdHashing::new())
}

/// A new, empty [`IdMap`] with fresh keys.
pub(crate) fn id_map<K, V>() -> IdMap<K, V> {
    HashMap::with_hasher(IdHashing::new())
}

/// The keys of one [`IdMap`].
#[derive(Clone, Debug)]
pub(crate) struct IdHashing {
    k0: u64,
    k1: u64,
}

impl IdHashing {
    fn new() -> IdHashing {
        let seed = std::collections::hash_map::RandomState::new();
        IdHashing { k0: seed.hash_one(0x766f_7831_u64), k1: seed.hash_one(0x0069_646d_6170_u64) | 1 }
    }
}

impl Default for IdHashing {
    fn default() -> IdHashing {
        IdHashing::new()
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher { keys: (self.k0, self.k1), hash: self.k0 }
    }
}

/// The hasher of an [`IdMap`]: meant for one `u64` per key; anything else
/// is mixed in eight bytes at a time, correctly but without care for speed.
pub(crate) struct IdHasher {
    keys: (u64, u64),
    hash: u64,
}

/// The 128-bit product of `a` and `b`, its halves xored: every bit of the
/// result depends on every bit of both.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for IdHasher {
    #[inline]
    fn write_u64(&mut self, id: u64) {
        self.hash = fold_mul(self.hash ^ id, self.keys.1);
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word) ^ chunk.len() as u64);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.hash, self.keys.0 | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChannelId, RequestId};
    use std::collections::HashSet;

    #[test]
    fn an_id_map_behaves_as_a_map() {
        let mut m: IdMap<ChannelId, u64> = id_map();
        for i in 0..1000u64 {
            assert_eq!(m.insert(ChannelId(2 * i + 1), i), None);
        }
        for i in 0..1000u64 {
            assert_eq!(m.get(&ChannelId(2 * i + 1)), Some(&i));
            assert_eq!(m.get(&ChannelId(2 * i)), None);
        }
        assert_eq!(m.remove(&ChannelId(7)), Some(3));
        assert_eq!(m.len(), 999);
    }

    #[test]
    fn consecutive_ids_of_one_parity_fill_every_bucket_bit() {
        // Ids go up by two (one parity per side): the bits a table indexes
        // by (low) and tags by (high 7) must still vary.
        let hashing = IdHashing::new();
        let hashes: Vec<u64> = (0..4096u64).map(|i| hashing.hash_one(RequestId(2 * i + 1))).collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 4095).collect();
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 2400, "{} of 4096 buckets used", low.len());
        assert_eq!(tags.len(), 128);
    }

    #[test]
    fn the_keys_differ_between_maps() {
        let (a, b) = (IdHashing::new(), IdHashing::new());
        assert_ne!(a.hash_one(RequestId(1)), b.hash_one(RequestId(1)));
    }
}
