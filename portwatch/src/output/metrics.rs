//! `portwatch serve`'s exposition: the live model's [`Sample`] as Prometheus metric
//! families, with labels chosen for fleets.
//!
//! Series are per workload (container, pod or systemd unit; `host` when none) and
//! command name, never per PID unless asked (`--pid-labels N`: the top N processes by
//! CLOSE_WAIT, then sockets held). Beyond `--max-series-workloads` label sets, the rest
//! fold into `workload="other", comm="other"`; destinations likewise beyond
//! `--max-series-destinations`, the busiest kept. Gauges come from the sockets held
//! now, so the series of a process that is gone disappear with its sockets. Counters
//! are the model's per-process counts, added up per label set here, so that they stay
//! monotonic when the model forgets a process (exited, or evicted at
//! `--max-processes`); a counter series nobody has added to for 10 minutes and that no
//! process maps to any more is dropped.
//!
//! The names and label sets are a table in docs/serve.md.
use std::{collections::BTreeMap, net::SocketAddr};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    detect::model::UNKNOWN,
    live::{DestinationSample, LIFETIME_BUCKETS_S, Lifetime, ProcessCounters, Sample},
    process::Process,
};

/// The label value series fold into beyond a limit.
pub const OTHER: &str = "other";
/// A counter series unchanged this long, with no process mapping to it, is dropped.
const COUNTER_IDLE_NS: u64 = 10 * 60 * 1_000_000_000;

/// How many series the exposition may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesLimits {
    /// (workload, comm) label sets before folding into `other`.
    pub workloads: usize,
    /// Destinations before folding into `other`.
    pub destinations: usize,
    /// Processes that get a `pid` label on the socket gauges (0: none).
    pub pid_labels: usize,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            workloads: 100,
            destinations: 20,
            pid_labels: 0,
        }
    }
}

/// Which text format a scrape asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4.
    Prometheus,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the Accept header names it, else the Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

