//! One redraw's numbers, copied out of the live model under its lock.
//!
//! The base is [`LiveModel::sample`], the same sample `serve` exports, so `top` shows
//! what `serve` would and follows it when the model's source changes. What a sample
//! leaves out and a screen needs is read here, in the same lock, from the model:
//! the open findings with their evidence (for the marker and the detail view's advice;
//! this builds the report a second time, which the sample does not return), each
//! process's median lifetime, each destination's TIME_WAIT share and heaviest user,
//! and, for the one process the user looks at, its CLOSE_WAIT sockets and destinations.
//! Numbers only: names of workloads are looked up after the lock is released.
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    detect::{
        model::{Destination, UNKNOWN},
        ports::PortBudget,
        report::{Finding, Thresholds},
    },
    event::{Comm, Origin},
    live::{LiveModel, Sample},
    process::Process,
    sockets::time_wait::TIME_WAIT_NS,
    tcp_state::TcpState,
};

/// How many of the focused process's CLOSE_WAIT sockets a frame copies: more than any
/// screen shows, few enough that a leak of 100 000 sockets costs no more than this.
pub const MAX_FOCUS_SOCKETS: usize = 1000;

/// What the screen asks of a frame beyond the sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The process whose details the detail view shows.
    pub focus: Option<Process>,
    /// A port the user filters by: which processes hold a socket on it.
    pub port: Option<u16>,
}

/// One redraw's numbers.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub sample: Sample,
    /// Findings open now, worst first, as `report` words them.
    pub findings: Vec<Finding>,
    /// Median connection lifetime (s) per process that closed any.
    pub median_lifetime_s: FxHashMap<Process, f64>,
    /// Per destination: TIME_WAIT sockets among its ports in use, and who holds most.
    pub destinations: FxHashMap<Destination, DestinationUse>,
    /// Processes with a socket on [`Request::port`].
    pub on_port: FxHashSet<Process>,
    pub focus: Option<Focus>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DestinationUse {
    pub time_wait: usize,
    /// The process holding most of its ports now, and how many.
    pub top: Option<(Process, Comm, usize)>,
}

