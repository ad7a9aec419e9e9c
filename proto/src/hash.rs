//! The hash tables of the hot paths: per peer address, per exchange, per registration.
//!
//! `std`'s `HashMap` hashes with SipHash-1-3, which took a tenth of the CPU of a DTLS load
//! (README, Benchmarks, P2). These tables hash with aHash instead, keyed once per process
//! from the operating system's randomness, so a peer that picks its addresses or tokens still
//! cannot aim them at one bucket. The keys live in one static, not in every table: a fleet
//! client holds a dozen tables. Build the tables with `HashMap::default()` or
//! `HashMap::with_capacity_and_hasher(n, Default::default())`.

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// A `std` hash map hashed with aHash under the process's random keys.
pub type HashMap<K, V> = std::collections::HashMap<K, V, ProcessKeys>;

/// A `std` hash set hashed with aHash under the process's random keys.
pub type HashSet<T> = std::collections::HashSet<T, ProcessKeys>;

/// Builds aHash hashers under keys drawn from the OS once per process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessKeys;

static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();

impl BuildHasher for ProcessKeys {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_one_process_hash_alike_and_the_keys_are_not_the_fixed_default() {
        let a = ProcessKeys.hash_one("127.0.0.1:5683");
        assert_eq!(a, ProcessKeys.hash_one("127.0.0.1:5683"));
        assert_ne!(a, ProcessKeys.hash_one("127.0.0.1:5684"));
        let fixed = ahash::RandomState::with_seeds(0, 0, 0, 0).hash_one("127.0.0.1:5683");
        assert_ne!(a, fixed);
    }
}
