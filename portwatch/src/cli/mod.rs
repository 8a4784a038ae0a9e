//! Command-line interface.
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use portwatch_workload::{self as workload, parse_duration};

use crate::{
    bpf::{EbpfLogLevel, StateHook, TracerOptions},
    detect::{
        model::Limits,
        report::{Severity, Thresholds},
    },
    output::stream::Format,
    tcp_state::TcpState,
};

#[derive(Debug, Parser)]
#[command(
    name = "portwatch",
    version,
    about = "Finds the processes behind TCP port exhaustion, from the kernel's TCP state tracepoint",
    long_about = "portwatch traces every TCP state change on this host with eBPF and shows which \
                  processes leak sockets in CLOSE_WAIT or churn through short connections that \
                  fill TIME_WAIT. Tracing needs root (or CAP_BPF and CAP_PERFMON); \
                  `portwatch snapshot` needs no eBPF.",
    after_help = "Examples:\n  \
                  portwatch stream                      every transition, until Ctrl-C\n  \
                  portwatch stream --state CLOSE_WAIT   sockets entering or leaving CLOSE_WAIT\n  \
                  portwatch stream --port 5432 --format json --duration 30s > events.jsonl\n  \
                  portwatch stream --connections        one line per finished connection\n  \
                  portwatch snapshot --state CLOSE_WAIT sockets in CLOSE_WAIT now, per process"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace for a while, then name the processes that leak CLOSE_WAIT sockets or churn
    /// connections, and forecast ephemeral-port exhaustion.
    Report(ReportArgs),
    /// Start a leaking server, a churning client and a healthy client as child processes,
    /// trace them for a few seconds, and report: what portwatch finds, in 10 seconds.
    Demo(DemoArgs),
    /// Print one line per TCP state transition as it happens, or with --connections one
    /// per finished connection.
    Stream(StreamArgs),
    /// Save a window of events (with the sockets open at the start) for
    /// `report --replay`, which needs no root.
    Record(RecordArgs),
    /// Run continuously and serve Prometheus metrics (/metrics) and /healthz: sockets
    /// by state per workload, CLOSE_WAIT ages, connection churn, ports in use and time
    /// to exhaustion per destination, open findings.
    Serve(ServeArgs),
    /// A full-screen live view: processes by CLOSE_WAIT sockets and churn, the host's
    /// rates, the destinations nearest running out of ports (see docs/top.md).
    #[command(
        long_about = "A full-screen live view of this host's TCP sockets, redrawn every \
                      --interval: sockets per state, and connections, TIME_WAIT made and \
                      failed connects per second, with sparklines; a table of processes (CLOSE_WAIT \
                      sockets and the oldest's age, growth, connections/s, TIME_WAIT made \
                      and held, median lifetime, open findings); the destinations nearest \
                      running out of local ports. Enter shows a process's CLOSE_WAIT \
                      sockets, destinations, lifetimes and what to change; ? lists the \
                      keys.\n\n\
                      It needs a terminal: for scripts use `report`, `stream` or `serve`. \
                      Tracing needs root (or CAP_BPF and CAP_PERFMON); --replay FILE plays \
                      a `portwatch record` file instead and needs no root.",
        after_help = "Examples:\n  \
                      portwatch top                          live, redrawn every second\n  \
                      portwatch top --sort connections       churners first\n  \
                      portwatch top --pid 1234 --interval 5s one process, every 5 s\n  \
                      portwatch top --replay window.pwrec    play a recording (no root)"
    )]
    Top(TopArgs),
    /// List every TCP socket now, grouped and counted by the process holding it.
    #[command(
        long_about = "List every TCP socket on this host now, grouped by the process that holds it, \
                      with a count per state: a grouped and counted `ss -tanp`. For CLOSE_WAIT it \
                      shows how long the oldest socket has at least been waiting for its process \
                      to close it.\n\n\
                      It reads the kernel's socket table (sock_diag) and /proc/*/fd, and loads no \
                      eBPF, so it needs no CAP_BPF. Run it as root to see which process holds each \
                      socket: without root, other users' processes cannot be read, their sockets \
                      are listed under \"no process\", and the number of unreadable processes is \
                      reported."
    )]
    Snapshot(SnapshotArgs),

    /// Run one of the demo's processes: a real process that leaks, churns or behaves
    /// well. Not for users, so hidden from --help.
    #[command(hide = true)]
    Actor(ActorArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Findings, then a table of processes.
    Text,
    /// One JSON object (schema in docs/report.md).
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// How long to trace, e.g. 30s, 2m. Ctrl-C ends early and still reports.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Exit with code 2 when a finding this severe or worse exists (for scripts and
    /// health checks).
    #[arg(long, value_enum, value_name = "SEVERITY")]
    pub fail_on: Option<Severity>,

    /// Only sockets in this network namespace: its inode number (`lsns -t net`), an
    /// `ip netns` name (/run/netns), or a PID (or `pid:PID`) whose namespace to use.
    #[arg(long, value_name = "NS", value_parser = parse_netns)]
    pub netns: Option<u32>,

    /// Report on a file made by `portwatch record` instead of tracing (no root needed).
    #[arg(long, value_name = "FILE", conflicts_with = "record")]
    pub replay: Option<std::path::PathBuf>,

    /// Also save the traced window to FILE, like `portwatch record`, so it can be
    /// replayed later with --replay. Implies --collect records.
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// `portwatch serve`: see docs/serve.md.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to serve /metrics and /healthz on. Loopback by default: a
    /// scraper elsewhere needs it opened on purpose (e.g. --listen 0.0.0.0:10479).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,

    /// Give the top N processes (by CLOSE_WAIT sockets, then sockets held) a `pid`
    /// label on the socket gauges. Off by default: PIDs make series churn.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub pid_labels: usize,

    /// How many (workload, comm) label sets get series of their own; the rest fold
    /// into workload="other", comm="other".
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_series_workloads: u32,

    /// How many destinations get series of their own (those nearest exhaustion, then
    /// the most ports in use); the rest fold into destination="other".
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_series_destinations: u32,

    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// `portwatch top`: see docs/top.md.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between redraws (and between the samples rates are measured over), e.g.
    /// 500ms, 2s; + and - change it while running.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// The column the process table is sorted by at start; keys change it.
    #[arg(long, value_enum, value_name = "COLUMN", default_value_t = crate::top::sort::SortKey::CloseWait)]
    pub sort: crate::top::sort::SortKey,

    /// Only this process in the table (repeatable); the host's numbers stay host-wide.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only sockets in this network namespace: its inode number (`lsns -t net`), an
    /// `ip netns` name (/run/netns), or a PID (or `pid:PID`) whose namespace to use.
    #[arg(long, value_name = "NS", value_parser = parse_netns)]
    pub netns: Option<u32>,

    /// Play a file made by `portwatch record` (or `report --record`) instead of
    /// tracing, at its own pace; space pauses it and `.` steps. Needs no root.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<std::path::PathBuf>,

    /// Start paused on the first frame (a replay: at the recording's start); space
    /// runs, `.` steps one interval.
    #[arg(long)]
    pub paused: bool,

    #[command(flatten)]
    pub summary: SummaryArgs,
}

