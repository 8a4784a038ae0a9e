//! From a window's model to a report: per-process numbers, per-destination port budget,
//! and findings worst first, each with its evidence and what to change.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    detect::{
        model::{Destination, Model, UNKNOWN},
        ports::PortSettings,
    },
    event::Comm,
    sockets::{owners::ProcessRef, table::TIME_WAIT_NS},
    tcp_state::TcpState,
};

/// When a behaviour becomes a finding. Every field has a flag in `portwatch report`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// A socket in CLOSE_WAIT at least this long (ns) is leaked.
    pub close_wait_age_ns: u64,
    /// Leaked sockets that make a leak critical.
    pub close_wait_critical: usize,
    /// Active connections per second that make churn.
    pub churn_rate_per_s: f64,
    /// A connection shorter than this (ns) is short-lived.
    pub short_lived_ns: u64,
    /// Exhaustion forecast within this many seconds is critical (else a warning).
    pub exhaustion_critical_s: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            close_wait_age_ns: 5_000_000_000,
            close_wait_critical: 100,
            churn_rate_per_s: 20.0,
            short_lived_ns: 1_000_000_000,
            exhaustion_critical_s: 300.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    CloseWaitLeak,
    ConnectionChurn,
    PortExhaustion,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub pid: u32,
    pub comm: Comm,
    /// False when the process has exited (its sockets live on as orphans).
    pub alive: bool,
    /// Container or systemd unit, where one is known.
    pub workload: Option<String>,
    /// The evidence in one line of words and numbers.
    pub summary: String,
    pub advice: String,
    #[serde(flatten)]
    pub evidence: Evidence,
}

/// A destination's share of a churner's connections.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DestinationRate {
    pub daddr: IpAddr,
    pub dport: u16,
    pub rate_per_s: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Evidence {
    Leak {
        close_wait: usize,
        oldest_age_s: f64,
        /// False when the oldest age is a lower bound (the socket predates portwatch).
        oldest_age_exact: bool,
        median_age_s: f64,
        growth_per_min: f64,
        top_peers: Vec<Peer>,
    },
    Churn {
        rate_per_s: f64,
        median_lifetime_ms: Option<f64>,
        p99_lifetime_ms: Option<f64>,
        short_lived_share: f64,
        closes_first_share: f64,
        time_wait_per_s: f64,
        time_wait_now: usize,
        destinations: Vec<DestinationRate>,
    },
    Exhaustion {
        saddr: IpAddr,
        daddr: IpAddr,
        dport: u16,
        ports_in_use: usize,
        port_capacity: u32,
        rate_per_s: f64,
        /// How long each port stays taken: lifetime plus TIME_WAIT (60 s, or ~1 s where
        /// tcp_tw_reuse applies).
        port_hold_s: f64,
        tw_reuse_applies: bool,
        failed_connects: u64,
        /// Seconds until no port is left at this rate; 0 when connects already fail,
        /// null when the rate is sustainable.
        exhaustion_eta_s: Option<f64>,
    },
}

/// The other end of leaked sockets. For accepted sockets the peer's port is an
/// ephemeral one and tells nothing, so only its address is kept (`dport` null).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Peer {
    pub daddr: IpAddr,
    pub dport: Option<u16>,
    pub sockets: usize,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dport {
            Some(port) => write!(f, "{}", crate::output::format::Endpoint(self.daddr, port))?,
            None => write!(f, "{}", self.daddr)?,
        }
        let plural = if self.sockets == 1 { "" } else { "s" };
        write!(f, " ({} socket{plural})", self.sockets)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub comm: Comm,
    pub alive: bool,
    pub workload: Option<String>,
    /// Sockets it holds now, by state (TIME_WAIT: those charged to it).
    pub states: BTreeMap<&'static str, usize>,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub opened_active: u64,
    pub opened_passive: u64,
    pub closed_active: u64,
    pub closed_passive: u64,
    pub opened_per_s: f64,
    pub closed_per_s: f64,
    pub lifetime_ms: Lifetimes,
    pub short_lived_share: Option<f64>,
    pub closed_first: u64,
    pub peer_closed_first: u64,
    pub time_wait_created: u64,
    pub time_wait_per_s: f64,
    pub failed_connects: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Lifetimes {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventCounts {
    pub seen: u64,
    pub dropped: u64,
    /// Kernel table entries lost (socket table or owner tables full).
    pub untracked: u64,
    /// Events that never existed: runs of portwatch's programs the kernel skipped
    /// because another eBPF program was running on that CPU. None where the kernel
    /// does not count them (before Linux 6.7, and in replays).
    pub skipped: Option<u64>,
    /// True when events were lost: numbers are lower bounds.
    pub incomplete: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub window_s: f64,
    pub events: EventCounts,
    pub port_range: (u16, u16),
    pub port_capacity: u32,
    pub tcp_tw_reuse: u8,
    pub findings: Vec<Finding>,
    pub processes: Vec<ProcessReport>,
}

/// What the report needs from outside the model: the host's settings and how to name
/// a process's container or unit.
pub struct Context<'a> {
    pub settings: &'a PortSettings,
    pub thresholds: &'a Thresholds,
    pub dropped: u64,
    pub untracked: u64,
    pub skipped: Option<u64>,
    pub workload: &'a dyn Fn(u32) -> Option<String>,
}

