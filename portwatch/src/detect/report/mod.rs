//! From a window's model to a report: per-process numbers, per-destination port budget,
//! and findings worst first, each with its evidence. One detector per kind of finding
//! (`leak`, `churn`, `exhaustion`); the words that sum up a finding and say what to
//! change are the output's (`output::advice`).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    detect::{
        model::{Model, UNKNOWN},
        ports::PortBudget,
        rate::Window,
    },
    event::Comm,
    process::Process,
    sockets::time_wait::TIME_WAIT_NS,
    tcp_state::TcpState,
};

mod churn;
mod exhaustion;
mod finding;
mod leak;

pub use finding::{ChurnRate, DestinationRate, Evidence, Finding, FindingKind, Peer, Severity};
use finding::{Who, pid_of, round3};

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

#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    /// Shown as its PID; PID 0 is the unknown owner.
    #[serde(rename = "pid", serialize_with = "pid_of")]
    pub process: Process,
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
    /// Rates over the time the process was opening (closing, making TIME_WAIT)
    /// connections, not the whole window; `active_s` is the opening span.
    pub opened_per_s: f64,
    pub closed_per_s: f64,
    pub active_s: f64,
    /// Connections opened per second in the last seconds of the window.
    pub opened_recent_per_s: f64,
    pub lifetime_ms: Lifetimes,
    pub short_lived_share: Option<f64>,
    pub closed_first: u64,
    pub peer_closed_first: u64,
    pub time_wait_created: u64,
    pub time_wait_per_s: f64,
    pub failed_connects: u64,
}

