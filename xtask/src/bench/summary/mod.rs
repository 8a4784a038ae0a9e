//! The benchmark's results: every run as measured, one row per mode with medians and
//! ranges, the table people read and the JSON programs read.
use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

mod estimate;
mod table;

pub use estimate::Estimate;

use super::{
    agent::{Agent, Observed, Options, Stopped},
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
    /// None on the counting path, whose records are not one per event.
    pub expected_events: Option<u64>,
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
            // The kernel counts; it sends records only for what it cannot count.
            Agent::Report | Agent::Serve => None,
            // top shows its counts on a screen only: nothing to check.
            Agent::Top | Agent::TopRecords => None,
            // portwatch report counts every record: transitions and accept owners.
            Agent::ReportRecords | Agent::ServeRecords => {
                Some(calibration.transitions_per_connection + calibration.accepts_per_connection)
            }
            Agent::Stream | Agent::Tcpstates => Some(calibration.transitions_per_connection),
            Agent::Tcplife => Some(calibration.closes_per_connection),
        };
        AgentRun {
            cpu_s: stopped.cpu_s,
            peak_rss_kib: stopped.finished.peak_rss_kib,
            observed,
            expected_events: per_connection.map(|n| made * n),
            transitions: made * calibration.transitions_per_connection,
            missed: stopped.programs.iter().map(|p| p.recursion_misses).sum(),
            programs: stopped.programs.clone(),
        }
    }

    /// Seen over expected, where events are a measure of the workload.
    fn accounted(&self) -> Option<f64> {
        let expected = self.expected_events?;
        Some(self.observed.events as f64 / expected.max(1) as f64)
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
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
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
    /// The two overheads' means over the pairs, with 95 % confidence intervals.
    pub overhead_mean_pct: Option<Estimate>,
    pub cost_overhead_mean_pct: Option<Estimate>,
    /// The overhead the mode's target allows, in percent (see
    /// `Agent::overhead_target_pct`).
    pub overhead_target_pct: Option<f64>,
    /// CPU microseconds per connection (workload and agent), median.
    pub cost_us: Spread,
    /// The run whose count was furthest from the truth: seen / expected events (not
    /// for the counting path, whose records are not one per event).
    pub worst_events_seen: Option<u64>,
    pub worst_events_expected: Option<u64>,
    /// Least over the runs of connections accounted / made (portwatch report and serve:
    /// opened and closed by the client and by the server, each), in percent.
    pub connections_accounted_pct: Option<f64>,
    /// The run whose connection count was furthest from the client's: of its four
    /// counts (opened and closed by client and server) the one furthest from the
    /// connections made, and that number made.
    pub worst_connections_counted: Option<u64>,
    pub worst_connections_made: Option<u64>,
    /// portwatch report: the most entries one run's report gave the client's or the
    /// server's PID (1 is right; see `Observed::entries_per_process`).
    pub max_entries_per_process: Option<u64>,
    /// The check against the truth: every run's count within 0.1 % of the truth
    /// (connections where the agent counts them, else events) and nothing dropped.
    /// None for an agent that gives no count to check (top).
    pub truth_ok: Option<bool>,
    /// Most events one run dropped; None if the agent does not say (top).
    pub max_dropped: Option<u64>,
    /// Most program calls one run's kernel skipped (recursion misses).
    pub max_missed: Option<u64>,
    /// Agent CPU seconds per million TCP transitions of the workload.
    pub cpu_s_per_million_transitions: Option<Spread>,
    /// Highest peak RSS of the agent over the runs.
    pub peak_rss_mib: Option<f64>,
    /// Nanoseconds per program call over all programs of the agent (with --bpf-stats).
    pub bpf_ns_per_call: Option<f64>,
    /// Each eBPF program's cost (with --bpf-stats), by what it is attached to.
    pub programs: Vec<ProgramRow>,
}

/// One eBPF program of an agent over the runs (with --bpf-stats).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramRow {
    /// What it runs on, e.g. `tp_btf/inet_sock_set_state` (see `procfs::hook_name`).
    pub hook: String,
    /// The kernel's (15-byte) name of the program.
    pub name: String,
    /// Over the runs in which it ran: run_time_ns / run_cnt.
    pub ns_per_call: Spread,
    /// run_cnt / connections made, median (the host's other calls included).
    pub calls_per_connection: f64,
    /// ns_per_call median x calls_per_connection.
    pub ns_per_connection: f64,
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
    /// None when the churn pairs were not run (`--rows syscalls`).
    pub calibration: Option<Calibration>,
    pub rows: Vec<Row>,
    pub runs: Vec<Run>,
    /// The syscall row (None with `--rows churn` or `--no-syscall-row`).
    pub syscalls: Option<super::syscalls::SyscallSummary>,
}