type Key = (String, String);
type Labels = Vec<(&'static str, String)>;

/// Counters of one label set, added up over the processes that mapped to it.
#[derive(Clone, Debug, Default)]
struct Accumulated {
    counts: ProcessCounters,
    changed_ns: u64,
}

/// Turns samples into families; keeps what must outlive one scrape: counters per label
/// set, each process's counts at the last scrape, and each process's workload.
#[derive(Debug)]
pub struct Exporter {
    limits: SeriesLimits,
    version: &'static str,
    counters: BTreeMap<Key, Accumulated>,
    last: FxHashMap<Process, ProcessCounters>,
    workloads: FxHashMap<Process, String>,
}

impl Exporter {
    pub fn new(limits: SeriesLimits, version: &'static str) -> Self {
        Exporter {
            limits,
            version,
            counters: BTreeMap::new(),
            last: FxHashMap::default(),
            workloads: FxHashMap::default(),
        }
    }

    /// The families for one scrape. `workload` names a live process's container or
    /// unit (None: `host`); it is asked once per process, the answer kept while the
    /// model knows the process.
    pub fn families(
        &mut self,
        sample: &Sample,
        workload: &dyn Fn(u32) -> Option<String>,
    ) -> Families {
        let keys: FxHashMap<Process, Key> = sample
            .processes
            .iter()
            .map(|p| {
                let key = if p.process == UNKNOWN {
                    ("unknown".to_owned(), "unknown".to_owned())
                } else {
                    let workload = self
                        .workloads
                        .entry(p.process)
                        .or_insert_with(|| {
                            let found = if p.alive {
                                workload(p.process.pid)
                            } else {
                                None
                            };
                            found.unwrap_or_else(|| "host".to_owned())
                        })
                        .clone();
                    (workload, p.comm.to_string())
                };
                (p.process, key)
            })
            .collect();
        self.workloads.retain(|p, _| keys.contains_key(p));

        let mut families = Families {
            version: self.version,
            ..Families::default()
        };
        self.gauges(sample, &keys, &mut families);
        self.accumulate(sample, &keys);
        self.counter_families(&mut families);
        destinations(sample, self.limits.destinations, &mut families);
        for (&(kind, severity), &n) in &sample.findings {
            families.findings.push((
                vec![("kind", kind.to_owned()), ("severity", severity.to_owned())],
                n,
            ));
        }
        families.events = Some(sample.events);
        families
    }

    fn gauges(&self, sample: &Sample, keys: &FxHashMap<Process, Key>, out: &mut Families) {
        let holding: Vec<_> = sample
            .processes
            .iter()
            .filter(|p| p.sockets() > 0)
            .collect();
        // The processes that get a pid label: most CLOSE_WAIT, then most sockets.
        let mut ranked: Vec<_> = holding.iter().collect();
        ranked.sort_by_key(|p| {
            (
                std::cmp::Reverse(p.close_wait()),
                std::cmp::Reverse(p.sockets()),
                p.process.pid,
            )
        });
        let with_pid: FxHashSet<Process> = ranked
            .iter()
            .take(self.limits.pid_labels)
            .map(|p| p.process)
            .collect();

        #[derive(Default)]
        struct Group {
            states: BTreeMap<&'static str, usize>,
            close_wait: usize,
            oldest: Option<f64>,
        }
        impl Group {
            fn add(&mut self, p: &crate::live::ProcessSample) {
                for (state, n) in &p.states {
                    *self.states.entry(state).or_default() += n;
                }
                self.close_wait += p.close_wait();
                self.oldest = max_some(self.oldest, p.close_wait_oldest_s);
            }
            fn merge(&mut self, other: Group) {
                for (state, n) in other.states {
                    *self.states.entry(state).or_default() += n;
                }
                self.close_wait += other.close_wait;
                self.oldest = max_some(self.oldest, other.oldest);
            }
        }

        let mut pid_groups: Vec<(Labels, Group)> = Vec::new();
        let mut groups: FxHashMap<&Key, Group> = FxHashMap::default();
        for p in &holding {
            let key = &keys[&p.process];
            if with_pid.contains(&p.process) {
                let mut group = Group::default();
                group.add(p);
                let labels = vec![
                    ("workload", key.0.clone()),
                    ("comm", key.1.clone()),
                    ("pid", p.process.pid.to_string()),
                ];
                pid_groups.push((labels, group));
            } else {
                groups.entry(key).or_default().add(p);
            }
        }
        let mut ranked: Vec<(&Key, Group)> = groups.into_iter().collect();
        ranked.sort_by(|a, b| {
            (b.1.close_wait, b.1.states.values().sum::<usize>())
                .cmp(&(a.1.close_wait, a.1.states.values().sum::<usize>()))
                .then(a.0.cmp(b.0))
        });
        let keep = self.limits.workloads.max(1);
        let mut folded: Option<Group> = None;
        let mut kept: Vec<(Labels, Group)> = pid_groups;
        for (i, (key, group)) in ranked.into_iter().enumerate() {
            if i < keep {
                kept.push((
                    vec![("workload", key.0.clone()), ("comm", key.1.clone())],
                    group,
                ));
            } else {
                folded.get_or_insert_with(Group::default).merge(group);
            }
        }
        if let Some(group) = folded {
            kept.push((other_labels(), group));
        }
        for (labels, group) in kept {
            for (state, n) in &group.states {
                let mut labels = labels.clone();
                labels.push(("state", (*state).to_owned()));
                out.sockets.push((labels, *n as u64));
            }
            if group.close_wait > 0 {
                out.close_wait
                    .push((labels.clone(), group.close_wait as u64));
            }
            if let Some(oldest) = group.oldest {
                out.close_wait_oldest.push((labels, oldest));
            }
        }
    }

    /// Adds each process's counts since the last scrape to its label set's counters.
    fn accumulate(&mut self, sample: &Sample, keys: &FxHashMap<Process, Key>) {
        let now = sample.now_ns;
        let mut touched: FxHashSet<Key> = FxHashSet::default();
        for p in &sample.processes {
            let current = p.counters;
            let previous = self.last.insert(p.process, current).unwrap_or_default();
            // A process the model forgot and saw again starts from 0.
            let delta = current.minus(&previous).unwrap_or(current);
            let key = &keys[&p.process];
            let has_room = || {
                self.counters.keys().filter(|k| !is_other(k)).count() < self.limits.workloads.max(1)
            };
            let key = if self.counters.contains_key(key) || has_room() {
                key.clone()
            } else {
                (OTHER.to_owned(), OTHER.to_owned())
            };
            let entry = self.counters.entry(key.clone()).or_insert(Accumulated {
                counts: ProcessCounters::default(),
                changed_ns: now,
            });
            if delta != ProcessCounters::default() {
                entry.counts.add(&delta);
                entry.changed_ns = now;
            }
            touched.insert(key);
        }
        self.last.retain(|process, _| keys.contains_key(process));
        self.counters.retain(|key, acc| {
            touched.contains(key) || now.saturating_sub(acc.changed_ns) < COUNTER_IDLE_NS
        });
    }

    fn counter_families(&self, out: &mut Families) {
        for ((workload, comm), acc) in &self.counters {
            let base: Labels = vec![("workload", workload.clone()), ("comm", comm.clone())];
            let with = |name: &'static str, value: &str| {
                let mut labels = base.clone();
                labels.push((name, value.to_owned()));
                labels
            };
            let c = &acc.counts;
            out.opened.push((with("role", "active"), c.opened_active));
            out.opened.push((with("role", "passive"), c.opened_passive));
            out.closed
                .push((with("closed_by", "local"), c.closed_local));
            out.closed.push((with("closed_by", "peer"), c.closed_peer));
            out.time_wait_created
                .push((base.clone(), c.time_wait_created));
            out.connect_failures
                .push((with("reason", "EADDRNOTAVAIL"), c.failed_connects));
            out.lifetime.push((base, c.lifetime));
        }
    }
}