impl ProcessReport {
    /// A process that holds no socket and whose connections the window counted none
    /// of: one whose connect attempts all failed before ESTABLISHED (refused, timed
    /// out) with a port, which leaves no TIME_WAIT behind. Its row would be all zeros.
    fn shows_nothing(&self) -> bool {
        self.states.is_empty()
            && self.connections_opened == 0
            && self.connections_closed == 0
            && self.closed_first == 0
            && self.peer_closed_first == 0
            && self.time_wait_created == 0
            && self.failed_connects == 0
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Lifetimes {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventCounts {
    /// Records read, decodable or not.
    pub seen: u64,
    pub dropped: u64,
    /// Records read that could not be decoded (a recording's corrupt bytes, a kernel
    /// sending what this portwatch does not know): their events are missing.
    pub undecodable: u64,
    /// Kernel table entries lost (socket table or owner tables full).
    pub untracked: u64,
    /// Events that never existed: runs of portwatch's programs the kernel skipped
    /// because another eBPF program was running on that CPU. None where the kernel
    /// does not count them (before Linux 6.7, and in replays).
    pub skipped: Option<u64>,
    /// What portwatch forgot because a limit was reached.
    pub evicted: EvictedCounts,
    /// True when events were lost, or something a report counts was evicted: numbers
    /// are lower bounds.
    pub incomplete: bool,
    /// How the kernel handed transitions over: `counts` or `records`; None in a replay
    /// (recordings are always records).
    pub collect: Option<&'static str>,
    /// Which form of the state tracepoint ran: `btf` or `classic`; None in a replay.
    pub state_hook: Option<&'static str>,
}

impl EventCounts {
    /// Notes the kernel path a live run attached.
    pub fn attached(&mut self, path: crate::bpf::KernelPath) {
        self.collect = Some(match path.collect {
            portwatch_common::Collect::Counts => "counts",
            portwatch_common::Collect::Records => "records",
        });
        self.state_hook = Some(if path.btf_hook { "btf" } else { "classic" });
    }
}

/// What a report's limits made portwatch forget.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EvictedCounts {
    /// Live sockets (`--max-sockets`), stale ones included.
    pub sockets: u64,
    /// TIME_WAIT sockets forgotten before their 60 s (`--max-sockets`).
    pub time_wait: u64,
    /// Processes whose activity was forgotten (`--max-processes`).
    pub processes: u64,
    /// Destinations whose activity was forgotten (`--max-destinations`).
    pub destinations: u64,
}

impl EvictedCounts {
    pub fn total(&self) -> u64 {
        self.sockets + self.time_wait + self.processes + self.destinations
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub window_s: f64,
    pub events: EventCounts,
    /// portwatch's own namespace's port settings.
    pub port_range: (u16, u16),
    pub port_capacity: u32,
    pub tcp_tw_reuse: u8,
    /// portwatch's own network namespace (inode; 0 unknown, as in replays of older
    /// recordings).
    pub own_netns: u32,
    /// The port settings of every namespace the findings concern, by inode.
    pub namespaces: Vec<NamespacePorts>,
    pub findings: Vec<Finding>,
    pub processes: Vec<ProcessReport>,
}

/// One network namespace's port settings, as the report shows them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NamespacePorts {
    pub netns: u32,
    pub port_range: (u16, u16),
    pub port_capacity: u32,
    pub tcp_tw_reuse: u8,
}

/// What the report needs from outside the model: the host's settings and how to name
/// a process's container or unit.
pub struct Context<'a> {
    pub settings: &'a PortBudget,
    pub thresholds: &'a Thresholds,
    pub dropped: u64,
    pub undecodable: u64,
    pub untracked: u64,
    pub skipped: Option<u64>,
    pub workload: &'a dyn Fn(u32) -> Option<String>,
}

/// A leaked socket's peer: its namespace, address and (service) port.
type PeerKey = (u32, IpAddr, Option<u16>);

/// Live sockets a process holds now, grouped for the report.
#[derive(Default)]
struct Holdings {
    states: BTreeMap<&'static str, usize>,
    /// The comm of the owner of its sockets, for a process that did nothing the window
    /// saw (one that inherited them, or was named by /proc) and so has no activity.
    comm: Option<Comm>,
    /// (age ns, exact?, peer) of each CLOSE_WAIT socket.
    close_waits: Vec<(u64, bool, PeerKey)>,
    time_wait_now: usize,
}

pub fn build(model: &Model, now_ns: u64, context: &Context<'_>) -> Report {
    let window_ns = now_ns.saturating_sub(model.start_ns).max(1);
    let window_s = window_ns as f64 / 1e9;
    let window = Window {
        start_ns: model.start_ns,
        end_ns: model.start_ns + window_ns,
    };
    let holdings = holdings(model, now_ns);
    let show_netns = several_namespaces(model);

    let mut keys: Vec<Process> = model.processes.keys().copied().collect();
    keys.extend(holdings.keys().copied());
    keys.sort();
    keys.dedup();

    let empty = Holdings::default();
    let mut processes = Vec::new();
    let mut findings = Vec::new();
    for key in keys {
        let mut activity = model.processes.get(&key).cloned().unwrap_or_default();
        let held = holdings.get(&key).unwrap_or(&empty);
        if activity.comm.is_empty()
            && let Some(comm) = held.comm
        {
            activity.comm = comm;
        }
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
        let opens = activity.opens.rates(&window);
        let report = ProcessReport {
            process: key,
            comm: activity.comm,
            alive,
            workload: workload.clone(),
            states: held.states.clone(),
            connections_opened: activity.opened_active.count() + activity.opened_passive,
            connections_closed: activity.closed_active + activity.closed_passive,
            opened_active: activity.opened_active.count(),
            opened_passive: activity.opened_passive,
            closed_active: activity.closed_active,
            closed_passive: activity.closed_passive,
            opened_per_s: opens.active_per_s,
            closed_per_s: activity.closes.rates(&window).active_per_s,
            active_s: opens.active_s,
            opened_recent_per_s: opens.recent_per_s,
            lifetime_ms: lifetimes,
            short_lived_share: short_share,
            closed_first: activity.closed_first,
            peer_closed_first: activity.peer_closed_first,
            time_wait_created: activity.time_wait_created.count(),
            time_wait_per_s: activity.time_wait_created.rates(&window).active_per_s,
            failed_connects: activity.failed_connects,
        };
        if report.shows_nothing() {
            continue;
        }
        if key != UNKNOWN {
            let who = Who {
                process: key,
                comm: activity.comm,
                alive,
                workload,
            };
            findings.extend(leak::finding(
                &who,
                held,
                &activity,
                window_s,
                context.thresholds,
                show_netns,
            ));
            findings.extend(churn::finding(
                &who,
                &report,
                held,
                &activity,
                &window,
                context.thresholds,
                show_netns,
            ));
        }
        processes.push(report);
    }
    findings.extend(exhaustion::findings(model, now_ns, &window, context));
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.process.pid.cmp(&b.process.pid))
    });
    processes.sort_by_key(|p| {
        let close_wait = p.states.get("CLOSE_WAIT").copied().unwrap_or(0);
        (
            std::cmp::Reverse(close_wait),
            std::cmp::Reverse(p.connections_opened),
            p.process.pid,
        )
    });

    let evictions = model.evictions();
    Report {
        window_s,
        events: EventCounts {
            seen: model.seen + context.undecodable,
            dropped: context.dropped,
            undecodable: context.undecodable,
            untracked: context.untracked,
            skipped: context.skipped,
            evicted: EvictedCounts {
                sockets: evictions.table.sockets,
                time_wait: evictions.table.time_wait,
                processes: evictions.processes,
                destinations: evictions.destinations,
            },
            incomplete: context.dropped > 0
                || context.undecodable > 0
                || context.skipped.is_some_and(|n| n > 0)
                || evictions.mattered(),
            collect: None,
            state_hook: None,
        },
        port_range: context.settings.host.range,
        port_capacity: context.settings.host.capacity(),
        tcp_tw_reuse: context.settings.host.tw_reuse,
        own_netns: context.settings.host_netns,
        namespaces: concerned_namespaces(&findings, context.settings),
        findings,
        processes,
    }
}