impl Summary {
    pub fn new(
        shape: &Shape,
        duration: Duration,
        rounds: u32,
        calibration: Option<&Calibration>,
        agents: &[Agent],
        options: &Options,
        runs: Vec<Run>,
    ) -> Summary {
        let mut rows = Vec::new();
        if calibration.is_some() {
            rows.push(bare_row(&runs));
            rows.extend(agents.iter().map(|&agent| agent_row(agent, options, &runs)));
        }
        Summary {
            agent_binary: String::new(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine: Machine::now(),
            shape: shape.clone(),
            run_seconds: duration.as_secs_f64(),
            rounds,
            calibration: calibration.cloned(),
            rows,
            runs,
            syscalls: None,
        }
    }
}

/// How far a count may be from the truth, in percent, for the truth column's ok.
pub const TRUTH_TOLERANCE_PCT: f64 = 0.1;

/// 1234567 -> 1.23M, for the table; the JSON keeps the exact numbers.
pub fn short(n: u64) -> String {
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
        connections_per_s: Spread::of(bare.iter().map(|r| r.client.rate())).unwrap_or(ZERO),
        overhead_pct: None,
        cost_overhead_pct: None,
        overhead_mean_pct: None,
        cost_overhead_mean_pct: None,
        overhead_target_pct: None,
        cost_us: Spread::of(bare.iter().map(|r| r.cost_us())).unwrap_or(ZERO),
        worst_events_seen: None,
        worst_events_expected: None,
        connections_accounted_pct: None,
        worst_connections_counted: None,
        worst_connections_made: None,
        max_entries_per_process: None,
        truth_ok: None,
        max_dropped: None,
        max_missed: None,
        cpu_s_per_million_transitions: None,
        peak_rss_mib: None,
        bpf_ns_per_call: None,
        programs: Vec::new(),
    }
}

const ZERO: Spread = Spread {
    median: 0.0,
    min: 0.0,
    max: 0.0,
};

/// How far `seen` is from `expected`, as a fraction of `expected`.
fn distance(seen: u64, expected: u64) -> f64 {
    seen.abs_diff(expected) as f64 / expected.max(1) as f64
}

fn agent_row(agent: Agent, options: &Options, runs: &[Run]) -> Row {
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
    let overheads: Vec<f64> = traced
        .iter()
        .filter_map(|(run, _)| {
            let bare = paired(run)?;
            Some(100.0 * (1.0 - run.client.rate() / bare.client.rate()))
        })
        .collect();
    let cost_overheads: Vec<f64> = traced
        .iter()
        .filter_map(|(run, _)| {
            let bare = paired(run)?;
            Some(100.0 * (1.0 - bare.cost_us() / run.cost_us()))
        })
        .collect();
    let events_distance = |a: &AgentRun| a.accounted().map_or(0.0, |x| (1.0 - x).abs());
    let worst_events = traced
        .iter()
        .map(|(_, a)| a)
        .filter(|a| a.accounted().is_some())
        .max_by(|a, b| events_distance(a).total_cmp(&events_distance(b)));
    // (counted, made) of each run where the agent counts connections.
    let connections: Vec<(u64, u64)> = traced
        .iter()
        .filter_map(|(run, a)| {
            let made = run.client.made;
            Some((a.observed.connections?.furthest_from(made), made))
        })
        .collect();
    let worst_connections = connections
        .iter()
        .max_by(|a, b| distance(a.0, a.1).total_cmp(&distance(b.0, b.1)));
    let accounted = traced
        .iter()
        .filter_map(|(run, a)| {
            let connections = a.observed.connections?;
            Some(100.0 * connections.least() as f64 / run.client.made.max(1) as f64)
        })
        .min_by(f64::total_cmp);
    let max_dropped = traced.iter().filter_map(|(_, a)| a.observed.dropped).max();
    let within =
        |&(seen, expected): &(u64, u64)| 100.0 * distance(seen, expected) <= TRUTH_TOLERANCE_PCT;
    let counts_within = if connections.is_empty() {
        traced.iter().all(|(_, a)| {
            a.expected_events
                .is_none_or(|expected| within(&(a.observed.events, expected)))
        })
    } else {
        connections.iter().all(within)
    };
    // Something to check: connections or events the agent counted, and what they
    // should be.
    let checkable =
        !connections.is_empty() || traced.iter().any(|(_, a)| a.expected_events.is_some());
    let truth_ok = checkable.then(|| counts_within && max_dropped == Some(0));
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
        command: Some(agent.command_line(options)),
        runs: traced.len(),
        connections_per_s: Spread::of(traced.iter().map(|(r, _)| r.client.rate())).unwrap_or(ZERO),
        overhead_pct: Spread::of(overheads.iter().copied()),
        cost_overhead_pct: Spread::of(cost_overheads.iter().copied()),
        overhead_mean_pct: Estimate::of(&overheads),
        cost_overhead_mean_pct: Estimate::of(&cost_overheads),
        overhead_target_pct: agent.overhead_target_pct(),
        cost_us: Spread::of(traced.iter().map(|(r, _)| r.cost_us())).unwrap_or(ZERO),
        worst_events_seen: worst_events.map(|a| a.observed.events),
        worst_events_expected: worst_events.and_then(|a| a.expected_events),
        connections_accounted_pct: accounted,
        worst_connections_counted: worst_connections.map(|c| c.0),
        worst_connections_made: worst_connections.map(|c| c.1),
        max_entries_per_process: traced
            .iter()
            .filter_map(|(_, a)| a.observed.entries_per_process)
            .max(),
        truth_ok,
        max_dropped,
        max_missed: traced.iter().map(|(_, a)| a.missed).max(),
        cpu_s_per_million_transitions: Spread::of(
            traced.iter().map(|(_, a)| a.cpu_per_million_transitions()),
        ),
        peak_rss_mib: traced
            .iter()
            .map(|(_, a)| a.peak_rss_kib as f64 / 1024.0)
            .max_by(f64::total_cmp),
        bpf_ns_per_call: bpf_ns,
        programs: program_rows(&traced),
    }
}

