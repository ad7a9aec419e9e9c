//! Deterministic seeds: one fleet seed drives every random choice (design convention 9).
//!
//! Each random source (a resource's value generator, a client's NAT, sleep schedule or link
//! impairment) gets its own seed mixed from the fleet seed and what identifies the source,
//! so adding a client or a resource does not change the draws of the others.

use lwm2m_proto::Lwm2mPath;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The SplitMix64 finaliser: a bijection on `u64` that spreads every input bit.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Mixes a sequence of words into one seed; order matters and every word counts.
pub fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(splitmix(parts.len() as u64), |acc, &p| {
        splitmix(acc ^ splitmix(p))
    })
}

/// The seed of the value generator at `path` of client number `client` in a fleet seeded
/// with `seed`.
pub fn seed_for(seed: u64, client: u64, path: &Lwm2mPath) -> u64 {
    let mut parts = vec![seed, client];
    parts.extend(path.ids().into_iter().map(u64::from));
    mix(&parts)
}

/// A ChaCha8 generator seeded with `seed`.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_every_part() {
        let p = Lwm2mPath::resource(3303, 0, 5700);
        let base = seed_for(1, 0, &p);
        assert_eq!(base, seed_for(1, 0, &p));
        assert_ne!(base, seed_for(2, 0, &p));
        assert_ne!(base, seed_for(1, 1, &p));
        assert_ne!(base, seed_for(1, 0, &Lwm2mPath::resource(3303, 1, 5700)));
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
        assert_ne!(mix(&[0]), mix(&[0, 0]));
    }
}
