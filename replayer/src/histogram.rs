//! Histograms of numeric parameters with fixed 1-2-5 buckets (…, [1000, 2000), [2000, 5000),
//! [5000, 10000), …): the buckets do not depend on the data, so each worker fills its own and
//! the results merge by adding, and memory stays bounded however long the slice is.

use aegis_core::decision::DecisionKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a value falls. Variant order is value order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketKey {
    /// Zero or below.
    NonPositive,
    /// `[step · 10^exp, next step)`, step 1, 2 or 5.
    Positive { exp: i32, step: u8 },
}

impl BucketKey {
    /// The bucket of `value` (not finite: none).
    pub fn of(value: f64) -> Option<BucketKey> {
        if !value.is_finite() {
            return None;
        }
        if value <= 0.0 {
            return Some(BucketKey::NonPositive);
        }
        #[allow(clippy::cast_possible_truncation)]
        let mut exp = value.log10().floor() as i32;
        // log10 may round across a power of ten.
        if value < 10f64.powi(exp) {
            exp -= 1;
        } else if value >= 10f64.powi(exp.saturating_add(1)) {
            exp += 1;
        }
        let mantissa = value / 10f64.powi(exp);
        let step = if mantissa < 2.0 {
            1
        } else if mantissa < 5.0 {
            2
        } else {
            5
        };
        Some(BucketKey::Positive { exp, step })
    }

    /// `(from, to)`: from inclusive (None: unbounded below), to exclusive (inclusive 0 for
    /// [`BucketKey::NonPositive`]).
    pub fn bounds(self) -> (Option<f64>, f64) {
        match self {
            BucketKey::NonPositive => (None, 0.0),
            BucketKey::Positive { exp, step } => {
                let base = 10f64.powi(exp);
                let (lo, hi) = match step {
                    1 => (1.0, 2.0),
                    2 => (2.0, 5.0),
                    _ => (5.0, 10.0),
                };
                (Some(lo * base), hi * base)
            }
        }
    }
}

/// Counts of one bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCounts {
    /// Calls in the bucket.
    pub calls: u64,
    /// Calls whose candidate decision differs from the recorded one.
    pub changed: u64,
    /// Recorded decisions.
    pub recorded: BTreeMap<DecisionKind, u64>,
    /// Candidate decisions.
    pub candidate: BTreeMap<DecisionKind, u64>,
}

/// One parameter's histogram, being filled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: BTreeMap<BucketKey, BucketCounts>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Histogram {
    pub fn add(&mut self, value: f64, recorded: DecisionKind, candidate: DecisionKind) {
        let Some(key) = BucketKey::of(value) else {
            return;
        };
        let b = self.buckets.entry(key).or_default();
        b.calls += 1;
        if recorded != candidate {
            b.changed += 1;
        }
        *b.recorded.entry(recorded).or_default() += 1;
        *b.candidate.entry(candidate).or_default() += 1;
        self.min = Some(self.min.map_or(value, |m| m.min(value)));
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
    }

    pub fn merge(&mut self, other: Histogram) {
        for (key, counts) in other.buckets {
            let b = self.buckets.entry(key).or_default();
            b.calls += counts.calls;
            b.changed += counts.changed;
            for (k, n) in counts.recorded {
                *b.recorded.entry(k).or_default() += n;
            }
            for (k, n) in counts.candidate {
                *b.candidate.entry(k).or_default() += n;
            }
        }
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_fall_in_1_2_5_buckets() {
        let b = |v: f64| BucketKey::of(v).unwrap().bounds();
        assert_eq!(b(1000.0), (Some(1000.0), 2000.0));
        assert_eq!(b(1999.0), (Some(1000.0), 2000.0));
        assert_eq!(b(3000.0), (Some(2000.0), 5000.0));
        assert_eq!(b(5000.0), (Some(5000.0), 10000.0));
        assert_eq!(b(0.5), (Some(0.5), 1.0));
        assert_eq!(b(0.0), (None, 0.0));
        assert_eq!(b(-3.0), (None, 0.0));
        assert!(BucketKey::of(f64::NAN).is_none());
        for v in [1.0, 10.0, 100.0, 1e6, 1e-3] {
            assert_eq!(b(v).0, Some(v), "{v}");
        }
    }
}