/// Live sockets a process holds now, grouped for the report.
#[derive(Default)]
struct Holdings {
    states: BTreeMap<&'static str, usize>,
    /// (age ns, exact?, peer) of each CLOSE_WAIT socket.
    close_waits: Vec<(u64, bool, (IpAddr, Option<u16>))>,
    time_wait_now: usize,
}

pub fn build(model: &Model, now_ns: u64, context: &Context<'_>) -> Report {
    let window_ns = now_ns.saturating_sub(model.start_ns).max(1);
    let window_s = window_ns as f64 / 1e9;
    let holdings = holdings(model, now_ns);

    let mut keys: Vec<ProcessRef> = model.processes.keys().copied().collect();
    keys.extend(holdings.keys().copied());
    keys.sort_by_key(|p| (p.pid, p.generation));
    keys.dedup();

    let empty = Holdings::default();
    let mut processes = Vec::new();
    let mut findings = Vec::new();
    for key in keys {
        let activity = model.processes.get(&key).cloned().unwrap_or_default();
        let held = holdings.get(&key).unwrap_or(&empty);
        let alive = key == UNKNOWN || model.table.is_alive(&key);
        let workload = if alive && key != UNKNOWN {
            (context.workload)(key.pid)
        } else {
            None
        };
        let lifetimes = Lifetimes {
            p50: activity.lifetimes.quantile(0.5).map(ms),
            p90: activity.lifetimes.quantile(0.9).map(ms),
            p99: activity.lifetimes.quantile(0.99).map(ms),
        };
        let closed = activity.lifetimes.count();
        let short_share = (closed > 0).then(|| {
            activity
                .lifetimes
                .count_below(context.thresholds.short_lived_ns) as f64
                / closed as f64
        });
        let report = ProcessReport {
            pid: key.pid,
            comm: activity.comm,
            alive,
            workload: workload.clone(),
            states: held.states.clone(),
            connections_opened: activity.opened_active + activity.opened_passive,
            connections_closed: activity.closed_active + activity.closed_passive,
            opened_active: activity.opened_active,
            opened_passive: activity.opened_passive,
            closed_active: activity.closed_active,
            closed_passive: activity.closed_passive,
            opened_per_s: (activity.opened_active + activity.opened_passive) as f64 / window_s,
            closed_per_s: (activity.closed_active + activity.closed_passive) as f64 / window_s,
            lifetime_ms: lifetimes,
            short_lived_share: short_share,
            closed_first: activity.closed_first,
            peer_closed_first: activity.peer_closed_first,
            time_wait_created: activity.time_wait_created,
            time_wait_per_s: activity.time_wait_created as f64 / window_s,
            failed_connects: activity.failed_connects,
        };
        if key != UNKNOWN {
            let who = Who {
                pid: key.pid,
                comm: activity.comm,
                alive,
                workload,
            };
            findings.extend(leak_finding(
                &who,
                held,
                &activity,
                window_s,
                context.thresholds,
            ));
            findings.extend(churn_finding(
                &who,
                &report,
                held,
                &activity,
                window_s,
                context.thresholds,
            ));
        }
        processes.push(report);
    }
    findings.extend(exhaustion_findings(model, now_ns, window_s, context));
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.pid.cmp(&b.pid)));
    processes.sort_by_key(|p| {
        let close_wait = p.states.get("CLOSE_WAIT").copied().unwrap_or(0);
        (
            std::cmp::Reverse(close_wait),
            std::cmp::Reverse(p.connections_opened),
            p.pid,
        )
    });

    Report {
        window_s,
        events: EventCounts {
            seen: model.seen,
            dropped: context.dropped,
            untracked: context.untracked,
            skipped: context.skipped,
            incomplete: context.dropped > 0 || context.skipped.is_some_and(|n| n > 0),
        },
        port_range: context.settings.range,
        port_capacity: context.settings.capacity(),
        tcp_tw_reuse: context.settings.tw_reuse,
        findings,
        processes,
    }
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e6 * 1000.0).round() / 1000.0
}