/// An interval a terminal can keep up with: 100 ms to 1 h.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return Err(format!(
            "{text} is outside 100ms..1h: redrawing faster costs CPU for nothing a person can read"
        ));
    }
    Ok(interval)
}

/// `portwatch serve`'s default address: loopback, on a port outside 9100-9999, the
/// range the Prometheus exporter port list allocated and has filled (docs/serve.md).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10479";

impl ModelLimitArgs {
    /// The model's limits; its socket table shares the kernel's `--max-sockets`.
    pub fn with_sockets(&self, kernel: &KernelArgs) -> Limits {
        Limits {
            max_sockets: kernel.max_sockets as usize,
            max_processes: self.max_processes as usize,
            max_destinations: self.max_destinations as usize,
        }
    }
}

impl ServeArgs {
    pub fn series_limits(&self) -> crate::output::metrics::SeriesLimits {
        crate::output::metrics::SeriesLimits {
            workloads: self.max_series_workloads as usize,
            destinations: self.max_series_destinations as usize,
            pid_labels: self.pid_labels,
        }
    }
}

impl DetectionArgs {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            close_wait_age_ns: self.close_wait_age.as_nanos() as u64,
            close_wait_critical: self.close_wait_critical,
            churn_rate_per_s: self.churn_rate,
            short_lived_ns: self.short_lived.as_nanos() as u64,
            exhaustion_critical_s: self.exhaustion_critical.as_secs_f64(),
        }
    }
}

/// What the commands that summarise (`report`, `serve`, `top`) share: how the kernel
/// hands transitions over, when behaviour becomes a finding, the kernel's buffers and
/// the model's bounds.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub collect: CollectArgs,

    #[command(flatten)]
    pub detection: DetectionArgs,

    #[command(flatten)]
    pub kernel: KernelArgs,

    #[command(flatten)]
    pub limits: ModelLimitArgs,
}

impl SummaryArgs {
    pub fn limits(&self) -> Limits {
        self.limits.with_sockets(&self.kernel)
    }

    pub fn thresholds(&self) -> Thresholds {
        self.detection.thresholds()
    }
}

