//! The benchmark's results: every run as measured, one row per mode with medians and
//! ranges, the table people read and the JSON programs read.
use std::{fmt::Write as _, time::Duration};

use serde::Serialize;

use super::{
    agent::{Agent, Connections, Observed, Stopped},
    calibrate::Calibration,
    procfs::ProgramRuns,
    workload::{ClientRun, Shape},
};

/// One workload run, bare or under an agent.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub round: u32,
    /// Which attempt at its pair this is (pairs too noisy to compare are run again).
    pub attempt: u32,
    /// The agent this run is paired with (the bare half of a pair names it too).
    pub pair: Agent,
    /// None: bare.
    pub agent: Option<Agent>,
    pub client: ClientRun,
    pub server_cpu_s: f64,
    /// CPU seconds the rest of the machine used during the run (other processes, and
    /// kernel work charged to nobody here): a measure of how noisy the run was.
    pub other_cpu_s: f64,
    /// SYNs the server's listen queue dropped during the run (a sanity check of the
    /// workload: each one stalls a connect for a second).
    pub listen_overflows: u64,
    pub agent_run: Option<AgentRun>,
}

impl Run {
    /// CPU microseconds per connection spent by the workload (client and server,
    /// including the kernel work and eBPF programs run in their context) and the agent.
    pub fn cost_us(&self) -> f64 {
        let agent = self.agent_run.as_ref().map_or(0.0, |a| a.cpu_s);
        (self.client.cpu_s + self.server_cpu_s + agent) / self.client.made.max(1) as f64 * 1e6
    }

    /// CPUs the rest of the machine kept busy during the run, on average.
    pub fn other_cpus(&self) -> f64 {
        self.other_cpu_s / self.client.seconds.max(0.001)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentRun {
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    pub observed: Observed,
    /// What `observed.events` should be, from the client's count and the calibration.
    pub expected_events: u64,
    /// Transitions the workload really made (both sockets).
    pub transitions: u64,
    /// Calls of the agent's programs the kernel skipped (see `ProgramRuns`).
    pub missed: u64,
    pub programs: Vec<ProgramRuns>,
}

impl AgentRun {
    pub fn new(
        stopped: &Stopped,
        observed: Observed,
        client: &ClientRun,
        calibration: &Calibration,
    ) -> AgentRun {
        let made = client.made;
        let per_connection = match stopped.agent {
            // portwatch report counts every record: transitions and accept owners.
            Agent::Report | Agent::Serve => {
                calibration.transitions_per_connection + calibration.accepts_per_connection
            }
            Agent::Stream | Agent::Tcpstates => calibration.transitions_per_connection,
            Agent::Tcplife => calibration.closes_per_connection,
        };
        AgentRun {
            cpu_s: stopped.cpu_s,
            peak_rss_kib: stopped.finished.peak_rss_kib,
            observed,
            expected_events: made * per_connection,
            transitions: made * calibration.transitions_per_connection,
            missed: stopped.programs.iter().map(|p| p.recursion_misses).sum(),
            programs: stopped.programs.clone(),
        }
    }

    /// Seen over expected.
    fn accounted(&self) -> f64 {
        self.observed.events as f64 / self.expected_events.max(1) as f64
    }

    fn cpu_per_million_transitions(&self) -> f64 {
        self.cpu_s / (self.transitions.max(1) as f64 / 1e6)
    }
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }
}

/// One mode over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub mode: String,
    pub command: Option<String>,
    pub runs: usize,
    pub connections_per_s: Spread,
    /// 1 - agent rate / bare rate of the paired bare run, in percent.
    pub overhead_pct: Option<Spread>,
    /// The same from CPU time: 1 - bare cost / agent cost per connection (see
    /// `Run::cost_us`), in percent. What the throughput loss would be on a machine the
    /// workload keeps busy; less disturbed by other work on a shared machine, which
    /// slows the workload without adding to its CPU time.
    pub cost_overhead_pct: Option<Spread>,
    /// CPU microseconds per connection (workload and agent), median.
    pub cost_us: Spread,
    /// The run whose count was furthest from the truth: seen / expected events.
    pub worst_events_seen: Option<u64>,
    pub worst_events_expected: Option<u64>,
    /// Least over the runs of connections accounted / made (portwatch report: opened
    /// and closed by the client and by the server, each), in percent.
    pub connections_accounted_pct: Option<f64>,
    /// Most events one run dropped.
    pub max_dropped: Option<u64>,
    /// Most program calls one run's kernel skipped (recursion misses).
    pub max_missed: Option<u64>,
    /// Agent CPU seconds per million TCP transitions of the workload.
    pub cpu_s_per_million_transitions: Option<Spread>,
    /// Highest peak RSS of the agent over the runs.
    pub peak_rss_mib: Option<f64>,
    /// Nanoseconds per program call over all programs of the agent (with --bpf-stats).
    pub bpf_ns_per_call: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    fn now() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            memory_gib: memory_kib / (1 << 20) as f64,
            kernel: super::procfs::sysctl("kernel/osrelease").unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub started_unix: u64,
    /// The portwatch binary measured as the agent.
    pub agent_binary: String,
    pub machine: Machine,
    pub shape: Shape,
    pub run_seconds: f64,
    pub rounds: u32,
    pub calibration: Calibration,
    pub rows: Vec<Row>,
    pub runs: Vec<Run>,
}

