//! A fast hasher for the collector's per-event tables.
//!
//! Every kernel record looks a socket up by its kernel address and charges a process:
//! with std's SipHash, hashing was a fifth of `portwatch report`'s time under churn.
//! The keys of these tables are kernel socket addresses, PIDs and the destinations the
//! host's own processes connect to, not text an attacker chooses to collide, so the
//! protection SipHash buys against flooding is not needed here. Tables keyed by what
//! remote peers choose (the startup snapshot's 4-tuples) keep std's hasher.
//!
//! The mixing is a folded 64x64->128 multiply per word (as in foldhash and ahash):
//! kernel addresses differ mostly in their middle bits, and the fold carries those into
//! the low bits that pick a bucket.
use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

/// A `HashMap` with [`FastHasher`]. Create one with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A `HashSet` with [`FastHasher`].
pub type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher {
    state: u64,
}

/// An odd constant with well-spread bits (from the digits of pi).
const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(MULTIPLIER);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.mix(u64::from(value));
    }

    #[inline]
    fn write_u16(&mut self, value: u16) {
        self.mix(u64::from(value));
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, hash::BuildHasher as _};

    use super::*;

    fn hash<T: std::hash::Hash>(value: &T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(value)
    }

    #[test]
    fn kernel_addresses_spread_over_the_low_bits() {
        // Sockets a slab apart: the same low bits, differing above bit 11.
        let buckets: HashSet<u64> = (0..4096u64)
            .map(|i| hash(&(0xffff_8881_0000_0000 + i * 2304)) & 0xfff)
            .collect();
        assert!(
            buckets.len() > 2400,
            "{} of 4096 buckets used",
            buckets.len()
        );
    }

    #[test]
    fn different_keys_hash_differently() {
        assert_ne!(hash(&(1u32, 2u32)), hash(&(2u32, 1u32)));
        assert_ne!(hash(&"ab"), hash(&"ab\0"));
        let map: FastMap<u64, u64> = (0..1000).map(|i| (i, i * 2)).collect();
        assert_eq!(map[&500], 1000);
    }
}
