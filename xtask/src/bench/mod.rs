//! `cargo xtask bench`: what portwatch costs a host under connection churn, side by side
//! with libbpf-tools' tcpstates and tcplife.
//!
//! The churn workload runs bare and under each agent in alternating pairs (bare then
//! agent, agent then bare in the next round), so that the machine's drift over the run
//! cancels out of each pair's overhead. Each agent's count is checked against the
//! client's exact number of connections times the transitions per connection, which
//! the kernel itself counts once at the start (see `calibrate`).
//!
//! After the churn pairs, the syscall row (see `syscalls`): a process making system
//! calls and no TCP, bare and with each agent attached, in pairs too.
//!
//! `cargo xtask bench --scale` is the memory run instead (see `scale`).
mod agent;
mod args;
mod bpf_stats;
mod calibrate;
mod netns;
mod process;
mod procfs;
mod profile;
mod pty;
mod scale;
mod scrape;
mod summary;
mod syscalls;
mod workload;

use std::{fs, path::Path, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use self::{
    agent::Agent,
    netns::Netns,
    summary::{AgentRun, Run},
    syscalls::SyscallRun,
    workload::{Actors, Limit, Shape},
};
use crate::setup;

pub use args::BenchArgs;
use args::Rows;

/// Packages the benchmark drives besides the build's: the peers, and `ip netns`.
const BENCH_PACKAGES: &[(&str, &str)] = &[("iproute2", "ip"), ("libbpf-tools", "tcpstates")];
const NETNS: &str = "portwatch-bench";

pub fn run(workspace: &Path, args: BenchArgs) -> Result<()> {
    if !setup::is_root() {
        bail!("the benchmark loads eBPF and creates a network namespace: run it as root");
    }
    setup::all(workspace)?;
    // The peers are optional: a machine that cannot install them still benchmarks
    // portwatch.
    if let Err(err) = setup::debian_packages(BENCH_PACKAGES) {
        eprintln!("xtask: bench: {err:#}");
    }
    if !setup::on_path("ip") {
        bail!("the benchmark needs `ip` (iproute2) for its network namespace");
    }
    crate::cargo(
        workspace,
        &[
            "build",
            "--release",
            "--package",
            "portwatch",
            "--package",
            "portwatch-workload",
        ],
    )?;
    let out_dir = workspace.join("target/bench");
    fs::create_dir_all(out_dir.join("runs"))
        .with_context(|| format!("creating {}", out_dir.display()))?;
    let portwatch = workload::portwatch_binary(workspace);
    let workload = workload::workload_binary(workspace);
    if args.scale {
        return scale::run(&portwatch, &workload, &out_dir, &args.scale_args);
    }
    if args.profile {
        setup::debian_packages(&[("linux-perf", "perf")]).context("the profile needs perf")?;
    }
    churn(&portwatch, &workload, &out_dir, args)
}

fn churn(portwatch: &Path, workload: &Path, out_dir: &Path, args: BenchArgs) -> Result<()> {
    let (runs, duration) = if args.quick {
        (3, Duration::from_secs(3))
    } else {
        (args.runs, args.duration)
    };
    let agents: Vec<Agent> = args
        .agents
        .iter()
        .copied()
        .filter(|agent| {
            let installed = agent.is_portwatch() || setup::on_path(agent.program());
            if !installed {
                eprintln!("xtask: bench: {} is not installed: left out", agent.label());
            }
            installed
        })
        .collect();
    let measure_churn = args.profile || args.rows.contains(&Rows::Churn);
    let measure_syscalls =
        !args.profile && !args.no_syscall_row && args.rows.contains(&Rows::Syscalls);
    let shape = Shape {
        threads: args.threads,
        requests: args.requests,
        close_first: args.close_first,
        lifetime: args.lifetime,
        rate: args.rate,
    };
    let _stats = if args.bpf_stats {
        bpf_stats::BpfStats::enable()?
    } else {
        bpf_stats::BpfStats::disable()?
    };

    let netns = Netns::create(NETNS)?;
    let actors = Actors {
        workload: workload.to_owned(),
        netns: &netns,
    };
    let calibration = if measure_churn {
        eprintln!("xtask: bench: counting the transitions of one connection (tracefs)");
        let server = actors.server(&shape)?;
        let calibration = calibrate::run(&actors, &shape, server.pid(), server.port, 2000)?;
        eprintln!(
            "xtask: bench: each connection makes {} transitions ({} closes) and {} accept: {}",
            calibration.transitions_per_connection,
            calibration.closes_per_connection,
            calibration.accepts_per_connection,
            calibration
                .breakdown
                .iter()
                .map(|(pair, n)| format!("{pair} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(calibration)
    } else {
        None
    };

    let agent_binary = args.agent_binary.as_deref().unwrap_or(portwatch);
    let options = agent::Options {
        max_sockets: None,
        state_hook: args.state_hook.clone(),
    };
    let pairing = Pairing {
        runs,
        agents: &agents,
        quiet_wait: args.quiet_wait,
        max_noise: args.max_noise,
        attempts: args.attempts,
    };
    let mut summary = match &calibration {
        Some(calibration) => {
            let context = RunContext {
                portwatch: agent_binary,
                out_dir,
                actors: &actors,
                shape: &shape,
                keep_output: args.keep_output,
                calibration,
                options: &options,
            };
            // Warm up the machine before the first measured run.
            context.run_once(0, None, Agent::Report, Duration::from_secs(1), None)?;
            if args.profile {
                return profile::runs(&context, &agents, duration, out_dir);
            }
            let results = pairing.run("churn", |round, mode, pair| {
                context.run_once(round, mode, pair, duration, None)
            })?;
            summary::Summary::new(
                &shape,
                duration,
                runs,
                Some(calibration),
                &agents,
                &options,
                results,
            )
        }
        None => summary::Summary::new(&shape, duration, runs, None, &agents, &options, vec![]),
    };
    if measure_syscalls {
        let count = args.syscall_count;
        eprintln!(
            "xtask: bench: the syscall row: `{}`, bare and with each agent attached",
            syscalls::command_line(count)
        );
        let results = pairing.run("syscalls", |round, mode, pair| {
            syscall_run(
                agent_binary,
                out_dir,
                &options,
                args.keep_output,
                round,
                mode,
                pair,
                count,
            )
        })?;
        summary.syscalls = Some(syscalls::SyscallSummary::new(
            count, &agents, &options, results,
        ));
    }
    summary.agent_binary = agent_binary.display().to_string();
    print!("{}", summary.table());
    let json = serde_json::to_string_pretty(&summary)?;
    let stamp = summary.started_unix;
    let path = out_dir.join(format!("bench-{stamp}.json"));
    fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    fs::write(out_dir.join("latest.json"), &json)?;
    eprintln!("xtask: bench: results in {}", path.display());
    Ok(())
}

/// One half of a pair: a run bare or under an agent.
trait Half {
    /// CPUs the rest of the machine kept busy during the run, on average.
    fn other_cpus(&self) -> f64;
    fn set_attempt(&mut self, attempt: u32);
    /// What the progress line shows of the run.
    fn progress(&self) -> String;
}

impl Half for Run {
    fn other_cpus(&self) -> f64 {
        Run::other_cpus(self)
    }

    fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    fn progress(&self) -> String {
        format!("{:>8.0} conn/s", self.client.rate())
    }
}

/// How runs are paired: every agent once per round, each with a bare run.
struct Pairing<'a> {
    runs: u32,
    agents: &'a [Agent],
    quiet_wait: Duration,
    max_noise: f64,
    attempts: u32,
}

impl Pairing<'_> {
    /// Runs every pair; `half(round, mode, pair)` makes one run, bare (`mode` None) or
    /// under an agent, paired with `pair`.
    fn run<T: Half>(
        &self,
        what: &str,
        mut half: impl FnMut(u32, Option<Agent>, Agent) -> Result<T>,
    ) -> Result<Vec<T>> {
        let total = self.runs as usize * self.agents.len() * 2;
        let mut results = Vec::with_capacity(total);
        for round in 0..self.runs {
            for (index, &agent) in self.agents.iter().enumerate() {
                // Bare first in one pair, agent first in the next: what the machine's
                // drift adds to one side of a pair it takes from the other in the next.
                let order = if (round as usize + index).is_multiple_of(2) {
                    [None, Some(agent)]
                } else {
                    [Some(agent), None]
                };
                let mut attempt = 1;
                loop {
                    wait_for_quiet(self.quiet_wait);
                    let mut pair = Vec::with_capacity(2);
                    for mode in order {
                        let mut run = half(round, mode, agent)?;
                        run.set_attempt(attempt);
                        eprintln!(
                            "xtask: bench: {what} [{:>3}/{total}] round {} {:<40} {}  \
                             (rest of machine {:.2} CPUs)",
                            results.len() + pair.len() + 1,
                            round + 1,
                            mode.map_or("bare", Agent::label),
                            run.progress(),
                            run.other_cpus(),
                        );
                        pair.push(run);
                    }
                    // A pair is only fair if the rest of the machine (other processes on
                    // a shared host) took about as much CPU during both halves.
                    let unequal = (pair[0].other_cpus() - pair[1].other_cpus()).abs();
                    if unequal <= self.max_noise || attempt >= self.attempts {
                        if unequal > self.max_noise {
                            eprintln!(
                                "xtask: bench: keeping a pair whose halves saw {unequal:.2} \
                                 CPUs of other work apart, after {attempt} attempts"
                            );
                        }
                        results.extend(pair);
                        break;
                    }
                    eprintln!(
                        "xtask: bench: the rest of the machine took {unequal:.2} CPUs more \
                         in one half of the pair: running it again"
                    );
                    attempt += 1;
                }
            }
        }
        Ok(results)
    }
}

/// One run of the syscall row: dd bare (`mode` None) or with the agent attached.
#[allow(clippy::too_many_arguments)]
fn syscall_run(
    portwatch: &Path,
    out_dir: &Path,
    options: &agent::Options,
    keep_output: bool,
    round: u32,
    mode: Option<Agent>,
    pair: Agent,
    count: u64,
) -> Result<SyscallRun> {
    let output = out_dir
        .join("runs")
        .join(format!("{}-syscalls-{round}.out", pair.short_label()));
    let mut agent = mode
        .map(|agent| agent::start(agent, portwatch, &output, options))
        .transpose()?;
    if let Some(agent) = &mut agent {
        // Let the agent settle after its startup snapshot.
        thread::sleep(Duration::from_millis(300));
        agent.workload_starts()?;
    }
    let busy = procfs::host_busy_seconds();
    let (wall_s, cpu_s) = syscalls::time_dd(count)?;
    let busy = procfs::host_busy_seconds() - busy;
    let agent_cpu = agent.as_ref().map_or(0.0, agent::Running::cpu_so_far);
    if let Some(agent) = agent {
        let stopped = agent.stop()?;
        if !keep_output {
            let _ = fs::remove_file(&stopped.output);
        }
    }
    Ok(SyscallRun {
        round,
        attempt: 1,
        pair,
        agent: mode,
        wall_s,
        cpu_s,
        other_cpu_s: (busy - cpu_s - agent_cpu).max(0.0),
    })
}

/// The workload's processes and threads, by comm (see portwatch-workload's roles).
const WORKLOAD_COMMS: &[&str] = &["churn-client", "echo-"];

struct RunContext<'a> {
    portwatch: &'a Path,
    out_dir: &'a Path,
    actors: &'a Actors<'a>,
    shape: &'a Shape,
    keep_output: bool,
    calibration: &'a calibrate::Calibration,
    options: &'a agent::Options,
}

impl RunContext<'_> {
    /// One workload run, bare (`mode` None) or under an agent; `pair` names the agent
    /// the run is paired with.
    fn run_once(
        &self,
        round: u32,
        mode: Option<Agent>,
        pair: Agent,
        duration: Duration,
        profile: Option<&Path>,
    ) -> Result<Run> {
        let name = mode.unwrap_or(pair).short_label();
        let output = self
            .out_dir
            .join("runs")
            .join(format!("{name}-{round}.out"));
        let mut agent = mode
            .map(|agent| agent::start(agent, self.portwatch, &output, self.options))
            .transpose()?;
        if let Some(agent) = &mut agent {
            // Let the agent settle after its startup snapshot.
            thread::sleep(Duration::from_millis(300));
            agent.workload_starts()?;
        }
        // A fresh server for each run, started after the agent: the agent sees it
        // listen, as it would a service started while it runs. (A listener that
        // predates portwatch is known from its startup snapshot, but that reads only
        // portwatch's own network namespace.)
        let server = self.actors.server(self.shape)?;
        let server_cpu = procfs::cpu_seconds(server.pid())?;
        let busy = procfs::host_busy_seconds();
        let overflows = listen_overflows(server.pid());
        let recording = profile
            .map(|path| profile::Recording::start(path, duration))
            .transpose()?;
        let client = self
            .actors
            .client(self.shape, server.port, Limit::Duration(duration))?;
        if let Some(recording) = recording {
            recording.finish()?;
        }
        // The last connections' final transitions run just after the client's close.
        thread::sleep(Duration::from_millis(300));
        let listen_overflows = listen_overflows(server.pid()) - overflows;
        let server_cpu = procfs::cpu_seconds(server.pid())? - server_cpu;
        let busy = procfs::host_busy_seconds() - busy;
        let agent_cpu = agent.as_ref().map_or(0.0, agent::Running::cpu_so_far);
        let agent_run = match agent {
            None => None,
            Some(running) => {
                let stopped = running.stop()?;
                let observed = agent::observe(&stopped, server.port, client.pid, server.pid())?;
                if !self.keep_output {
                    let _ = fs::remove_file(&stopped.output);
                }
                Some(AgentRun::new(&stopped, observed, &client, self.calibration))
            }
        };
        Ok(Run {
            round,
            attempt: 1,
            pair,
            agent: mode,
            client,
            server_cpu_s: server_cpu,
            other_cpu_s: (busy - client.cpu_s - server_cpu - agent_cpu).max(0.0),
            listen_overflows,
            agent_run,
        })
    }
}

/// Waits up to `timeout` for a second in which the machine (everything: nothing of the
/// benchmark runs now) kept under 0.2 CPUs busy.
fn wait_for_quiet(timeout: Duration) {
    const QUIET_CPUS: f64 = 0.2;
    if timeout.is_zero() {
        return;
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut said = false;
    loop {
        let before = procfs::host_busy_seconds();
        thread::sleep(Duration::from_secs(1));
        let busy = procfs::host_busy_seconds() - before;
        if busy < QUIET_CPUS {
            return;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "xtask: bench: the machine is still busy ({busy:.2} CPUs) after {timeout:?}: \
                 going on"
            );
            return;
        }
        if !said {
            said = true;
            eprintln!("xtask: bench: waiting for the machine to be quiet ({busy:.2} CPUs busy)");
        }
    }
}

fn listen_overflows(server_pid: u32) -> u64 {
    procfs::netstat(server_pid, "TcpExt", "ListenOverflows").unwrap_or(0)
}

/// Durations are parsed as portwatch parses its own.
pub(crate) use portwatch_workload::parse_duration;
