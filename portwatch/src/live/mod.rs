//! The live model of a long-running `portwatch serve`: the report's [`Model`], fed for
//! as long as portwatch runs, and a [`Sample`] of it taken at scrape time.
//!
//! Nothing here is a second model. The model already keeps cumulative counts per
//! process (connections opened, closed, TIME_WAIT made, lifetimes) and its socket table
//! the state of every socket now; both are bounded by the report's limits
//! (`--max-sockets`, `--max-processes`, `--max-destinations`), with evictions counted.
//! A sample reads the counts, derives the gauges from the socket table, and runs the
//! report's detectors (`detect::report::build`) for the findings open now and the
//! per-destination exhaustion forecast over the recent rate (the last 10 s).
//!
//! Where the records come from is the [`LiveModel::apply`] caller's business: today the
//! per-record kernel path, later an aggregated one. Pure code: records, a clock value
//! and settings in, numbers out.
mod settings;

use std::{collections::BTreeMap, net::IpAddr};

use rustc_hash::FxHashMap;
pub use settings::NamespaceSettings;

use crate::{
    detect::{
        model::{Destination, Limits, Model, UNKNOWN},
        ports::PortBudget,
        report::{self, Context, Evidence, FindingKind, Severity, Thresholds},
    },
    event::{Comm, DecodeError, Event, decode},
    process::Process,
    sockets::table::Seed,
    tcp_state::TcpState,
};

/// Upper bounds (seconds) of the connection-lifetime histogram's buckets: from a
/// loopback round trip to a keep-alive connection's hour.
pub const LIFETIME_BUCKETS_S: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// Loss counters only the kernel knows, read now and then by the tracing loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLoss {
    pub dropped: u64,
    pub untracked: u64,
    pub skipped: Option<u64>,
}

/// The model of a run that does not end.
#[derive(Debug)]
pub struct LiveModel {
    pub model: Model,
    pub undecodable: u64,
    pub kernel: KernelLoss,
}

impl LiveModel {
    pub fn new(start_ns: u64, limits: Limits) -> Self {
        LiveModel {
            model: Model::with_limits(start_ns, limits),
            undecodable: 0,
            kernel: KernelLoss::default(),
        }
    }