impl Summary {
    pub fn new(
        shape: &Shape,
        duration: Duration,
        rounds: u32,
        calibration: &Calibration,
        agents: &[Agent],
        runs: Vec<Run>,
    ) -> Summary {
        let mut rows = vec![bare_row(&runs)];
        rows.extend(agents.iter().map(|&agent| agent_row(agent, &runs)));
        Summary {
            agent_binary: String::new(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine: Machine::now(),
            shape: shape.clone(),
            run_seconds: duration.as_secs_f64(),
            rounds,
            calibration: calibration.clone(),
            rows,
            runs,
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let shape = &self.shape;
        let _ = writeln!(
            out,
            "\nchurn: {} client threads, {} request(s) per connection, {} closes first, \
             lifetime {}, rate {}; {} rounds of {:.0} s; {} transitions per connection",
            shape.threads,
            shape.requests,
            match shape.close_first {
                super::workload::CloseFirst::Client => "client",
                super::workload::CloseFirst::Server => "server",
            },
            shape.lifetime.map_or("0".into(), |l| format!("{:?}", l)),
            if shape.rate > 0.0 {
                format!("{}/s", shape.rate)
            } else {
                "flat out".into()
            },
            self.rounds,
            self.run_seconds,
            self.calibration.transitions_per_connection,
        );
        let _ = writeln!(out, "portwatch measured: {}", self.agent_binary);
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {:.0} GiB, Linux {}\n",
            self.machine.cpus, self.machine.cpu_model, self.machine.memory_gib, self.machine.kernel
        );
        let _ = writeln!(
            out,
            "{:<31} {:>22} {:>20} {:>19} {:>24} {:>10} {:>14} {:>9}",
            "mode",
            "conn/s median (min-max)",
            "overhead (min-max)",
            "CPU us/conn (ovh)",
            "events seen/expected",
            "drop/miss",
            "CPU s/M trans",
            "peak RSS"
        );
        for row in &self.rows {
            let rate = row.connections_per_s;
            let overhead = row.overhead_pct.map_or("-".into(), |o| {
                format!("{:.1}% ({:.1}..{:.1})", o.median, o.min, o.max)
            });
            let events = match (row.worst_events_seen, row.worst_events_expected) {
                (Some(seen), Some(expected)) => format!(
                    "{:.3}% ({}/{})",
                    100.0 * seen as f64 / expected.max(1) as f64,
                    short(seen),
                    short(expected)
                ),
                _ => "-".into(),
            };
            let losses = match (row.max_dropped, row.max_missed) {
                (Some(dropped), Some(missed)) => format!("{dropped}/{missed}"),
                _ => "-".into(),
            };
            let cost = match row.cost_overhead_pct {
                Some(o) => format!("{:.1} ({:.1}%)", row.cost_us.median, o.median),
                None => format!("{:.1}", row.cost_us.median),
            };
            let _ = writeln!(
                out,
                "{:<31} {:>22} {:>20} {:>19} {:>24} {:>10} {:>14} {:>9}",
                row.mode,
                format!("{:.0} ({:.0}-{:.0})", rate.median, rate.min, rate.max),
                overhead,
                cost,
                events,
                losses,
                row.cpu_s_per_million_transitions
                    .map_or("-".into(), |c| format!("{:.2}", c.median)),
                row.peak_rss_mib
                    .map_or("-".into(), |m| format!("{m:.1} MiB")),
            );
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|row| {
                let accounted = row.connections_accounted_pct.map(|pct| {
                    format!("{}: connections accounted (worst run) {pct:.3}%", row.mode)
                });
                let bpf = row
                    .bpf_ns_per_call
                    .map(|ns| format!("{}: eBPF {ns:.0} ns per program call", row.mode));
                match (accounted, bpf) {
                    (None, None) => None,
                    (a, b) => Some([a, b].into_iter().flatten().collect::<Vec<_>>().join("; ")),
                }
            })
            .collect();
        for note in notes {
            let _ = writeln!(out, "  {note}");
        }
        let _ = writeln!(
            out,
            "  CPU us/conn: client, server and agent CPU per connection, median; (ovh): the \
             overhead that implies, 1 - bare/agent, median of the pairs"
        );
        let _ = writeln!(
            out,
            "  events: the worst run's count against the truth (connections made x the \
             transitions each makes, measured); drop/miss: the most one run lost to a full \
             buffer / to the kernel skipping a nested BPF program call"
        );
        if let Some(other) = Spread::of(self.runs.iter().map(Run::other_cpus)) {
            let retried = self.runs.iter().filter(|r| r.attempt > 1).count() / 2;
            let _ = writeln!(
                out,
                "  noise: the rest of the machine kept {:.2} CPUs busy during a run (median; \
                 {:.2}..{:.2}); {retried} pairs were run again for unequal noise",
                other.median, other.min, other.max
            );
        }
        let overflows: u64 = self.runs.iter().map(|r| r.listen_overflows).sum();
        if overflows > 0 {
            let _ = writeln!(
                out,
                "  WARNING: the server's listen queue overflowed {overflows} times: each \
                 stalls a connect for 1 s, so rates are noisier than they should be"
            );
        }
        out
    }
}

/// 1234567 -> 1.23M, for the table; the JSON keeps the exact numbers.
fn short(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..10_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

fn bare_row(runs: &[Run]) -> Row {
    let bare: Vec<&Run> = runs.iter().filter(|r| r.agent.is_none()).collect();
    Row {
        mode: "bare (no tracer)".into(),
        command: None,
        runs: bare.len(),
        connections_per_s: Spread::of(bare.iter().map(|r| r.client.rate())).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        }),
        overhead_pct: None,
        cost_overhead_pct: None,
        cost_us: Spread::of(bare.iter().map(|r| r.cost_us())).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        }),
        worst_events_seen: None,
        worst_events_expected: None,
        connections_accounted_pct: None,
        max_dropped: None,
        max_missed: None,
        cpu_s_per_million_transitions: None,
        peak_rss_mib: None,
        bpf_ns_per_call: None,
    }
}