/// When behaviour becomes a finding.
#[derive(Debug, Args)]
#[command(next_help_heading = "Detection thresholds")]
pub struct DetectionArgs {
    /// A socket in CLOSE_WAIT this long is leaked (applications close within
    /// milliseconds of reading EOF).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub close_wait_age: Duration,

    /// This many CLOSE_WAIT sockets make a leak critical (so does one older than 10 min).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub close_wait_critical: usize,

    /// Connections opened per second (by one process) that count as churn, when most
    /// are short-lived.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 20.0)]
    pub churn_rate: f64,

    /// Connections shorter than this are short-lived.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub short_lived: Duration,

    /// Port exhaustion forecast sooner than this is critical, later a warning.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub exhaustion_critical: Duration,
}

/// How much a report keeps in memory, so a long window stays bounded. Beyond a limit
/// the longest idle entries with nothing live go first; evictions are counted in the
/// report.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct ModelLimitArgs {
    /// How many processes' activity a report keeps. Beyond it, exited processes that
    /// hold no socket are forgotten first, processes holding CLOSE_WAIT sockets last.
    #[arg(long, value_name = "N", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: u32,

    /// How many destinations (local address, remote address, port) a report keeps.
    /// Beyond it, those no port is taken toward are forgotten first, the longest idle
    /// first.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_destinations: u32,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long to trace the demo's processes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,

    /// How long to record, e.g. 30s, 2m. Ctrl-C ends early and keeps what was recorded.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// Output format: aligned text, or one JSON object per line (schema in docs/stream.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// One line per finished connection instead of per transition, like tcplife: its
    /// owner, ends, duration, which side closed first and whether this side was left in
    /// TIME_WAIT. Only connections that got past the handshake; failed attempts are
    /// counted in the summary.
    #[arg(long, conflicts_with = "states")]
    pub connections: bool,

    /// Only sockets whose owner has this PID (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only sockets with this local or remote port (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// Only transitions from or to this state, e.g. CLOSE_WAIT or time-wait (repeatable).
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<TcpState>,

    /// Only sockets in this network namespace: its inode number (`lsns -t net`), an
    /// `ip netns` name (/run/netns), or a PID (or `pid:PID`) whose namespace to use.
    #[arg(long, value_name = "NS", value_parser = parse_netns)]
    pub netns: Option<u32>,

    /// Stop after this long, e.g. 10s, 2m, 1h30m. Default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub kernel: KernelArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Output format: aligned text, or one JSON object (schema in docs/snapshot.md).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Only sockets in this state, e.g. CLOSE_WAIT or time-wait (repeatable).
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<TcpState>,

    /// Only sockets in this network namespace: its inode number (`lsns -t net`), an
    /// `ip netns` name (/run/netns), or a PID (or `pid:PID`) whose namespace to use.
    #[arg(long, value_name = "NS", value_parser = parse_netns)]
    pub netns: Option<u32>,
}

/// `--netns`: see [`crate::sockets::netns::resolve`].
fn parse_netns(spec: &str) -> Result<u32, String> {
    crate::sockets::netns::resolve(spec)
}

/// Sizes of the kernel-side buffers, shared by every tracing command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kernel buffers")]
pub struct KernelArgs {
    /// Ring-buffer size between kernel and portwatch: a power of two such as 4M, 16M.
    /// Events that find it full are counted as dropped.
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_ring_buffer_size)]
    pub ring_buffer_size: u32,

    /// How many live sockets the kernel-side table can hold, and portwatch's own table
    /// (and its TIME_WAIT groups). Beyond it the kernel counts sockets as untracked
    /// (shown without their time in state), and portwatch evicts: stale and closing
    /// sockets first, CLOSE_WAIT sockets last.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets: u32,

    /// Show the eBPF programs' own diagnostics (a full table, a dropped event) on stderr,
    /// from this level up. Off by default, when they cost nothing.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = EbpfLogLevel::Off)]
    pub ebpf_log: EbpfLogLevel,

    /// Which form of the kernel's TCP state tracepoint to attach: `auto` takes the
    /// BTF-typed one (less overhead per transition) where the kernel's BTF shows the
    /// socket laid out as portwatch reads it, else the classic one; `classic` forces
    /// the classic one.
    #[arg(long, value_enum, value_name = "HOOK", default_value_t = StateHook::Auto)]
    pub state_hook: StateHook,
}

impl KernelArgs {
    /// The tracer's options; the sink decides how transitions are collected.
    pub fn options(&self) -> TracerOptions {
        TracerOptions {
            ring_buffer_bytes: self.ring_buffer_size,
            max_sockets: self.max_sockets,
            ebpf_log: self.ebpf_log,
            state_hook: self.state_hook,
            ..TracerOptions::default()
        }
    }
}