/// Each program the agent ran (with --bpf-stats: only then does the kernel count
/// calls), by hook, over the runs.
fn program_rows(traced: &[(&Run, &AgentRun)]) -> Vec<ProgramRow> {
    let mut by_hook: BTreeMap<(&str, &str), Vec<(f64, f64)>> = BTreeMap::new();
    for (run, agent_run) in traced {
        for program in agent_run.programs.iter().filter(|p| p.run_cnt > 0) {
            by_hook
                .entry((program.hook.as_str(), program.name.as_str()))
                .or_default()
                .push((
                    program.run_time_ns as f64 / program.run_cnt as f64,
                    program.run_cnt as f64 / run.client.made.max(1) as f64,
                ));
        }
    }
    let mut rows: Vec<ProgramRow> = by_hook
        .into_iter()
        .filter_map(|((hook, name), values)| {
            let ns_per_call = Spread::of(values.iter().map(|v| v.0))?;
            let calls_per_connection = Spread::of(values.iter().map(|v| v.1))?.median;
            Some(ProgramRow {
                hook: hook.to_owned(),
                name: name.to_owned(),
                ns_per_call,
                calls_per_connection,
                ns_per_connection: ns_per_call.median * calls_per_connection,
            })
        })
        .collect();
    // The costliest per connection first.
    rows.sort_by(|a, b| b.ns_per_connection.total_cmp(&a.ns_per_connection));
    rows
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

    fn run(round: u32, agent: Option<Agent>, made: u64) -> Run {
        Run {
            round,
            attempt: 1,
            pair: Agent::Top,
            agent,
            client: ClientRun {
                pid: 1,
                made,
                seconds: 1.0,
                no_local_port: 0,
                cpu_s: 0.5,
            },
            server_cpu_s: 0.5,
            other_cpu_s: 0.0,
            listen_overflows: 0,
            agent_run: agent.map(|_| AgentRun {
                cpu_s: 0.01,
                peak_rss_kib: 2048,
                observed: Observed::default(),
                expected_events: None,
                transitions: made * 10,
                missed: 3,
                programs: Vec::new(),
            }),
        }
    }

    /// top prints no counts: nothing to hold against the truth, no drops to show, but
    /// its cost and the kernel's misses are measured like any agent's.
    #[test]
    fn an_agent_without_counts_has_no_truth() {
        let runs = vec![run(0, None, 1000), run(0, Some(Agent::Top), 990)];
        let row = agent_row(Agent::Top, &Options::default(), &runs);
        assert_eq!(row.truth_ok, None);
        assert_eq!(row.max_dropped, None);
        assert_eq!(row.max_missed, Some(3));
        assert_eq!(row.worst_events_seen, None);
        assert_eq!(row.worst_connections_counted, None);
        let overhead = row.overhead_pct.unwrap().median;
        assert!((overhead - 1.0).abs() < 1e-9, "{overhead}");
        assert_eq!(row.peak_rss_mib, Some(2.0));
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(9999), "9999");
        assert_eq!(short(418_451), "418.5k");
        assert_eq!(short(12_345_678), "12.35M");
    }
}