fn holdings(model: &Model, now_ns: u64) -> HashMap<ProcessRef, Holdings> {
    let mut holdings: HashMap<ProcessRef, Holdings> = HashMap::new();
    for (_, socket) in model.table.live() {
        let key = socket.owner.map_or(UNKNOWN, |o| o.process);
        let held = holdings.entry(key).or_default();
        *held.states.entry(socket.state.name()).or_default() += 1;
        if socket.state == TcpState::CloseWait {
            let age = now_ns.saturating_sub(socket.state_since_ns);
            let service_port = match socket.origin {
                Some(crate::event::Origin::Passive) => None,
                _ => Some(socket.tuple.dport),
            };
            let peer = (socket.tuple.daddr, service_port);
            held.close_waits.push((age, socket.state_since_exact, peer));
        }
    }
    for seed in model.table.unmatched_seeds() {
        let Some(&(pid, _)) = seed.holders.first() else {
            continue;
        };
        let key = ProcessRef { pid, generation: 0 };
        let held = holdings.entry(key).or_default();
        *held.states.entry(seed.state.name()).or_default() += 1;
        if seed.state == TcpState::CloseWait {
            let since_snapshot = now_ns.saturating_sub(seed.taken_ns);
            let age = since_snapshot + seed.in_state_at_least_ns.unwrap_or(0);
            // A seed's origin is unknown: keep the port, it may name the service.
            held.close_waits
                .push((age, false, (seed.tuple.daddr, Some(seed.tuple.dport))));
        }
    }
    for time_wait in model.table.time_wait() {
        if now_ns.saturating_sub(time_wait.since_ns) >= TIME_WAIT_NS {
            continue;
        }
        let key = time_wait.owner.map_or(UNKNOWN, |o| o.process);
        let held = holdings.entry(key).or_default();
        held.time_wait_now += time_wait.count as usize;
        *held.states.entry(TcpState::TimeWait.name()).or_default() += time_wait.count as usize;
    }
    holdings
}

struct Who {
    pid: u32,
    comm: Comm,
    alive: bool,
    workload: Option<String>,
}

impl Who {
    fn finding(
        &self,
        kind: FindingKind,
        severity: Severity,
        summary: String,
        advice: &str,
        evidence: Evidence,
    ) -> Finding {
        Finding {
            kind,
            severity,
            pid: self.pid,
            comm: self.comm,
            alive: self.alive,
            workload: self.workload.clone(),
            summary,
            advice: advice.to_owned(),
            evidence,
        }
    }
}

const LEAK_ADVICE: &str = "The application does not close connections after the peer closes them: \
each stays in CLOSE_WAIT, holding its port and file descriptor, until the process closes it or \
exits. Look for code paths that stop using a connection without calling close(): error and \
timeout paths, connection-pool eviction of dead connections, and responses abandoned half-read. \
Restarting only buys time.";

fn leak_finding(
    who: &Who,
    held: &Holdings,
    activity: &crate::detect::model::Activity,
    window_s: f64,
    thresholds: &Thresholds,
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
    let mut peers: HashMap<(IpAddr, Option<u16>), usize> = HashMap::new();
    for &(_, _, peer) in &held.close_waits {
        *peers.entry(peer).or_default() += 1;
    }
    let mut top_peers: Vec<Peer> = peers
        .into_iter()
        .map(|((daddr, dport), sockets)| Peer {
            daddr,
            dport,
            sockets,
        })
        .collect();
    top_peers.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.dport.cmp(&b.dport)));
    top_peers.truncate(5);
    let close_wait = held.close_waits.len();
    let critical = close_wait >= thresholds.close_wait_critical || oldest >= 600_000_000_000;
    let severity = if critical {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let bound = if oldest_exact { "" } else { "≥ " };
    let summary = format!(
        "{close_wait} sockets in CLOSE_WAIT ({leaked} older than {}), oldest {bound}{}, median {}, {:+.1}/min{}",
        seconds(thresholds.close_wait_age_ns as f64 / 1e9),
        seconds(oldest as f64 / 1e9),
        seconds(median as f64 / 1e9),
        growth_per_min,
        top_peers
            .first()
            .map(|peer| format!("; top peer {peer}"))
            .unwrap_or_default(),
    );
    Some(who.finding(
        FindingKind::CloseWaitLeak,
        severity,
        summary,
        LEAK_ADVICE,
        Evidence::Leak {
            close_wait,
            oldest_age_s: round3(oldest as f64 / 1e9),
            oldest_age_exact: oldest_exact,
            median_age_s: round3(median as f64 / 1e9),
            growth_per_min: round3(growth_per_min),
            top_peers,
        },
    ))
}