    pub fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) {
        self.model.start_ns = start_ns;
        self.model.last_ns = start_ns;
        for seed in seeds {
            self.model.seed(seed);
        }
    }

    /// One kernel record, unless it is a transition outside `netns` (`--netns`).
    /// Decodes it once; allocates nothing beyond what the model does. An undecodable
    /// record is counted (and shown), not applied.
    pub fn apply_in(&mut self, netns: Option<u32>, bytes: &[u8]) -> Result<(), DecodeError> {
        match decode(bytes) {
            Ok(Event::Transition(t)) if netns.is_some_and(|netns| t.netns != netns) => Ok(()),
            Ok(event) => {
                self.model.apply(&event);
                Ok(())
            }
            Err(err) => {
                self.undecodable += 1;
                Err(err)
            }
        }
    }

    /// The network namespaces of the destinations the model counts (0, unknown, left
    /// out): those whose port settings a sample needs.
    pub fn namespaces(&self) -> std::collections::BTreeSet<u32> {
        self.model
            .destinations
            .keys()
            .map(|d| d.netns)
            .filter(|&netns| netns != 0)
            .collect()
    }

    /// What the model says at `now_ns`. Runs under the caller's lock, so it copies out
    /// numbers only: no /proc, no formatting.
    pub fn sample(&self, now_ns: u64, settings: &PortBudget, thresholds: &Thresholds) -> Sample {
        self.sample_and_findings(now_ns, settings, thresholds).0
    }

    /// [`sample`](Self::sample), and the findings of the report it was made from: one
    /// report for both, for callers (top) that show the findings themselves.
    pub fn sample_and_findings(
        &self,
        now_ns: u64,
        settings: &PortBudget,
        thresholds: &Thresholds,
    ) -> (Sample, Vec<report::Finding>) {
        let model = &self.model;
        let no_workload = |_: u32| None;
        let context = Context {
            settings,
            thresholds,
            dropped: self.kernel.dropped,
            undecodable: self.undecodable,
            untracked: self.kernel.untracked,
            skipped: self.kernel.skipped,
            workload: &no_workload,
        };
        let report = report::build(model, now_ns, &context);

        let oldest = oldest_close_wait(model, now_ns);
        let mut processes = Vec::with_capacity(report.processes.len());
        for p in &report.processes {
            let activity = model.processes.get(&p.process);
            let lifetime = activity.map_or_else(Lifetime::default, |a| {
                let h = &a.lifetimes;
                Lifetime {
                    below: LIFETIME_BUCKETS_S.map(|le| h.count_below((le * 1e9) as u64)),
                    count: h.count(),
                    sum_s: h.sum() as f64 / 1e9,
                }
            });
            processes.push(ProcessSample {
                process: p.process,
                comm: p.comm,
                alive: p.alive,
                states: p.states.clone(),
                close_wait_oldest_s: oldest.get(&p.process).copied(),
                counters: ProcessCounters {
                    opened_active: p.opened_active,
                    opened_passive: p.opened_passive,
                    closed_local: p.closed_first,
                    closed_peer: p.peer_closed_first,
                    time_wait_created: p.time_wait_created,
                    failed_connects: p.failed_connects,
                    lifetime,
                },
            });
        }

        let mut findings = BTreeMap::new();
        for kind in [
            FindingKind::CloseWaitLeak,
            FindingKind::ConnectionChurn,
            FindingKind::PortExhaustion,
        ] {
            for severity in [Severity::Warning, Severity::Critical] {
                findings.insert((kind_name(kind), severity_name(severity)), 0);
            }
        }
        let mut eta = FxHashMap::default();
        for finding in &report.findings {
            *findings
                .entry((kind_name(finding.kind), severity_name(finding.severity)))
                .or_default() += 1;
            if let Evidence::Exhaustion {
                netns,
                saddr,
                daddr,
                dport,
                exhaustion_eta_s: Some(seconds),
                ..
            } = finding.evidence
            {
                eta.insert(
                    Destination {
                        netns,
                        saddr,
                        daddr,
                        dport,
                    },
                    seconds,
                );
            }
        }
        let destinations = ports_in_use(model, now_ns)
            .into_iter()
            .chain(eta.keys().map(|d| (*d, 0)))
            .fold(
                FxHashMap::<Destination, usize>::default(),
                |mut all, (d, n)| {
                    *all.entry(d).or_default() += n;
                    all
                },
            )
            .into_iter()
            .map(|(destination, in_use)| DestinationSample {
                netns: destination.netns,
                port_capacity: settings.of(destination.netns).capacity(),
                saddr: destination.saddr,
                daddr: destination.daddr,
                dport: destination.dport,
                ports_in_use: in_use,
                eta_s: eta.get(&destination).copied(),
            })
            .collect();

        let events = &report.events;
        let sample = Sample {
            now_ns,
            processes,
            destinations,
            findings,
            events: EventSample {
                seen: events.seen,
                dropped: events.dropped,
                undecodable: events.undecodable,
                untracked: events.untracked,
                skipped: events.skipped,
                evicted_sockets: events.evicted.sockets,
                evicted_time_wait: events.evicted.time_wait,
                evicted_processes: events.evicted.processes,
                evicted_destinations: events.evicted.destinations,
            },
        };
        (sample, report.findings)
    }
}