/// `--collect`, for the commands that summarise (`report`, `serve`, `top`).
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// How the kernel hands transitions over: `counts` (the default) costs a churning
    /// host least and hooks no system call; `records` is one record per transition, as
    /// `stream` gets them (see docs/kernels.md).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = CollectMode::Counts)]
    pub collect: CollectMode,
}

impl CollectArgs {
    pub fn kernel(&self) -> portwatch_common::Collect {
        self.collect.kernel()
    }
}

/// How a summarising command (`report`, `serve`, `top`) gets transitions from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CollectMode {
    /// Counts per process and destination in the kernel, read every second; records
    /// only for listeners, failed connects and sockets that predate portwatch. A few
    /// percent of a churning host's connections per second, and no system-call hooks.
    Counts,
    /// One record per transition, as `stream` gets them, with the accept() and
    /// connect() hooks (exact owners of accepted sockets as they are accepted; every
    /// process's system calls take the kernel's slow path while attached).
    Records,
}

impl CollectMode {
    pub fn kernel(self) -> portwatch_common::Collect {
        match self {
            CollectMode::Counts => portwatch_common::Collect::Counts,
            CollectMode::Records => portwatch_common::Collect::Records,
        }
    }
}

/// `portwatch actor [--until-stdin-eof] <ROLE> [options]`: the processes `portwatch demo`
/// starts, run by the workload library, so that the demo needs nothing but this binary.
/// Only the demo's roles; tests and benchmarks run `portwatch-workload`.
#[derive(Debug, Args)]
pub struct ActorArgs {
    /// Exit (status 0) when standard input reaches EOF, so an actor dies with the parent
    /// that holds its stdin, even when that parent is killed.
    #[arg(long, global = true)]
    pub until_stdin_eof: bool,

    /// Once set up, wait for a `go` line on stdin before working (with
    /// --until-stdin-eof): the demo starts its processes before attaching.
    #[arg(long, global = true, requires = "until_stdin_eof")]
    pub start_on_go: bool,

    #[command(subcommand)]
    pub role: ActorRole,
}

#[derive(Debug, Subcommand)]
pub enum ActorRole {
    /// Accepts connections and never closes them: CLOSE_WAIT.
    LeakServer(workload::LeakServerArgs),
    /// Connects N times and closes each connection at once.
    LeakClient(workload::LeakClientArgs),
    /// Answers each request line and closes after the peer.
    EchoServer(workload::EchoServerArgs),
    /// Opens short connections at a fixed rate, closing first: TIME_WAIT churn.
    ChurnClient(workload::ChurnClientArgs),
    /// One connection, one request per interval.
    KeepaliveClient(workload::KeepaliveClientArgs),
}

impl From<ActorRole> for workload::Role {
    fn from(role: ActorRole) -> workload::Role {
        match role {
            ActorRole::LeakServer(args) => workload::Role::LeakServer(args),
            ActorRole::LeakClient(args) => workload::Role::LeakClient(args),
            ActorRole::EchoServer(args) => workload::Role::EchoServer(args),
            ActorRole::ChurnClient(args) => workload::Role::ChurnClient(args),
            ActorRole::KeepaliveClient(args) => workload::Role::KeepaliveClient(args),
        }
    }
}

/// `4096`, `512K`, `8M`, `1G` (binary units; a trailing `iB`/`B` is accepted).
fn parse_size(text: &str) -> Result<u32, String> {
    let upper = text.trim().to_ascii_uppercase();
    let digits = upper.trim_end_matches("IB").trim_end_matches('B');
    let (number, shift) = match digits.chars().last() {
        Some('K') => (&digits[..digits.len() - 1], 10),
        Some('M') => (&digits[..digits.len() - 1], 20),
        Some('G') => (&digits[..digits.len() - 1], 30),
        _ => (digits, 0),
    };
    let number: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4096, 512K or 8M"))?;
    // `<<` would silently drop the high bits of a huge number (17179869185G wraps to 1G).
    number
        .checked_mul(1 << shift)
        .and_then(|bytes| u32::try_from(bytes).ok())
        .ok_or_else(|| format!("{text} is larger than 4G"))
}

/// The kernel wants a power-of-two number of pages.
fn parse_ring_buffer_size(text: &str) -> Result<u32, String> {
    let bytes = parse_size(text)?;
    if !bytes.is_power_of_two() || bytes < 4096 {
        return Err(format!(
            "the ring buffer size must be a power of two of at least 4K, such as 4M or 16M; got {bytes} bytes"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
