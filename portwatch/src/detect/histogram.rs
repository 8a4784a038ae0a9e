//! A log-scale histogram for connection lifetimes: constant memory however many
//! connections a window holds, percentiles within 1/16 (6.25 %) of the truth.
const SUB_BUCKETS: u64 = 16;
const SUB_BITS: u32 = 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Counts by bucket index; grown on demand.
    counts: Vec<u64>,
    total: u64,
    /// The exact sum of every recorded value, for `portwatch serve`'s histogram `_sum`.
    sum: u128,
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        let index = bucket(value);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
        self.sum += u128::from(value);
    }

    /// Records `count` values, each taken as `value` (the counting path knows lifetimes
    /// only per log2 bucket; see [`Histogram::correct_sum`] for their exact sum).
    pub fn record_many(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let index = bucket(value);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += count;
        self.total += count;
        self.sum += u128::from(value) * u128::from(count);
    }

    /// Replaces what [`Histogram::record_many`] added to the sum as bucket values
    /// (`approximate`) with the exact sum the kernel kept (`exact`).
    pub fn correct_sum(&mut self, approximate: u128, exact: u128) {
        self.sum = self.sum - approximate.min(self.sum) + exact;
    }

    /// The sum of every recorded value.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// How many recorded values are below `limit`, assuming values spread evenly
    /// within the bucket that holds `limit`.
    pub fn count_below(&self, limit: u64) -> u64 {
        let index = bucket(limit);
        let below: u64 = self.counts.iter().take(index).sum();
        let Some(&straddling) = self.counts.get(index) else {
            return below;
        };
        let (low, high) = bounds(index);
        let share = (limit - low) as f64 / (high - low) as f64;
        below + (straddling as f64 * share).round() as u64
    }

    /// The value at quantile `q` (0..=1), as the midpoint of its bucket; None if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, high) = bounds(index);
                return Some(low + (high - low) / 2);
            }
        }
        None
    }
}

/// Values below 16 get a bucket each; above, each power of two is split in 16.
fn bucket(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let magnitude = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = magnitude - SUB_BITS;
    let sub = (value >> shift) - SUB_BUCKETS; // 0..16
    ((u64::from(magnitude - SUB_BITS + 1) * SUB_BUCKETS) + sub) as usize
}

/// The values a bucket holds: [low, high).
fn bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, index + 1);
    }
    let magnitude = index / SUB_BUCKETS - 1 + u64::from(SUB_BITS);
    let sub = index % SUB_BUCKETS;
    let shift = magnitude - u64::from(SUB_BITS);
    let low = (SUB_BUCKETS + sub) << shift;
    // The last bucket ends at 2^64, which a u64 cannot hold: it ends at u64::MAX
    // instead. Such values come only from corrupt timestamps (a recording's, found by
    // fuzzing), but must not overflow.
    (low, low.saturating_add(1 << shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for value in [0, 1, 15, 16, 17, 31, 32, 1000, 123_456_789, u64::MAX / 3] {
            let (low, high) = bounds(bucket(value));
            assert!(low <= value && value < high, "{value} in [{low}, {high})");
            assert!(
                (high - low) as f64 <= (value as f64 / 15.0).max(1.0),
                "{value}"
            );
        }
    }

    #[test]
    fn the_largest_values_do_not_overflow() {
        let mut histogram = Histogram::default();
        histogram.record(u64::MAX);
        assert!(histogram.quantile(0.5).unwrap() > u64::MAX / 2);
        assert_eq!(histogram.count_below(u64::MAX - 1), 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut histogram = Histogram::default();
        for ms in 1..=1000u64 {
            histogram.record(ms * 1_000_000);
        }
        let close = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.0625;
        assert!(close(histogram.quantile(0.5).unwrap(), 500e6));
        assert!(close(histogram.quantile(0.9).unwrap(), 900e6));
        assert!(close(histogram.quantile(0.99).unwrap(), 990e6));
        assert_eq!(histogram.count(), 1000);
        let below_one_second = histogram.count_below(1_000_000_000);
        assert!(
            (990..=1000).contains(&below_one_second),
            "{below_one_second}"
        );
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
