//! CLOSE_WAIT leaks: sockets the peer closed that the process keeps open.
use std::collections::HashMap;

use super::{Evidence, Finding, FindingKind, Holdings, Peer, PeerKey, Severity, Thresholds, Who};
use crate::detect::model::Activity;

pub(super) fn finding(
    who: &Who,
    held: &Holdings,
    activity: &Activity,
    window_s: f64,
    thresholds: &Thresholds,
    show_netns: bool,
) -> Option<Finding> {
    let leaked = held
        .close_waits
        .iter()
        .filter(|(age, _, _)| *age >= thresholds.close_wait_age_ns)
        .count();
    if leaked == 0 {
        return None;
    }
    let mut ages: Vec<(u64, bool)> = held.close_waits.iter().map(|&(a, e, _)| (a, e)).collect();
    ages.sort_unstable();
    let (oldest, oldest_exact) = *ages.last()?;
    let median = ages[ages.len() / 2].0;
    let growth_per_min =
        (activity.close_wait_entered as f64 - activity.close_wait_left as f64) / (window_s / 60.0);
    let mut peers: HashMap<PeerKey, usize> = HashMap::new();
    for &(_, _, peer) in &held.close_waits {
        *peers.entry(peer).or_default() += 1;
    }
    let mut top_peers: Vec<Peer> = peers
        .into_iter()
        .map(|((netns, daddr, dport), sockets)| Peer {
            netns,
            daddr,
            dport,
            sockets,
        })
        .collect();
    top_peers.sort_by(|a, b| {
        b.sockets
            .cmp(&a.sockets)
            .then(a.dport.cmp(&b.dport))
            .then(a.netns.cmp(&b.netns))
            .then(a.daddr.cmp(&b.daddr))
    });
    top_peers.truncate(5);
    let close_wait = held.close_waits.len();
    let critical = close_wait >= thresholds.close_wait_critical || oldest >= 600_000_000_000;
    let severity = if critical {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(who.finding(
        FindingKind::CloseWaitLeak,
        severity,
        Evidence::Leak {
            close_wait,
            oldest_age_s: oldest as f64 / 1e9,
            oldest_age_exact: oldest_exact,
            median_age_s: median as f64 / 1e9,
            growth_per_min,
            top_peers,
            leaked,
            leak_age_ns: thresholds.close_wait_age_ns,
            show_netns,
        },
    ))
}
