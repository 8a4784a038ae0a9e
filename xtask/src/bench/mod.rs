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
use clap::Args;

use self::{
    agent::Agent,
    netns::Netns,
    summary::{AgentRun, Run},
    syscalls::SyscallRun,
    workload::{Actors, CloseFirst, Limit, Shape},
};
use crate::setup;

/// Packages the benchmark drives besides the build's: the peers, and `ip netns`.
const BENCH_PACKAGES: &[(&str, &str)] = &[("iproute2", "ip"), ("libbpf-tools", "tcpstates")];
const NETNS: &str = "portwatch-bench";

/// What `cargo xtask bench` measures (`--rows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Rows {
    /// Connection churn, bare and under each agent.
    Churn,
    /// A syscall-bound process with no TCP, bare and with each agent attached.
    Syscalls,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds: each runs every agent once, paired with a bare run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Length of each workload run, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,

    /// A quick look: 3 rounds of 3 s (about two minutes with every agent).
    #[arg(long, conflicts_with_all = ["runs", "duration"])]
    quick: bool,

    /// The agents to compare with the bare workload (comma-separated). report, serve
    /// and top run on their default, counting path; report-records, serve-records and
    /// top-records with `--collect records` (one record per transition, the syscalls:*
    /// accept and connect tracepoints attached). top runs on a pseudo-terminal of its
    /// own and prints no counts. Peers that are not installed are left out, with a note.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "report,report-records,stream,serve,serve-records,top,tcpstates,tcplife"
    )]
    agents: Vec<Agent>,

    /// What to measure (comma-separated): `churn`, the connection churn pairs;
    /// `syscalls`, the syscall row (a process making system calls and no TCP,
    /// `dd if=/dev/zero of=/dev/null bs=1 count=N`, bare and under each agent, in
    /// pairs, after the churn pairs).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "churn,syscalls"
    )]
    rows: Vec<Rows>,

    /// Leave out the syscall row (the same as `--rows churn`).
    #[arg(long, conflicts_with = "rows")]
    no_syscall_row: bool,

    /// The syscall row's dd count: bytes copied one at a time, two system calls each.
    #[arg(long, default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    syscall_count: u64,

    /// Pass `--state-hook HOOK` to every portwatch agent (auto: the BTF-typed
    /// tracepoint where possible; classic). Default: portwatch's own default (an older
    /// `--agent-binary` may not know the flag).
    #[arg(long, value_name = "HOOK", value_parser = ["auto", "classic"])]
    state_hook: Option<String>,

    /// Client threads, each with one connection in flight (the server gets as many
    /// workers).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// Request-response exchanges per connection; 0: connect and close.
    #[arg(long, default_value_t = 0)]
    requests: u32,

    /// Which side closes first, and so holds the TIME_WAIT. `client` with 0 requests
    /// is open-loop (the client does not wait for the server) and overflows the
    /// server's accept queue at full speed.
    #[arg(long, value_enum, default_value_t = CloseFirst::Server)]
    close_first: CloseFirst,

    /// How long each connection stays open, e.g. 1ms. Default: closed at once.
    #[arg(long, value_parser = parse_duration)]
    lifetime: Option<Duration>,

    /// Target connections per second over all threads; 0: flat out.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,

    /// Also measure each eBPF program's run time per call (turns the kernel's
    /// statistics on for the run, with BPF_ENABLE_STATS, else kernel.bpf_stats_enabled;
    /// they cost a little themselves), and print a table of each agent's programs.
    /// Calls the kernel skipped (recursion misses) are counted either way.
    #[arg(long)]
    bpf_stats: bool,

    /// Run a pair again when the rest of the machine (other processes) used more than
    /// this many CPUs more during one half than during the other.
    #[arg(long, default_value_t = 0.25)]
    max_noise: f64,

    /// Before each pair, wait up to this long for the machine to be idle (other
    /// processes using under 0.2 CPUs), so that pairs run in the quiet spells of a
    /// shared machine. 0: do not wait.
    #[arg(long, default_value = "60s", value_parser = parse_duration_or_zero)]
    quiet_wait: Duration,

    /// Attempts per pair before keeping a noisy one (marked in the JSON).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    attempts: u32,

    /// The portwatch binary to measure as the agent, e.g. an older build to compare
    /// with (default: this workspace's release build; the workload always comes from
    /// this workspace's portwatch-workload).
    #[arg(long, value_name = "PATH")]
    agent_binary: Option<std::path::PathBuf>,

    /// Keep every agent's output file under target/bench/runs (a stream run writes
    /// hundreds of MB).
    #[arg(long)]
    keep_output: bool,

    /// Run the memory and scale benchmark instead: hold many connections under
    /// `portwatch report`, then churn through them.
    #[arg(long, conflicts_with = "profile")]
    scale: bool,

    /// Profile instead of measuring pairs: one run bare and one under each agent, each
    /// while `perf record -a -g` samples the whole machine, and a table of where the
    /// samples fell (workload, eBPF programs, maps, ring buffer, tracing glue, the
    /// agent's process, idle). Installs Debian's linux-perf.
    #[arg(long)]
    profile: bool,

    #[command(flatten)]
    scale_args: scale::ScaleArgs,
}

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
        BpfStats::enable()?
    } else {
        BpfStats::disable()?
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
                return profile_runs(&context, &agents, duration, out_dir);
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

/// `--profile`: one run bare, then one under each agent, each recorded by perf.
fn profile_runs(
    context: &RunContext,
    agents: &[Agent],
    duration: Duration,
    out_dir: &Path,
) -> Result<()> {
    let mut breakdowns = Vec::new();
    let modes = std::iter::once(None).chain(agents.iter().map(|&agent| Some(agent)));
    for mode in modes {
        let label = mode.map_or("bare", Agent::label);
        let short = mode.map_or("bare", Agent::short_label);
        let path = out_dir.join(format!("perf-{short}.data"));
        let pair = mode.unwrap_or(Agent::Report);
        wait_for_quiet(Duration::from_secs(60));
        let run = context.run_once(0, mode, pair, duration, Some(&path))?;
        eprintln!(
            "xtask: bench: profiled {label}: {:.0} conn/s, {}",
            run.client.rate(),
            path.display()
        );
        breakdowns.push(profile::breakdown(short, &path, WORKLOAD_COMMS)?);
    }
    print!("{}", profile::table(&breakdowns));
    let json = serde_json::to_string_pretty(&breakdowns)?;
    let path = out_dir.join("profile-latest.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "xtask: bench: breakdown in {}; `perf report -i <file>` shows every symbol",
        path.display()
    );
    Ok(())
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

/// The kernel's per-program run-time statistics, as the invocation wants them while it
/// lives. On (`--bpf-stats`): with a BPF_ENABLE_STATS descriptor where the kernel has it
/// (a reference, which other processes' writes to the sysctl cannot undo), else with
/// kernel.bpf_stats_enabled. Off otherwise: a kernel.bpf_stats_enabled left at 1 by
/// someone else makes every eBPF program read the clock twice per call (in a VM, the
/// paravirtual clock: tens of ns), which would be charged to the agents. Whatever the
/// sysctl said is restored when dropped.
enum BpfStats {
    Descriptor(#[allow(dead_code)] std::os::fd::OwnedFd),
    Sysctl { old: String },
    Untouched,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        if let Some(fd) = procfs::enable_bpf_stats() {
            return Ok(BpfStats::Descriptor(fd));
        }
        let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats::Sysctl { old })
    }

    fn disable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS).unwrap_or_default();
        if old.trim() != "1" {
            return Ok(BpfStats::Untouched);
        }
        eprintln!(
            "xtask: bench: kernel.bpf_stats_enabled was 1 (set outside the benchmark): \
             turned off for this invocation, so the agents' programs do not pay for \
             statistics nobody reads; restored at the end"
        );
        fs::write(BPF_STATS, "0").context("disabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats::Sysctl { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let BpfStats::Sysctl { old } = self {
            let _ = fs::write(BPF_STATS, old.trim());
        }
    }
}

fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match text {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// Durations are parsed as portwatch parses its own.
pub(crate) use portwatch_workload::parse_duration;
