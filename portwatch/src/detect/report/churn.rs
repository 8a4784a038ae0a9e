//! Connection churn: short connections opened and closed at a high rate, each leaving a
//! TIME_WAIT socket on the side that closes first.
use super::{
    ChurnRate, DestinationRate, Evidence, Finding, FindingKind, Holdings, ProcessReport, Severity,
    Thresholds, Who, round3,
};
use crate::detect::model::Activity;

pub(super) fn finding(
    who: &Who,
    report: &ProcessReport,
    held: &Holdings,
    activity: &Activity,
    window_s: f64,
    thresholds: &Thresholds,
) -> Option<Finding> {
    let active_rate = activity.opened_active as f64 / window_s;
    let time_wait_rate = activity.time_wait_created as f64 / window_s;
    let short = report.short_lived_share.unwrap_or(0.0);
    let (rate, measured) = if active_rate >= thresholds.churn_rate_per_s {
        (active_rate, ChurnRate::Connects)
    } else if time_wait_rate >= thresholds.churn_rate_per_s {
        (time_wait_rate, ChurnRate::TimeWait)
    } else {
        return None;
    };
    if short < 0.5 {
        return None;
    }
    let closes = (activity.closed_first + activity.peer_closed_first).max(1);
    let closes_first_share = activity.closed_first as f64 / closes as f64;
    let mut destinations: Vec<DestinationRate> = activity
        .destinations
        .iter()
        .map(|(d, &count)| DestinationRate {
            daddr: d.daddr,
            dport: d.dport,
            rate_per_s: round3(count as f64 / window_s),
        })
        .collect();
    destinations.sort_by(|a, b| b.rate_per_s.total_cmp(&a.rate_per_s));
    destinations.truncate(5);
    let severity = if activity.failed_connects > 0 {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(who.finding(
        FindingKind::ConnectionChurn,
        severity,
        Evidence::Churn {
            rate_per_s: rate,
            median_lifetime_ms: report.lifetime_ms.p50,
            p99_lifetime_ms: report.lifetime_ms.p99,
            short_lived_share: short,
            closes_first_share,
            time_wait_per_s: time_wait_rate,
            time_wait_now: held.time_wait_now,
            destinations,
            measured,
            short_lived_ns: thresholds.short_lived_ns,
        },
    ))
}
