//! `cargo xtask bench --profile`: where the machine's CPU goes during a churn run, bare
//! and under each agent, from a whole-machine `perf record`.
//!
//! The machine's samples are sorted by where they fell: the workload itself (its code
//! and the kernel's TCP), the eBPF programs, their maps, the ring or perf buffer, the
//! tracing glue that runs programs (and the syscall tracing slow path any `syscalls:*`
//! tracepoint puts every system call through), the agent's own process, and idle.
//! The comparison between a bare run and an agent's is the answer to "where does the
//! overhead go"; per-symbol shares from cpu-clock sampling in a VM are approximate.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{Agent, RunContext, WORKLOAD_COMMS, wait_for_quiet};

/// Samples per second per CPU: enough for a few thousand samples in a 5 s run.
const FREQUENCY: &str = "1999";

/// A `perf record -a -g` running for one workload run.
pub struct Recording {
    child: Child,
    pub path: PathBuf,
}

impl Recording {
    /// Starts recording the whole machine for `duration`.
    pub fn start(path: &Path, duration: Duration) -> Result<Recording> {
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-F", FREQUENCY, "-o"])
            .arg(path)
            .args(["--", "sleep"])
            .arg(format!("{:.3}", duration.as_secs_f64()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `perf record` (Debian package linux-perf)")?;
        Ok(Recording {
            child,
            path: path.to_owned(),
        })
    }

    pub fn finish(mut self) -> Result<PathBuf> {
        let status = self.child.wait().context("waiting for perf record")?;
        if !status.success() {
            bail!("perf record failed ({status}) for {}", self.path.display());
        }
        Ok(self.path)
    }
}

/// Where one run's samples fell, in percent of all samples.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub mode: String,
    pub shares: BTreeMap<&'static str, f64>,
}

/// The categories, in the order the table shows them.
pub const CATEGORIES: &[&str] = &[WORKLOAD, PROGRAMS, MAPS, RING, GLUE, AGENT, IDLE, OTHER];
const WORKLOAD: &str = "workload (client, server, kernel TCP)";
const PROGRAMS: &str = "eBPF programs (bpf_prog_*)";
const MAPS: &str = "eBPF hash and array maps";
const RING: &str = "ring/perf buffer output, wakeups";
const GLUE: &str = "tracepoint, syscall-tracing glue, helpers";
const AGENT: &str = "the agent's process (user + kernel)";
const IDLE: &str = "idle";
const OTHER: &str = "other processes";

/// Reads a recording with `perf report` and sorts its samples.
pub fn breakdown(mode: &str, path: &Path, workload_comms: &[&str]) -> Result<Breakdown> {
    let output = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "-g", "none"])
        .args([
            "--sort",
            "comm,sym",
            "--percent-limit",
            "0",
            "-t",
            "|",
            "-i",
        ])
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .context("running perf report")?;
    if !output.status.success() {
        bail!("perf report failed for {}", path.display());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut shares: BTreeMap<&'static str, f64> = CATEGORIES.iter().map(|&c| (c, 0.0)).collect();
    for (percent, comm, symbol) in text.lines().filter_map(parse_line) {
        *shares
            .entry(category(comm, symbol, workload_comms))
            .or_default() += percent;
    }
    Ok(Breakdown {
        mode: mode.to_owned(),
        shares,
    })
}

/// ` 7.94%  |churn-client   |[k] _raw_spin_unlock_irqrestore`
fn parse_line(line: &str) -> Option<(f64, &str, &str)> {
    let mut fields = line.splitn(3, '|');
    let percent = fields.next()?.trim().strip_suffix('%')?.parse().ok()?;
    let comm = fields.next()?.trim();
    let symbol = fields.next()?.trim();
    let symbol = symbol
        .split_once(']')
        .map_or(symbol, |(_, name)| name.trim());
    Some((percent, comm, symbol))
}