/// The details of one process.
#[derive(Clone, Debug, PartialEq)]
pub struct Focus {
    pub process: Process,
    /// Its CLOSE_WAIT sockets, oldest first (at most [`MAX_FOCUS_SOCKETS`]).
    pub close_waits: Vec<CloseWaitSocket>,
    /// How many it holds in all.
    pub close_wait_total: usize,
    /// Where it connects to, busiest first: connections opened, ports held now.
    pub destinations: Vec<(Destination, u64, usize)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CloseWaitSocket {
    pub local: (IpAddr, u16),
    pub peer: (IpAddr, u16),
    pub age_s: f64,
    /// False when the age is a lower bound (the socket predates portwatch).
    pub exact: bool,
}

impl Frame {
    /// Takes a frame at `now_ns`. Runs under the caller's lock: copies, no /proc.
    pub fn take(
        live: &LiveModel,
        now_ns: u64,
        settings: &PortBudget,
        thresholds: &Thresholds,
        request: Request,
    ) -> Frame {
        let (sample, findings) = live.sample_and_findings(now_ns, settings, thresholds);
        let model = &live.model;
        let median_lifetime_s = model
            .processes
            .iter()
            .filter_map(|(p, a)| Some((*p, a.lifetimes.quantile(0.5)? as f64 / 1e9)))
            .collect();

        let mut destinations: FxHashMap<Destination, DestinationUse> = FxHashMap::default();
        let mut holders: FxHashMap<(Destination, Process), (Comm, usize)> = FxHashMap::default();
        let mut on_port = FxHashSet::default();
        let mut focus = request.focus.map(|process| Focus {
            process,
            close_waits: Vec::new(),
            close_wait_total: 0,
            destinations: Vec::new(),
        });
        let mut focus_ports: FxHashMap<Destination, usize> = FxHashMap::default();
        let owner_of = |owner: Option<crate::sockets::owners::SocketOwner>| {
            owner.map_or((UNKNOWN, Comm::default()), |o| (o.process, o.comm))
        };
        for (_, socket) in model.table.live() {
            let (process, comm) = owner_of(socket.owner);
            let t = socket.tuple;
            if request
                .port
                .is_some_and(|port| port == t.sport || port == t.dport)
            {
                on_port.insert(process);
            }
            if socket.origin == Some(Origin::Active) && t.sport != 0 {
                let destination = Destination::of_tuple(&t);
                destinations.entry(destination).or_default();
                holders.entry((destination, process)).or_insert((comm, 0)).1 += 1;
                if focus.as_ref().is_some_and(|f| f.process == process) {
                    *focus_ports.entry(destination).or_default() += 1;
                }
            }
            if socket.state == TcpState::CloseWait
                && let Some(focus) = focus.as_mut().filter(|f| f.process == process)
            {
                focus.close_waits.push(CloseWaitSocket {
                    local: (t.saddr, t.sport),
                    peer: (t.daddr, t.dport),
                    age_s: now_ns.saturating_sub(socket.state_since_ns) as f64 / 1e9,
                    exact: socket.state_since_exact,
                });
            }
        }
        // Sockets open before portwatch started that no event has touched yet.
        for seed in model.table.unmatched_seeds() {
            let Some(&(pid, _)) = seed.holders.first() else {
                continue;
            };
            let process = Process::after_exits(pid, 0);
            let t = seed.tuple;
            if request
                .port
                .is_some_and(|port| port == t.sport || port == t.dport)
            {
                on_port.insert(process);
            }
            if seed.state == TcpState::CloseWait
                && let Some(focus) = focus.as_mut().filter(|f| f.process == process)
            {
                let age =
                    now_ns.saturating_sub(seed.taken_ns) + seed.in_state_at_least_ns.unwrap_or(0);
                focus.close_waits.push(CloseWaitSocket {
                    local: (t.saddr, t.sport),
                    peer: (t.daddr, t.dport),
                    age_s: age as f64 / 1e9,
                    exact: false,
                });
            }
        }
        for tw in model.table.time_wait() {
            if now_ns.saturating_sub(tw.since_ns) >= TIME_WAIT_NS {
                continue;
            }
            let (process, comm) = owner_of(tw.owner);
            let count = tw.count as usize;
            let destination = Destination::of_tuple(&tw.tuple);
            if request.port == Some(tw.tuple.dport) {
                on_port.insert(process);
            }
            destinations.entry(destination).or_default().time_wait += count;
            holders.entry((destination, process)).or_insert((comm, 0)).1 += count;
            if focus.as_ref().is_some_and(|f| f.process == process) {
                *focus_ports.entry(destination).or_default() += count;
            }
        }
        for ((destination, process), (comm, held)) in holders {
            let entry = destinations.entry(destination).or_default();
            // Ties go to the lower PID, so the name does not flicker between redraws.
            let better = entry.top.is_none_or(|(p, _, n)| {
                (held, std::cmp::Reverse(process.pid)) > (n, std::cmp::Reverse(p.pid))
            });
            if better {
                entry.top = Some((process, comm, held));
            }
        }

        if let Some(focus) = focus.as_mut() {
            focus.close_wait_total = focus.close_waits.len();
            focus
                .close_waits
                .sort_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.peer.cmp(&b.peer)));
            focus.close_waits.truncate(MAX_FOCUS_SOCKETS);
            if let Some(activity) = model.processes.get(&focus.process) {
                for (destination, opened) in &activity.destinations {
                    let held = focus_ports.remove(destination).unwrap_or(0);
                    focus.destinations.push((*destination, *opened, held));
                }
            }
            focus
                .destinations
                .extend(focus_ports.into_iter().map(|(d, held)| (d, 0, held)));
            focus
                .destinations
                .sort_by(|a, b| (b.2, b.1).cmp(&(a.2, a.1)).then(a.0.dport.cmp(&b.0.dport)));
        }

        Frame {
            sample,
            findings,
            median_lifetime_s,
            destinations,
            on_port,
            focus,
        }
    }
}
