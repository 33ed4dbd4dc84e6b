//! Randomness for jitter, injected so schedules are reproducible.

/// A source of uniformly distributed random numbers.
///
/// Core never reaches for an operating-system RNG: hosts (and plugins, through their
/// `random` import) hand one in, and tests use a fixed seed.
pub trait RandomSource {
    /// A uniformly distributed 64-bit value.
    fn next_u64(&mut self) -> u64;

    /// A uniformly distributed value in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        // 53 random mantissa bits give every representable value in [0, 1) at that spacing.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The default RNG: SplitMix64, small, fast and fully determined by its seed.
///
/// Not cryptographic; jitter only needs spreading, not secrecy.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// An RNG whose whole sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl Default for SeededRng {
    fn default() -> Self {
        Self::new(0x5EED_DB60_A4D0_0001)
    }
}

impl RandomSource for SeededRng {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl<R: RandomSource + ?Sized> RandomSource for &mut R {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn unit_values_stay_in_range() {
        let mut rng = SeededRng::new(1);
        for _ in 0..10_000 {
            let x = rng.next_unit();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
