//! `cargo xtask bench`'s command line.
use std::time::Duration;

use clap::Args;

use super::{agent::Agent, parse_duration, scale, workload::CloseFirst};

/// What `cargo xtask bench` measures (`--rows`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Rows {
    /// Connection churn, bare and under each agent.
    Churn,
    /// A syscall-bound process with no TCP, bare and with each agent attached.
    Syscalls,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds: each runs every agent once, paired with a bare run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) runs: u32,

    /// Length of each workload run, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(super) duration: Duration,

    /// A quick look: 3 rounds of 3 s (about two minutes with every agent).
    #[arg(long, conflicts_with_all = ["runs", "duration"])]
    pub(super) quick: bool,

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
    pub(super) agents: Vec<Agent>,

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
    pub(super) rows: Vec<Rows>,

    /// Leave out the syscall row (the same as `--rows churn`).
    #[arg(long, conflicts_with = "rows")]
    pub(super) no_syscall_row: bool,

    /// The syscall row's dd count: bytes copied one at a time, two system calls each.
    #[arg(long, default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) syscall_count: u64,

    /// Pass `--state-hook HOOK` to every portwatch agent (auto: the BTF-typed
    /// tracepoint where possible; classic). Default: portwatch's own default (an older
    /// `--agent-binary` may not know the flag).
    #[arg(long, value_name = "HOOK", value_parser = ["auto", "classic"])]
    pub(super) state_hook: Option<String>,

    /// Client threads, each with one connection in flight (the server gets as many
    /// workers).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(super) threads: u16,

    /// Request-response exchanges per connection; 0: connect and close.
    #[arg(long, default_value_t = 0)]
    pub(super) requests: u32,

    /// Which side closes first, and so holds the TIME_WAIT. `client` with 0 requests
    /// is open-loop (the client does not wait for the server) and overflows the
    /// server's accept queue at full speed.
    #[arg(long, value_enum, default_value_t = CloseFirst::Server)]
    pub(super) close_first: CloseFirst,

    /// How long each connection stays open, e.g. 1ms. Default: closed at once.
    #[arg(long, value_parser = parse_duration)]
    pub(super) lifetime: Option<Duration>,

    /// Target connections per second over all threads; 0: flat out.
    #[arg(long, default_value_t = 0.0)]
    pub(super) rate: f64,

    /// Also measure each eBPF program's run time per call (turns the kernel's
    /// statistics on for the run, with BPF_ENABLE_STATS, else kernel.bpf_stats_enabled;
    /// they cost a little themselves), and print a table of each agent's programs.
    /// Calls the kernel skipped (recursion misses) are counted either way.
    #[arg(long)]
    pub(super) bpf_stats: bool,

    /// Run a pair again when the rest of the machine (other processes) used more than
    /// this many CPUs more during one half than during the other.
    #[arg(long, default_value_t = 0.25)]
    pub(super) max_noise: f64,

    /// Before each pair, wait up to this long for the machine to be idle (other
    /// processes using under 0.2 CPUs), so that pairs run in the quiet spells of a
    /// shared machine. 0: do not wait.
    #[arg(long, default_value = "60s", value_parser = parse_duration_or_zero)]
    pub(super) quiet_wait: Duration,

    /// Attempts per pair before keeping a noisy one (marked in the JSON).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) attempts: u32,

    /// The portwatch binary to measure as the agent, e.g. an older build to compare
    /// with (default: this workspace's release build; the workload always comes from
    /// this workspace's portwatch-workload).
    #[arg(long, value_name = "PATH")]
    pub(super) agent_binary: Option<std::path::PathBuf>,

    /// Keep every agent's output file under target/bench/runs (a stream run writes
    /// hundreds of MB).
    #[arg(long)]
    pub(super) keep_output: bool,

    /// Run the memory and scale benchmark instead: hold many connections under
    /// `portwatch report`, then churn through them.
    #[arg(long, conflicts_with = "profile")]
    pub(super) scale: bool,

    /// Profile instead of measuring pairs: one run bare and one under each agent, each
    /// while `perf record -a -g` samples the whole machine, and a table of where the
    /// samples fell (workload, eBPF programs, maps, ring buffer, tracing glue, the
    /// agent's process, idle). Installs Debian's linux-perf.
    #[arg(long)]
    pub(super) profile: bool,

    #[command(flatten)]
    pub(super) scale_args: scale::ScaleArgs,
}

fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    match text {
        "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}