/// Whether the window involves more than one network namespace: then the words name
/// each peer's and destination's.
fn several_namespaces(model: &Model) -> bool {
    let mut first = None;
    let mut other = |netns: u32| *first.get_or_insert(netns) != netns;
    model.destinations.keys().any(|d| other(d.netns))
        || model.table.live().any(|(_, s)| other(s.tuple.netns))
        || model.table.unmatched_seeds().any(|s| other(s.tuple.netns))
        || model.table.time_wait().any(|g| other(g.tuple.netns))
}

/// The namespaces the findings concern (a leak's peers, a churner's destinations, an
/// exhausted destination), each with its port settings.
fn concerned_namespaces(findings: &[Finding], budget: &PortBudget) -> Vec<NamespacePorts> {
    let mut inodes = std::collections::BTreeSet::new();
    for finding in findings {
        match &finding.evidence {
            Evidence::Leak { top_peers, .. } => inodes.extend(top_peers.iter().map(|p| p.netns)),
            Evidence::Churn { destinations, .. } => {
                inodes.extend(destinations.iter().map(|d| d.netns));
            }
            Evidence::Exhaustion { netns, .. } => {
                inodes.insert(*netns);
            }
        }
    }
    inodes
        .into_iter()
        .filter(|&netns| netns != 0)
        .map(|netns| {
            let settings = budget.of(netns);
            NamespacePorts {
                netns,
                port_range: settings.range,
                port_capacity: settings.capacity(),
                tcp_tw_reuse: settings.tw_reuse,
            }
        })
        .collect()
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e6 * 1000.0).round() / 1000.0
}

fn holdings(model: &Model, now_ns: u64) -> HashMap<Process, Holdings> {
    let mut holdings: HashMap<Process, Holdings> = HashMap::new();
    let mut counted_in_table: HashMap<Process, u64> = HashMap::new();
    for (sock, socket) in model.table.live() {
        let key = socket.owner.map_or(UNKNOWN, |o| o.process);
        if model.table.is_counted(sock) {
            *counted_in_table.entry(key).or_default() += 1;
        }
        let held = holdings.entry(key).or_default();
        held.comm = held.comm.or(socket.owner.map(|o| o.comm));
        *held.states.entry(socket.state.name()).or_default() += 1;
        if socket.state == TcpState::CloseWait {
            let age = now_ns.saturating_sub(socket.state_since_ns);
            let service_port = match socket.origin {
                Some(crate::event::Origin::Passive) => None,
                _ => Some(socket.tuple.dport),
            };
            let peer = (socket.tuple.netns, socket.tuple.daddr, service_port);
            held.close_waits.push((age, socket.state_since_exact, peer));
        }
    }
    // Counting path: connections counted open that the table does not hold (it holds
    // their CLOSE_WAIT ones) are established, or closing on their way out.
    for (process, activity) in &model.processes {
        let in_table = counted_in_table.get(process).copied().unwrap_or(0);
        let untabled = activity.counted_open.saturating_sub(in_table);
        if untabled > 0 {
            *holdings
                .entry(*process)
                .or_default()
                .states
                .entry(TcpState::Established.name())
                .or_default() += untabled as usize;
        }
    }
    for seed in model.table.unmatched_seeds() {
        let Some(&(pid, comm)) = seed.holders.first() else {
            continue;
        };
        let key = Process::after_exits(pid, 0);
        let held = holdings.entry(key).or_default();
        // A process known only from the snapshot is named by it.
        held.comm = held.comm.or(Some(comm).filter(|comm| !comm.is_empty()));
        *held.states.entry(seed.state.name()).or_default() += 1;
        if seed.state == TcpState::CloseWait {
            let since_snapshot = now_ns.saturating_sub(seed.taken_ns);
            let age = since_snapshot + seed.in_state_at_least_ns.unwrap_or(0);
            // A seed's origin is unknown: keep the port, it may name the service.
            held.close_waits.push((
                age,
                false,
                (seed.tuple.netns, seed.tuple.daddr, Some(seed.tuple.dport)),
            ));
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

#[cfg(test)]
pub(crate) mod tests;