fn agent_row(agent: Agent, runs: &[Run]) -> Row {
    let traced: Vec<(&Run, &AgentRun)> = runs
        .iter()
        .filter(|r| r.agent == Some(agent))
        .filter_map(|r| Some((r, r.agent_run.as_ref()?)))
        .collect();
    // Each agent run with the bare run of its pair (same round, same agent).
    let paired = |run: &Run| {
        runs.iter()
            .find(|r| r.agent.is_none() && r.pair == agent && r.round == run.round)
    };
    let overheads = traced.iter().filter_map(|(run, _)| {
        let bare = paired(run)?;
        Some(100.0 * (1.0 - run.client.rate() / bare.client.rate()))
    });
    let cost_overheads = traced.iter().filter_map(|(run, _)| {
        let bare = paired(run)?;
        Some(100.0 * (1.0 - bare.cost_us() / run.cost_us()))
    });
    let distance = |a: &AgentRun| (1.0 - a.accounted()).abs();
    let worst = traced
        .iter()
        .map(|(_, a)| a)
        .max_by(|a, b| distance(a).total_cmp(&distance(b)));
    let accounted = traced
        .iter()
        .filter_map(|(run, a)| {
            let connections: Connections = a.observed.connections?;
            Some(100.0 * connections.least() as f64 / run.client.made.max(1) as f64)
        })
        .min_by(f64::total_cmp);
    let bpf_ns = {
        let (ns, calls) = traced
            .iter()
            .flat_map(|(_, a)| &a.programs)
            .fold((0u64, 0u64), |(ns, calls), p| {
                (ns + p.run_time_ns, calls + p.run_cnt)
            });
        (calls > 0).then(|| ns as f64 / calls as f64)
    };
    Row {
        mode: agent.label().into(),
        command: Some(agent.command_line(None)),
        runs: traced.len(),
        connections_per_s: Spread::of(traced.iter().map(|(r, _)| r.client.rate())).unwrap_or(
            Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            },
        ),
        overhead_pct: Spread::of(overheads),
        cost_overhead_pct: Spread::of(cost_overheads),
        cost_us: Spread::of(traced.iter().map(|(r, _)| r.cost_us())).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        }),
        worst_events_seen: worst.map(|a| a.observed.events),
        worst_events_expected: worst.map(|a| a.expected_events),
        connections_accounted_pct: accounted,
        max_dropped: traced.iter().map(|(_, a)| a.observed.dropped).max(),
        max_missed: traced.iter().map(|(_, a)| a.missed).max(),
        cpu_s_per_million_transitions: Spread::of(
            traced.iter().map(|(_, a)| a.cpu_per_million_transitions()),
        ),
        peak_rss_mib: traced
            .iter()
            .map(|(_, a)| a.peak_rss_kib as f64 / 1024.0)
            .max_by(f64::total_cmp),
        bpf_ns_per_call: bpf_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_range() {
        let odd = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        let even = Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Spread::of([]).is_none());
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(9999), "9999");
        assert_eq!(short(418_451), "418.5k");
        assert_eq!(short(12_345_678), "12.35M");
    }
}