fn is_other(key: &Key) -> bool {
    key.0 == OTHER && key.1 == OTHER
}

fn other_labels() -> Labels {
    vec![("workload", OTHER.to_owned()), ("comm", OTHER.to_owned())]
}

fn max_some(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `saddr->daddr:dport`, IPv6 addresses bracketed after the arrow.
pub fn destination_label(d: &DestinationSample) -> String {
    format!("{}->{}", d.saddr, SocketAddr::new(d.daddr, d.dport))
}

fn destinations(sample: &Sample, limit: usize, out: &mut Families) {
    let mut ranked: Vec<&DestinationSample> = sample.destinations.iter().collect();
    // Those heading for exhaustion first, soonest first; then the most ports in use.
    ranked.sort_by(|a, b| {
        let eta = |d: &DestinationSample| d.eta_s.unwrap_or(f64::INFINITY);
        eta(a)
            .total_cmp(&eta(b))
            .then(b.ports_in_use.cmp(&a.ports_in_use))
            .then(destination_label(a).cmp(&destination_label(b)))
    });
    let mut other_in_use = None;
    for (i, d) in ranked.into_iter().enumerate() {
        if i < limit.max(1) {
            // The namespace tells apart two containers' 127.0.0.1 -> 127.0.0.1:8080.
            let labels = vec![
                ("destination", destination_label(d)),
                ("netns", d.netns.to_string()),
            ];
            out.ports_in_use
                .push((labels.clone(), d.ports_in_use as u64));
            out.ports_capacity
                .push((labels.clone(), u64::from(d.port_capacity)));
            // +Inf when the recent rate is sustainable: always present, never firing.
            out.eta.push((labels, d.eta_s.unwrap_or(f64::INFINITY)));
        } else {
            *other_in_use.get_or_insert(0) += d.ports_in_use as u64;
        }
    }
    if let Some(in_use) = other_in_use {
        out.ports_in_use
            .push((vec![("destination", OTHER.to_owned())], in_use));
    }
}

impl ProcessCounters {
    /// `self - earlier`, or None when any count went down (the process was forgotten
    /// and counted again from 0).
    fn minus(&self, earlier: &ProcessCounters) -> Option<ProcessCounters> {
        let sub = |a: u64, b: u64| a.checked_sub(b);
        let mut below = [0; LIFETIME_BUCKETS_S.len()];
        for (i, slot) in below.iter_mut().enumerate() {
            *slot = sub(self.lifetime.below[i], earlier.lifetime.below[i])?;
        }
        Some(ProcessCounters {
            opened_active: sub(self.opened_active, earlier.opened_active)?,
            opened_passive: sub(self.opened_passive, earlier.opened_passive)?,
            closed_local: sub(self.closed_local, earlier.closed_local)?,
            closed_peer: sub(self.closed_peer, earlier.closed_peer)?,
            time_wait_created: sub(self.time_wait_created, earlier.time_wait_created)?,
            failed_connects: sub(self.failed_connects, earlier.failed_connects)?,
            lifetime: Lifetime {
                below,
                count: sub(self.lifetime.count, earlier.lifetime.count)?,
                sum_s: (self.lifetime.sum_s - earlier.lifetime.sum_s).max(0.0),
            },
        })
    }

    fn add(&mut self, delta: &ProcessCounters) {
        self.opened_active += delta.opened_active;
        self.opened_passive += delta.opened_passive;
        self.closed_local += delta.closed_local;
        self.closed_peer += delta.closed_peer;
        self.time_wait_created += delta.time_wait_created;
        self.failed_connects += delta.failed_connects;
        for (slot, d) in self.lifetime.below.iter_mut().zip(delta.lifetime.below) {
            *slot += d;
        }
        self.lifetime.count += delta.lifetime.count;
        self.lifetime.sum_s += delta.lifetime.sum_s;
    }
}

mod families;
#[cfg(test)]
mod tests;

pub use families::{Families, lines_of, render};