const CHURN_ADVICE: &str = "The process opens and closes short connections at a high rate. Every \
connection closed first by this side leaves a socket in TIME_WAIT for 60 s, holding a local port \
toward its destination. Reuse connections: HTTP keep-alive, a connection pool, or a persistent \
client. If short connections are unavoidable, let the server close first so TIME_WAIT lands on \
the side with no port limit, or spread connections over more local addresses.";

const SERVER_CHURN_ADVICE: &str = "The process closes most connections first, so their TIME_WAIT \
sockets accumulate on this side. If its clients can keep connections alive, enable keep-alive; \
otherwise prefer letting clients close first.";

fn churn_finding(
    who: &Who,
    report: &ProcessReport,
    held: &Holdings,
    activity: &crate::detect::model::Activity,
    window_s: f64,
    thresholds: &Thresholds,
) -> Option<Finding> {
    let active_rate = activity.opened_active as f64 / window_s;
    let time_wait_rate = activity.time_wait_created as f64 / window_s;
    let short = report.short_lived_share.unwrap_or(0.0);
    let (rate, advice) = if active_rate >= thresholds.churn_rate_per_s {
        (active_rate, CHURN_ADVICE)
    } else if time_wait_rate >= thresholds.churn_rate_per_s {
        (time_wait_rate, SERVER_CHURN_ADVICE)
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
    let summary = format!(
        "{:.1} connections/s, median lifetime {}, {:.0}% shorter than {}; closes first in {:.0}%: {:.1} TIME_WAIT/s, {} held now{}",
        rate,
        report
            .lifetime_ms
            .p50
            .map_or("-".into(), |ms| seconds(ms / 1000.0)),
        short * 100.0,
        seconds(thresholds.short_lived_ns as f64 / 1e9),
        closes_first_share * 100.0,
        time_wait_rate,
        held.time_wait_now,
        destinations
            .first()
            .map(|d| format!(
                "; mostly to {} ({:.1}/s)",
                crate::output::format::Endpoint(d.daddr, d.dport),
                d.rate_per_s
            ))
            .unwrap_or_default(),
    );
    Some(who.finding(
        FindingKind::ConnectionChurn,
        severity,
        summary,
        advice,
        Evidence::Churn {
            rate_per_s: round3(rate),
            median_lifetime_ms: report.lifetime_ms.p50,
            p99_lifetime_ms: report.lifetime_ms.p99,
            short_lived_share: round3(short),
            closes_first_share: round3(closes_first_share),
            time_wait_per_s: round3(time_wait_rate),
            time_wait_now: held.time_wait_now,
            destinations,
        },
    ))
}

fn exhaustion_findings(
    model: &Model,
    now_ns: u64,
    window_s: f64,
    context: &Context<'_>,
) -> Vec<Finding> {
    let settings = context.settings;
    let capacity = settings.capacity();
    // Ports in use now per destination: live active sockets plus TIME_WAIT.
    let mut in_use: HashMap<Destination, usize> = HashMap::new();
    for (_, socket) in model.table.live() {
        if socket.origin == Some(crate::event::Origin::Active) && socket.tuple.sport != 0 {
            let t = socket.tuple;
            *in_use
                .entry(Destination {
                    saddr: t.saddr,
                    daddr: t.daddr,
                    dport: t.dport,
                })
                .or_default() += 1;
        }
    }
    for tw in model.table.time_wait() {
        if now_ns.saturating_sub(tw.since_ns) < TIME_WAIT_NS {
            let t = tw.tuple;
            *in_use
                .entry(Destination {
                    saddr: t.saddr,
                    daddr: t.daddr,
                    dport: t.dport,
                })
                .or_default() += tw.count as usize;
        }
    }
    let mut findings = Vec::new();
    for (destination, toward) in &model.destinations {
        let used = in_use.get(destination).copied().unwrap_or(0);
        let rate = toward.opened as f64 / window_s;
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
            pid: top.pid,
            comm: activity.map(|a| a.comm).unwrap_or_default(),
            alive: top == UNKNOWN || model.table.is_alive(&top),
            workload: (context.workload)(top.pid),
        };
        let endpoint = crate::output::format::Endpoint(destination.daddr, destination.dport);
        let summary = if toward.failed_connects > 0 {
            format!(
                "ports toward {endpoint} from {} are exhausted: {} connect() calls failed with EADDRNOTAVAIL; {used} of {capacity} ports in use",
                destination.saddr, toward.failed_connects
            )
        } else {
            format!(
                "{used} of {capacity} local ports toward {endpoint} in use, {rate:.1} new/s, each held {}{}: {}",
                seconds(hold_s),
                if tw_reuse {
                    " (tcp_tw_reuse reuses TIME_WAIT ports after 1 s)"
                } else {
                    " (60 s of TIME_WAIT)"
                },
                match eta {
                    Some(eta) => format!("exhausted in {}", seconds(eta)),
                    None => format!("sustainable up to {sustainable:.0}/s"),
                }
            )
        };
        let advice = format!(
            "New connections toward {endpoint} {} Reuse connections (keep-alive, pooling) so \
             fewer ports are consumed; add local source addresses or destination addresses \
             (each pair has its own {capacity} ports); widen net.ipv4.ip_local_port_range{}.",
            if toward.failed_connects > 0 {
                "already fail for want of a local port."
            } else {
                "are about to run out of local ports."
            },
            if tw_reuse {
                ""
            } else {
                "; net.ipv4.tcp_tw_reuse=1 lets connect() reuse TIME_WAIT ports older than 1 s (with TCP timestamps)"
            }
        );
        findings.push(who.finding(
            FindingKind::PortExhaustion,
            severity,
            summary,
            &advice,
            Evidence::Exhaustion {
                saddr: destination.saddr,
                daddr: destination.daddr,
                dport: destination.dport,
                ports_in_use: used,
                port_capacity: capacity,
                rate_per_s: round3(rate),
                port_hold_s: round3(hold_s),
                tw_reuse_applies: tw_reuse,
                failed_connects: toward.failed_connects,
                exhaustion_eta_s: eta.map(round3),
            },
        ));
    }
    findings
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `850ms`, `4.2s`, `3m12s`.
fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1}ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = s as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::model::tests::{Script, owner},
        event::{ConnectFailed, Event, Exited, Origin, OwnerSource, Task},
        tcp_state::TcpState::*,
    };

    const SECOND: u64 = 1_000_000_000;

    fn report_of(script: &Script, end_ns: u64, dropped: u64) -> Report {
        let model = script.model(0);
        let settings = PortSettings::default();
        let no_workload = |_| None;
        let context = Context {
            settings: &settings,
            thresholds: &Thresholds::default(),
            dropped,
            untracked: 0,
            skipped: None,
            workload: &no_workload,
        };
        build(&model, end_ns, &context)
    }

    fn findings_of(report: &Report, kind: FindingKind) -> Vec<&Finding> {
        report.findings.iter().filter(|f| f.kind == kind).collect()
    }

    #[test]
    fn leaked_sockets_older_than_the_threshold_make_a_leak_finding() {
        let server = owner(10, "leaky", OwnerSource::Accept);
        let mut script = Script::new();
        for i in 0..7 {
            script.leaked_server_connection(server, i * SECOND, i * SECOND + 1000);
        }
        let report = report_of(&script, 20 * SECOND, 0);
        let leaks = findings_of(&report, FindingKind::CloseWaitLeak);
        assert_eq!(leaks.len(), 1);
        assert_eq!(leaks[0].pid, 10);
        let Evidence::Leak {
            close_wait,
            oldest_age_s,
            ..
        } = &leaks[0].evidence
        else {
            panic!("leak evidence");
        };
        assert_eq!(*close_wait, 7);
        assert!((oldest_age_s - 20.0).abs() < 0.01, "{oldest_age_s}");
        assert_eq!(leaks[0].severity, Severity::Warning);
        assert_eq!(report.processes[0].states["CLOSE_WAIT"], 7);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["findings"][0]["kind"], "close_wait_leak");
        assert_eq!(json["findings"][0]["close_wait"], 7);
        assert!(
            json["findings"][0]["advice"]
                .as_str()
                .unwrap()
                .contains("close()")
        );
    }

    #[test]
    fn a_socket_that_leaves_close_wait_before_the_threshold_is_no_leak() {
        let server = owner(10, "server", OwnerSource::Accept);
        let mut script = Script::new();
        script.leaked_server_connection(server, 0, SECOND);
        // Closed 4.9 s after the peer closed: just under the 5 s default.
        let o = Origin::Passive;
        let ports = (8080, 30001);
        script.transition(
            1,
            5_900_000_000,
            CloseWait,
            LastAck,
            server,
            o,
            ports,
            Some(0),
        );
        script.transition(1, 5_900_100_000, LastAck, Close, server, o, ports, Some(0));
        let report = report_of(&script, 30 * SECOND, 0);
        assert!(findings_of(&report, FindingKind::CloseWaitLeak).is_empty());
        // And a socket still in CLOSE_WAIT but younger than the threshold is no leak yet.
        let mut young = Script::new();
        young.leaked_server_connection(server, 0, 26 * SECOND);
        assert!(
            findings_of(
                &report_of(&young, 30 * SECOND, 0),
                FindingKind::CloseWaitLeak
            )
            .is_empty()
        );
    }

    #[test]
    fn churn_rate_and_lifetimes_are_measured() {
        let churner = owner(20, "churner", OwnerSource::Connect);
        let mut script = Script::new();
        // 100 connections a second for 10 s, each living 3 ms.
        for i in 0..1000u64 {
            script.short_client_connection(churner, i * 10_000_000, 3_000_000);
        }
        let report = report_of(&script, 10 * SECOND, 0);
        let churn = findings_of(&report, FindingKind::ConnectionChurn);
        assert_eq!(churn.len(), 1);
        let Evidence::Churn {
            rate_per_s,
            median_lifetime_ms,
            short_lived_share,
            destinations,
            ..
        } = &churn[0].evidence
        else {
            panic!("churn evidence");
        };
        assert!((rate_per_s - 100.0).abs() < 1.0, "{rate_per_s}");
        let median = median_lifetime_ms.unwrap();
        assert!((median - 3.0).abs() / 3.0 < 0.07, "{median}");
        assert_eq!(*short_lived_share, 1.0);
        assert_eq!(destinations[0].dport, 80);
        let json = serde_json::to_value(churn[0]).unwrap();
        for field in [
            "rate_per_s",
            "median_lifetime_ms",
            "destinations",
            "advice",
            "pid",
            "comm",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn a_keep_alive_client_gets_no_finding() {
        let client = owner(30, "healthy", OwnerSource::Connect);
        let mut script = Script::new();
        // One connection for the whole window.
        let o = Origin::Active;
        script.transition(1, 0, Close, SynSent, client, o, (0, 80), Some(0));
        script.transition(
            1,
            1000,
            SynSent,
            Established,
            client,
            o,
            (40000, 80),
            Some(0),
        );
        let report = report_of(&script, 30 * SECOND, 0);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.processes[0].states["ESTABLISHED"], 1);
    }

    #[test]
    fn an_exited_leaker_is_reported_as_exited_not_as_its_reused_pid() {
        let old = owner(40, "old", OwnerSource::Accept);
        let mut script = Script::new();
        script.leaked_server_connection(old, 0, 1000);
        script.events.push(Event::Exited(Exited {
            ts_ns: SECOND,
            pid: 40,
            comm: crate::event::Comm::new("old"),
        }));
        // PID 40 again: a new, healthy process with one connection.
        let new = owner(40, "new", OwnerSource::Connect);
        let o = Origin::Active;
        script.transition(
            99,
            2 * SECOND,
            Close,
            SynSent,
            new,
            o,
            (0, 80),
            Some(2 * SECOND),
        );
        let report = report_of(&script, 30 * SECOND, 0);
        let leak = findings_of(&report, FindingKind::CloseWaitLeak)[0];
        assert_eq!((leak.pid, leak.alive), (40, false));
        assert_eq!(leak.comm.to_string(), "old");
        let alive: Vec<_> = report
            .processes
            .iter()
            .filter(|p| p.pid == 40 && p.alive)
            .collect();
        assert_eq!(alive.len(), 1);
        assert_eq!(alive[0].comm.to_string(), "new");
        assert!(!alive[0].states.contains_key("CLOSE_WAIT"));
    }

    #[test]
    fn ipv6_leaks_are_found_too() {
        let server = owner(50, "v6", OwnerSource::Accept);
        let mut script = Script::new();
        script.leaked_server_connection(server, 0, 1000);
        for event in &mut script.events {
            if let Event::Transition(t) = event {
                t.family = crate::event::Family::Ipv6;
                t.saddr = "2001:db8::1".parse().unwrap();
                t.daddr = "2001:db8::2".parse().unwrap();
            }
        }
        let report = report_of(&script, 30 * SECOND, 0);
        let leak = findings_of(&report, FindingKind::CloseWaitLeak)[0];
        let Evidence::Leak { top_peers, .. } = &leak.evidence else {
            panic!()
        };
        assert_eq!(top_peers[0].daddr.to_string(), "2001:db8::2");
        assert_eq!(
            top_peers[0].dport, None,
            "an accepted socket's peer port is noise"
        );
    }

    #[test]
    fn drops_mark_the_window_incomplete() {
        let report = report_of(&Script::new(), SECOND, 3);
        assert!(report.events.incomplete);
        assert_eq!(report.events.dropped, 3);
        assert!(!report_of(&Script::new(), SECOND, 0).events.incomplete);
    }

    #[test]
    fn failed_connects_are_exhaustion_that_already_happened() {
        let client = owner(60, "client", OwnerSource::Connect);
        let mut script = Script::new();
        let o = Origin::Active;
        for i in 0..3u64 {
            script.transition(
                100 + i,
                i * 1000,
                Close,
                SynSent,
                client,
                o,
                (0, 5432),
                Some(i * 1000),
            );
            script.transition(
                100 + i,
                i * 1000 + 10,
                SynSent,
                Close,
                client,
                o,
                (0, 5432),
                Some(i * 1000),
            );
            script.events.push(Event::ConnectFailed(ConnectFailed {
                ts_ns: i * 1000 + 11,
                task: Task {
                    pid: 60,
                    tid: 60,
                    comm: crate::event::Comm::new("client"),
                },
                errno: 99,
            }));
        }
        let report = report_of(&script, 10 * SECOND, 0);
        let exhausted = findings_of(&report, FindingKind::PortExhaustion);
        assert_eq!(exhausted.len(), 1);
        assert_eq!(
            (exhausted[0].pid, exhausted[0].severity),
            (60, Severity::Critical)
        );
        let Evidence::Exhaustion {
            failed_connects,
            exhaustion_eta_s,
            dport,
            port_capacity,
            ..
        } = &exhausted[0].evidence
        else {
            panic!()
        };
        assert_eq!(
            (*failed_connects, *exhaustion_eta_s, *dport),
            (3, Some(0.0), 5432)
        );
        assert_eq!(*port_capacity, 28232);
        assert!(exhausted[0].summary.contains("EADDRNOTAVAIL"));
    }

    #[test]
    fn a_rate_above_the_sustainable_one_is_forecast() {
        let client = owner(70, "fast", OwnerSource::Connect);
        let mut script = Script::new();
        // 1000/s toward 10.0.0.2:80 (not loopback: TIME_WAIT holds ports 60 s) for 5 s.
        for i in 0..5000u64 {
            script.short_client_connection(client, i * 1_000_000, 1_000_000);
        }
        let report = report_of(&script, 5 * SECOND, 0);
        let exhausted = findings_of(&report, FindingKind::PortExhaustion);
        assert_eq!(exhausted.len(), 1, "{:?}", report.findings);
        let Evidence::Exhaustion {
            ports_in_use,
            exhaustion_eta_s,
            tw_reuse_applies,
            ..
        } = &exhausted[0].evidence
        else {
            panic!()
        };
        assert!(!tw_reuse_applies);
        assert_eq!(*ports_in_use, 5000);
        // (28232 - 5000) ports left at 1000/s: about 23 s.
        let eta = exhaustion_eta_s.unwrap();
        assert!((eta - 23.2).abs() < 0.5, "{eta}");
        assert_eq!(exhausted[0].severity, Severity::Critical);
    }
}
