//! Clocks, a lock-free latency histogram and exact delivery accounting.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, read from a monotonic clock anchored once per
/// process (so latencies never go negative when the wall clock is adjusted).
pub fn now_ns() -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, epoch_ns) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (Instant::now(), wall)
    });
    epoch_ns + at.elapsed().as_nanos() as u64
}

/// Sub-buckets per power of two: values are kept to within 1/64 (about 1.6 %).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^40 µs (12 days) are distinguished; larger ones land in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS) as u64 * (SUB / 2)) as usize + 1;

/// A log-linear histogram of microsecond values with atomic counters, shared by every
/// client task without a lock.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - (SUB_BITS - 1);
    let top = v >> shift; // in [SUB/2, SUB)
    (SUB + (exp - SUB_BITS) as u64 * (SUB / 2) + (top - SUB / 2)) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let rel = i - SUB;
    let exp = rel / (SUB / 2) + SUB_BITS as u64;
    if exp >= MAX_EXP as u64 {
        return u64::MAX;
    }
    let top = rel % (SUB / 2) + SUB / 2;
    let shift = exp - (SUB_BITS as u64 - 1);
    ((top + 1) << shift) - 1
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(micros, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn mean(&self) -> f64 {
        let n = self.count();
        if n == 0 {
            0.0
        } else {
            self.sum.load(Ordering::Relaxed) as f64 / n as f64
        }
    }

    /// The value at quantile `q` (0..=1), as the upper edge of its bucket (never above
    /// the maximum seen). 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_high(i).min(self.max());
            }
        }
        self.max()
    }
}

/// A fixed-size bitset with atomic set-and-test, for "which sequence numbers were seen".
pub struct AtomicBits {
    words: Box<[AtomicU64]>,
    len: u64,
}

impl AtomicBits {
    pub fn new(len: u64) -> AtomicBits {
        AtomicBits {
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets bit `i`; returns whether it was already set. Out of range: `None`.
    pub fn set(&self, i: u64) -> Option<bool> {
        if i >= self.len {
            return None;
        }
        let mask = 1u64 << (i % 64);
        let old = self.words[(i / 64) as usize].fetch_or(mask, Ordering::AcqRel);
        Some(old & mask != 0)
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Bits set.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as u64)
            .sum()
    }

    /// Bits set here and not in `other`.
    pub fn count_and_not(&self, other: &AtomicBits) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.words.get(i).map_or(0, |o| o.load(Ordering::Acquire));
                (w.load(Ordering::Acquire) & !o).count_ones() as u64
            })
            .sum()
    }
}

/// Per-sequence-number delivery counters, for fan-out (one change, K receivers).
pub struct Counters {
    c: Box<[AtomicU16]>,
}

impl Counters {
    pub fn new(len: u64) -> Counters {
        Counters {
            c: (0..len).map(|_| AtomicU16::new(0)).collect(),
        }
    }

    pub fn bump(&self, i: u64) -> bool {
        match self.c.get(i as usize) {
            Some(c) => {
                c.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    pub fn get(&self, i: u64) -> u64 {
        self.c
            .get(i as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..1_000_000u64).step_by(7).chain([1 << 39, u64::MAX / 2]) {
            let b = bucket_of(v);
            assert!(b >= last, "monotonic at {v}");
            last = b;
            let hi = bucket_high(b);
            assert!(hi >= v, "{v} <= high {hi}");
            if v < 1 << 39 {
                assert!((hi - v) as f64 <= v as f64 / 30.0 + 1.0, "{v} vs {hi}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((490..=520).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1000);
        assert!(h.quantile(0.99) >= 990);
    }

    #[test]
    fn bits() {
        let a = AtomicBits::new(130);
        let b = AtomicBits::new(130);
        assert_eq!(a.set(129), Some(false));
        assert_eq!(a.set(129), Some(true));
        assert_eq!(a.set(130), None);
        a.set(3);
        b.set(3);
        assert_eq!(a.count_and_not(&b), 1);
        assert!(a.get(3) && !a.get(4));
    }
}
