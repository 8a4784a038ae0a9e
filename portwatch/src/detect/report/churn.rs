//! Connection churn: short connections opened and closed at a high rate, each leaving a
//! TIME_WAIT socket on the side that closes first.
use super::{
    ChurnRate, DestinationRate, Evidence, Finding, FindingKind, Holdings, ProcessReport, Severity,
    Thresholds, Who, round3,
};
use crate::detect::{model::Activity, rate::Window};

pub(super) fn finding(
    who: &Who,
    report: &ProcessReport,
    held: &Holdings,
    activity: &Activity,
    window: &Window,
    thresholds: &Thresholds,
    show_netns: bool,
) -> Option<Finding> {
    let connects = activity.opened_active.rates(window);
    let time_waits = activity.time_wait_created.rates(window);
    let short = report.short_lived_share.unwrap_or(0.0);
    let (rates, measured) = if connects.active_per_s >= thresholds.churn_rate_per_s {
        (connects, ChurnRate::Connects)
    } else if time_waits.active_per_s >= thresholds.churn_rate_per_s {
        (time_waits, ChurnRate::TimeWait)
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
            netns: d.netns,
            daddr: d.daddr,
            dport: d.dport,
            // Over the span the process was connecting: its share of that rate.
            rate_per_s: round3(count as f64 / connects.active_s.max(f64::MIN_POSITIVE)),
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
            rate_per_s: rates.active_per_s,
            active_s: rates.active_s,
            recent_rate_per_s: rates.recent_per_s,
            median_lifetime_ms: report.lifetime_ms.p50,
            p99_lifetime_ms: report.lifetime_ms.p99,
            short_lived_share: short,
            closes_first_share,
            time_wait_per_s: time_waits.active_per_s,
            time_wait_now: held.time_wait_now,
            destinations,
            measured,
            short_lived_ns: thresholds.short_lived_ns,
            show_netns,
        },
    ))
}
