//! The mean of the paired overheads and how sure it is: one invocation's median and
//! range cannot tell 4.5 % from 5.5 % on a machine whose runs swing by several points,
//! but the mean over many pairs, with its confidence interval, can say whether a target
//! is met, missed, or not yet decided.
use serde::Serialize;

/// A mean over independent measurements, with the half-width of its 95 % confidence
/// interval (Student's t, two-sided).
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub ci95: f64,
    pub n: usize,
}

impl Estimate {
    /// None for fewer than two values, which give no spread to estimate from.
    pub fn of(values: &[f64]) -> Option<Estimate> {
        let n = values.len();
        if n < 2 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let standard_error = (variance / n as f64).sqrt();
        Some(Estimate {
            mean,
            ci95: t_975(n - 1) * standard_error,
            n,
        })
    }

    /// Where the interval lies against an upper bound such as "at most 5 %".
    pub fn against(&self, limit: f64) -> Verdict {
        if self.mean + self.ci95 <= limit {
            Verdict::Met
        } else if self.mean - self.ci95 > limit {
            Verdict::Missed
        } else {
            Verdict::Undecided
        }
    }
}

/// Ordered from best to worst, so that two verdicts' `max` is the worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// The whole interval is at or under the limit.
    Met,
    /// The interval straddles it: more pairs would decide.
    Undecided,
    /// The whole interval is over it.
    Missed,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Undecided => "undecided",
            Verdict::Missed => "missed",
        }
    }
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom: exact to three
/// decimals up to 30, within 0.01 beyond (where it approaches the normal's 1.960).
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.960 + 2.4 / df as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_interval_of_known_values() {
        // Sample standard deviation 1 (values 4, 5, 6), so the standard error is
        // 1/sqrt(3) and the half-width t(2) / sqrt(3).
        let e = Estimate::of(&[4.0, 5.0, 6.0]).unwrap();
        assert_eq!(e.n, 3);
        assert!((e.mean - 5.0).abs() < 1e-12);
        assert!((e.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{e:?}");
        assert_eq!(Estimate::of(&[5.0]), None);
    }

    #[test]
    fn verdicts_against_a_limit() {
        let e = |mean, ci95| Estimate { mean, ci95, n: 20 };
        assert_eq!(e(4.0, 0.5).against(5.0), Verdict::Met);
        assert_eq!(e(4.5, 0.5).against(5.0), Verdict::Met);
        assert_eq!(e(4.8, 0.5).against(5.0), Verdict::Undecided);
        assert_eq!(e(5.6, 0.5).against(5.0), Verdict::Missed);
    }

    #[test]
    fn t_approaches_the_normal() {
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(30), 2.042);
        assert!((t_975(60) - 2.000).abs() < 0.01);
        assert!((t_975(120) - 1.980).abs() < 0.01);
        assert!((t_975(100_000) - 1.960).abs() < 0.001);
    }
}
