//! Hash maps keyed by the broker's own ids (call ids, peer ids).
//!
//! The standard hasher resists keys chosen to collide, at a cost paid on
//! every call (a call is tracked in several maps). Ids the broker hands
//! out in sequence cannot be chosen by a peer, so for them a one-multiply
//! mix is enough. Keys a peer picks (a caller's serial, a name) keep the
//! standard hasher.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by a broker-assigned id.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A set of broker-assigned ids.
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a broker-assigned id: a multiply by 2^64 / φ
/// spreads sequential numbers over the high bits, and keeps them distinct
/// in the low ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(GOLDEN);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_land_in_distinct_buckets_and_distinct_tags() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let hashes: Vec<u64> = (1..=1024u64).map(|id| build.hash_one(id)).collect();
        // hashbrown picks the bucket from the low bits and a tag from the
        // top seven.
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(buckets.len(), 1024);
        assert!(tags.len() > 100, "{} tags", tags.len());
    }
}
