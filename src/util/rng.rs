//! A small, stable random-number generator (SplitMix64). kdlab's shuffling and augmentation draw
//! from it rather than from a crate whose algorithms may change between versions: the same seed
//! must give the same batches in every build, on every machine, for every thread count.

#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

/// Mixes several words into one well-spread seed (the SplitMix64 finaliser applied in a chain).
pub fn mix(words: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &w in words {
        h = finalise(h ^ finalise(w.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    h
}

fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Named streams, so that e.g. shuffling and augmentation never share random numbers.
pub mod stream {
    pub(crate) const SHUFFLE: u64 = 1;
    pub(crate) const AUGMENT: u64 = 2;
    pub(crate) const INIT: u64 = 3;
    /// Drawing class-balanced training subsets and validation splits.
    pub(crate) const SUBSET: u64 = 4;
    /// Random-resized crops and flips of the ImageNet recipe (per epoch and sample).
    pub(crate) const CROP: u64 = 5;
    /// Initialising a method's trainable modules (FitNet's regressor, …).
    pub(crate) const METHOD_INIT: u64 = 6;
    /// A method's random draws at each step (CRD's negatives), with the epoch and the step.
    pub(crate) const DRAW: u64 = 7;
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator for one purpose (`stream`) at one point (`index`, e.g. the epoch) of a run.
    pub(crate) fn for_stream(seed: u64, stream: u64, index: u64) -> Self {
        Rng::new(mix(&[seed, stream, index]))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalise(self.state)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::for_stream(7, stream::SHUFFLE, 3);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::for_stream(7, stream::SHUFFLE, 3);
        let b: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        let mut other = Rng::for_stream(7, stream::AUGMENT, 3);
        assert_ne!(a[0], other.next_u64());
    }

    #[test]
    fn below_is_uniform_enough_and_in_range() {
        let mut r = Rng::new(1);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        for c in counts {
            assert!((9_400..10_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..1000).collect();
        Rng::new(3).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
