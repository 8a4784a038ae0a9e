//! Port exhaustion: destinations whose local ports run out at the rate connections to
//! them are opened, or already have (connect() failing with EADDRNOTAVAIL).
use super::{Context, Evidence, Finding, FindingKind, Severity, Who};
use crate::detect::{
    model::{Model, UNKNOWN},
    rate::Window,
};

pub(super) fn findings(
    model: &Model,
    now_ns: u64,
    window: &Window,
    context: &Context<'_>,
) -> Vec<Finding> {
    let in_use = model.ports_in_use(now_ns);
    let mut findings = Vec::new();
    for (destination, toward) in &model.destinations {
        let used = in_use.get(destination).copied().unwrap_or(0);
        // The destination's own namespace's range and tcp_tw_reuse.
        let settings = context.settings.of(destination.netns);
        let capacity = settings.capacity();
        let rates = toward.opened.rates(window);
        // Ports run out at the rate connections are made now: a client that churned
        // earlier and stopped will not exhaust anything, one that just began will.
        let rate = rates.recent_per_s;
        let tw_reuse = settings.reuses_time_wait(destination.daddr);
        let lifetime_s = toward
            .lifetimes
            .quantile(0.5)
            .map_or(0.0, |ns| ns as f64 / 1e9);
        let hold_s = lifetime_s + if tw_reuse { 1.0 } else { 60.0 };
        let sustainable = f64::from(capacity) / hold_s;
        let eta = if toward.failed_connects > 0 {
            Some(0.0)
        } else if rate > sustainable {
            Some((f64::from(capacity) - used as f64).max(0.0) / rate)
        } else {
            None
        };
        let crowded = used as f64 >= 0.5 * f64::from(capacity);
        let Some(severity) = (match eta {
            Some(eta) if eta <= context.thresholds.exhaustion_critical_s => {
                Some(Severity::Critical)
            }
            Some(_) => Some(Severity::Warning),
            None if crowded => Some(Severity::Warning),
            None => None,
        }) else {
            continue;
        };
        let (top, _) = toward
            .consumers
            .iter()
            .max_by_key(|&(p, count)| (*count, std::cmp::Reverse(p.pid)))
            .map(|(p, c)| (*p, *c))
            .unwrap_or((UNKNOWN, 0));
        let activity = model.processes.get(&top);
        let who = Who {
            process: top,
            comm: activity.map(|a| a.comm).unwrap_or_default(),
            alive: top == UNKNOWN || model.table.is_alive(&top),
            workload: (context.workload)(top.pid),
        };
        findings.push(who.finding(
            FindingKind::PortExhaustion,
            severity,
            Evidence::Exhaustion {
                netns: destination.netns,
                saddr: destination.saddr,
                daddr: destination.daddr,
                dport: destination.dport,
                ports_in_use: used,
                port_capacity: capacity,
                rate_per_s: rates.active_per_s,
                recent_rate_per_s: rate,
                port_hold_s: hold_s,
                tw_reuse_applies: tw_reuse,
                failed_connects: toward.failed_connects,
                exhaustion_eta_s: eta,
            },
        ));
    }
    findings
}