fn category(comm: &str, symbol: &str, workload_comms: &[&str]) -> &'static str {
    if comm == "swapper" || symbol.ends_with("_safe_halt") || symbol == "default_idle" {
        return IDLE;
    }
    let in_workload = workload_comms.iter().any(|w| comm.starts_with(w));
    if !in_workload {
        let agent = ["portwatch", "tokio-runtime-w", "tcpstates", "tcplife"];
        if agent.iter().any(|a| comm.starts_with(a)) {
            return AGENT;
        }
        // Softirqs may run in ksoftirqd for the workload's packets.
        if !comm.starts_with("ksoftirqd") {
            return OTHER;
        }
    }
    if symbol.starts_with("bpf_prog_") {
        PROGRAMS
    } else if symbol.contains("ringbuf")
        || symbol.contains("perf_event_output")
        || symbol.starts_with("perf_output_")
        || symbol.starts_with("perf_prepare_sample")
        || symbol.starts_with("irq_work")
    {
        RING
    } else if symbol.starts_with("htab_")
        || symbol.starts_with("__htab_")
        || symbol.starts_with("array_map_")
        || symbol.starts_with("percpu_array_")
        || symbol.contains("pcpu_freelist")
        || symbol.starts_with("lookup_nulls_elem_raw")
        || symbol.starts_with("alloc_htab_elem")
        || symbol.starts_with("free_htab_elem")
    {
        MAPS
    } else if symbol.starts_with("perf_trace_")
        || symbol.starts_with("perf_syscall_")
        || symbol.starts_with("trace_call_bpf")
        || symbol.starts_with("bpf_trace_run")
        || symbol.starts_with("__bpf_prog_enter")
        || symbol.starts_with("__bpf_prog_exit")
        || symbol.starts_with("syscall_trace_enter")
        || symbol.starts_with("syscall_exit_work")
        || symbol.starts_with("bpf_get_current_")
        || symbol.starts_with("bpf_ktime_get_ns")
        || symbol.starts_with("bpf_probe_read")
        || symbol.starts_with("__get_task_comm")
        || symbol.starts_with("sized_strscpy")
    {
        GLUE
    } else {
        WORKLOAD
    }
}

/// The table: one column per run, one row per category.
pub fn table(breakdowns: &[Breakdown]) -> String {
    use std::fmt::Write as _;
    let mut out =
        String::from("\nwhere the machine's CPU samples fell (perf record -a -g, cpu-clock):\n");
    let _ = write!(out, "{:<44}", "");
    for b in breakdowns {
        let _ = write!(out, " {:>16}", truncate(&b.mode, 16));
    }
    out.push('\n');
    for &category in CATEGORIES {
        let _ = write!(out, "{category:<44}");
        for b in breakdowns {
            let share = b.shares.get(category).copied().unwrap_or(0.0);
            let _ = write!(out, " {:>15.1}%", share);
        }
        out.push('\n');
    }
    out
}

fn truncate(text: &str, width: usize) -> &str {
    text.char_indices()
        .nth(width)
        .map_or(text, |(index, _)| &text[..index])
}

/// `--profile`: one run bare, then one under each agent, each recorded by perf.
pub(super) fn runs(
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
        breakdowns.push(breakdown(short, &path, WORKLOAD_COMMS)?);
    }
    print!("{}", table(&breakdowns));
    let json = serde_json::to_string_pretty(&breakdowns)?;
    let path = out_dir.join("profile-latest.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "xtask: bench: breakdown in {}; `perf report -i <file>` shows every symbol",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_categories() {
        let comms = ["churn-client", "echo-worker"];
        let cases = [
            (
                " 1.69%  |churn-client   |[k] bpf_prog_5850433f3d563e33_inet_sock_set_state",
                PROGRAMS,
            ),
            (" 1.26%  |echo-worker    |[k] htab_map_update_elem", MAPS),
            (" 0.80%  |churn-client   |[k] __bpf_ringbuf_reserve", RING),
            (
                " 0.40%  |churn-client   |[k] perf_output_begin_forward",
                RING,
            ),
            (" 0.20%  |churn-client   |[k] syscall_trace_enter", GLUE),
            (
                " 7.94%  |churn-client   |[k] _raw_spin_unlock_irqrestore",
                WORKLOAD,
            ),
            (" 7.25%  |swapper        |[k] pv_native_safe_halt", IDLE),
            (
                " 0.14%  |portwatch      |[.] portwatch::bpf::reader::drain_ring",
                AGENT,
            ),
            (" 0.10%  |tcpstates      |[k] htab_map_update_elem", AGENT),
            (" 0.27%  |kdamond.0      |[k] damon_rand", OTHER),
            (" 0.50%  |ksoftirqd/0    |[k] tcp_v4_rcv", WORKLOAD),
        ];
        for (line, expected) in cases {
            let (percent, comm, symbol) = parse_line(line).unwrap();
            assert!(percent > 0.0);
            assert_eq!(category(comm, symbol, &comms), expected, "{line}");
        }
        assert_eq!(parse_line("# Overhead  Command"), None);
    }
}