/// The oldest CLOSE_WAIT socket's age (s) per process, of live sockets and of
/// startup sockets no event has touched yet (a leak older than portwatch's run).
fn oldest_close_wait(model: &Model, now_ns: u64) -> FxHashMap<Process, f64> {
    let mut oldest: FxHashMap<Process, f64> = FxHashMap::default();
    let mut note = |process: Process, age_ns: u64| {
        let age = age_ns as f64 / 1e9;
        let entry = oldest.entry(process).or_insert(age);
        *entry = entry.max(age);
    };
    for (_, socket) in model.table.live() {
        if socket.state == TcpState::CloseWait {
            let process = socket.owner.map_or(UNKNOWN, |o| o.process);
            note(process, now_ns.saturating_sub(socket.state_since_ns));
        }
    }
    for seed in model.table.unmatched_seeds() {
        if seed.state != TcpState::CloseWait {
            continue;
        }
        let Some(&(pid, _)) = seed.holders.first() else {
            continue;
        };
        let age = now_ns.saturating_sub(seed.taken_ns) + seed.in_state_at_least_ns.unwrap_or(0);
        note(Process::after_exits(pid, 0), age);
    }
    oldest
}

/// Local ports taken now per destination (as the exhaustion detector counts them).
fn ports_in_use(model: &Model, now_ns: u64) -> FxHashMap<Destination, usize> {
    model.ports_in_use(now_ns)
}

pub fn kind_name(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::CloseWaitLeak => "close_wait_leak",
        FindingKind::ConnectionChurn => "connection_churn",
        FindingKind::PortExhaustion => "port_exhaustion",
    }
}

pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}

/// The model's numbers at one instant.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub now_ns: u64,
    /// Every process the model knows: with sockets now, or with counted activity.
    pub processes: Vec<ProcessSample>,
    pub destinations: Vec<DestinationSample>,
    /// Open findings by (kind, severity); every pair present, 0 when none.
    pub findings: BTreeMap<(&'static str, &'static str), u64>,
    pub events: EventSample,
}

#[derive(Clone, Debug)]
pub struct ProcessSample {
    pub process: Process,
    pub comm: Comm,
    pub alive: bool,
    /// Sockets held now by state name (TIME_WAIT: those charged to it).
    pub states: BTreeMap<&'static str, usize>,
    /// Age of its oldest CLOSE_WAIT socket, when it holds one.
    pub close_wait_oldest_s: Option<f64>,
    /// Since the model first saw it (cumulative while the model keeps it).
    pub counters: ProcessCounters,
}

impl ProcessSample {
    pub fn sockets(&self) -> usize {
        self.states.values().sum()
    }

    pub fn close_wait(&self) -> usize {
        self.states
            .get(TcpState::CloseWait.name())
            .copied()
            .unwrap_or(0)
    }
}

/// A process's cumulative counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessCounters {
    pub opened_active: u64,
    pub opened_passive: u64,
    /// Connections it closed first (TIME_WAIT on its side).
    pub closed_local: u64,
    /// Connections its peer closed first (CLOSE_WAIT on its side).
    pub closed_peer: u64,
    pub time_wait_created: u64,
    /// connect() calls that failed with EADDRNOTAVAIL.
    pub failed_connects: u64,
    pub lifetime: Lifetime,
}

/// Connection lifetimes: cumulative counts below each of [`LIFETIME_BUCKETS_S`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lifetime {
    pub below: [u64; LIFETIME_BUCKETS_S.len()],
    pub count: u64,
    pub sum_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DestinationSample {
    /// Its network namespace (inode; 0 unknown), whose port range applies.
    pub netns: u32,
    /// Local ports available toward it, in its namespace.
    pub port_capacity: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    pub ports_in_use: usize,
    /// Seconds until no local port is left at the recent rate: 0 when connects already
    /// fail, None when that rate is sustainable.
    pub eta_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSample {
    pub seen: u64,
    pub dropped: u64,
    pub undecodable: u64,
    pub untracked: u64,
    pub skipped: Option<u64>,
    pub evicted_sockets: u64,
    pub evicted_time_wait: u64,
    pub evicted_processes: u64,
    pub evicted_destinations: u64,
}
