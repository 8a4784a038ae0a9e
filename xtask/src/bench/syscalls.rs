//! The syscall row: what an agent costs a host that is not churning through TCP
//! connections at all, only making system calls.
//!
//! `dd if=/dev/zero of=/dev/null bs=1 count=N` makes 2N system calls (a read and a write
//! per byte) and no TCP. It runs bare and with each agent attached, in pairs like the
//! churn runs (bare first in one pair, attached first in the next), and each run's wall
//! time and CPU time (user + system, from wait4's rusage, to the microsecond) are
//! compared within the pair. While any `syscalls:*` tracepoint has a program attached,
//! every system call of every process takes the kernel's tracing slow path: this row is
//! where that shows, and where portwatch's always-on modes (report, serve and top on the
//! counting path, which attach none) are held to at most 1 % slower.
use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

use super::{Half, agent::Agent, summary::Spread};

/// How much slower (in percent, median of the pairs' wall time) an always-on mode may
/// make the syscall-bound process.
pub const TARGET_PCT: f64 = 1.0;

/// One dd run, bare or with an agent attached.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallRun {
    pub round: u32,
    pub attempt: u32,
    /// The agent this run is paired with (the bare half of a pair names it too).
    pub pair: Agent,
    /// None: bare.
    pub agent: Option<Agent>,
    pub wall_s: f64,
    /// dd's user plus system CPU seconds.
    pub cpu_s: f64,
    /// CPU seconds the rest of the machine used during the run.
    pub other_cpu_s: f64,
}

impl Half for SyscallRun {
    fn other_cpus(&self) -> f64 {
        self.other_cpu_s / self.wall_s.max(0.001)
    }

    fn set_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }

    fn progress(&self) -> String {
        format!("{:>8.3} s wall {:>7.3} s CPU", self.wall_s, self.cpu_s)
    }
}

/// The command line of the syscall-bound process.
pub fn command_line(count: u64) -> String {
    format!("dd if=/dev/zero of=/dev/null bs=1 count={count}")
}

/// Runs dd to its end: wall seconds (spawn to exit) and CPU seconds.
pub fn time_dd(count: u64) -> Result<(f64, f64)> {
    let started = Instant::now();
    let mut child = Command::new("dd")
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={count}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting dd")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both out-pointers are valid; `pid` is our unreaped child, and std's Child
    // does not wait for it on drop, so reaping it here is ours to do.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed().as_secs_f64();
    if reaped != pid {
        return Err(anyhow!(std::io::Error::last_os_error())).context("wait4 for dd");
    }
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{} failed: {}", command_line(count), said.trim());
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((wall, seconds(usage.ru_utime) + seconds(usage.ru_stime)))
}

/// One agent over all pairs.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallRow {
    pub mode: String,
    pub command: String,
    pub pairs: usize,
    /// Wall seconds of the bare runs paired with this agent, and of the attached ones.
    pub bare_wall_s: Option<Spread>,
    pub wall_s: Option<Spread>,
    /// attached / bare - 1 per pair, in percent: how much slower dd ran.
    pub slowdown_wall_pct: Option<Spread>,
    /// The same from dd's CPU time.
    pub slowdown_cpu_pct: Option<Spread>,
    /// The target for the always-on modes (report, serve and top, counting path).
    pub target_pct: Option<f64>,
    /// Whether the median wall slowdown is within the target.
    pub meets_target: Option<bool>,
}

/// The syscall row's results.
#[derive(Clone, Debug, Serialize)]
pub struct SyscallSummary {
    pub command: String,
    /// System calls per run (a read and a write per byte).
    pub system_calls: u64,
    pub rows: Vec<SyscallRow>,
    pub runs: Vec<SyscallRun>,
}

impl SyscallSummary {
    pub fn new(
        count: u64,
        agents: &[Agent],
        options: &super::agent::Options,
        runs: Vec<SyscallRun>,
    ) -> SyscallSummary {
        let rows = agents
            .iter()
            .map(|&agent| row(agent, options, &runs))
            .collect();
        SyscallSummary {
            command: command_line(count),
            system_calls: 2 * count,
            rows,
            runs,
        }
    }

    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nsyscall-bound, no TCP: `{}` ({:.1}M system calls), bare and with each agent \
             attached, in pairs",
            self.command,
            self.system_calls as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "{:<40} {:>6} {:>12} {:>15} {:>26} {:>26} {:>15}",
            "mode",
            "pairs",
            "bare wall s",
            "attached wall s",
            "slower, wall (min..max)",
            "slower, CPU (min..max)",
            "target"
        );
        let pct = |s: Option<Spread>| {
            s.map_or("-".into(), |s| {
                format!("{:.2}% ({:.2}..{:.2})", s.median, s.min, s.max)
            })
        };
        let secs = |s: Option<Spread>| s.map_or("-".into(), |s| format!("{:.3}", s.median));
        for row in &self.rows {
            let target = match (row.target_pct, row.meets_target) {
                (Some(t), Some(true)) => format!("<= {t}%: met"),
                (Some(t), Some(false)) => format!("<= {t}%: MISSED"),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>12} {:>15} {:>26} {:>26} {:>15}",
                row.mode,
                row.pairs,
                secs(row.bare_wall_s),
                secs(row.wall_s),
                pct(row.slowdown_wall_pct),
                pct(row.slowdown_cpu_pct),
                target
            );
        }
        let _ = writeln!(
            out,
            "  slower: attached / bare - 1 within each pair, median over pairs (range); \
             target: the always-on modes' median wall slowdown"
        );
        out
    }
}

fn row(agent: Agent, options: &super::agent::Options, runs: &[SyscallRun]) -> SyscallRow {
    let attached: Vec<&SyscallRun> = runs.iter().filter(|r| r.agent == Some(agent)).collect();
    let paired = |run: &SyscallRun| {
        runs.iter()
            .find(|r| r.agent.is_none() && r.pair == agent && r.round == run.round)
    };
    let pairs: Vec<(&SyscallRun, &SyscallRun)> = attached
        .iter()
        .filter_map(|run| Some((paired(run)?, *run)))
        .collect();
    let slowdown = |value: fn(&SyscallRun) -> f64| {
        Spread::of(
            pairs
                .iter()
                .map(|(bare, run)| 100.0 * (value(run) / value(bare).max(1e-9) - 1.0)),
        )
    };
    let slowdown_wall_pct = slowdown(|r| r.wall_s);
    let target_pct = agent.always_on().then_some(TARGET_PCT);
    SyscallRow {
        mode: agent.label().into(),
        command: agent.command_line(options),
        pairs: pairs.len(),
        bare_wall_s: Spread::of(pairs.iter().map(|(bare, _)| bare.wall_s)),
        wall_s: Spread::of(pairs.iter().map(|(_, run)| run.wall_s)),
        slowdown_wall_pct,
        slowdown_cpu_pct: slowdown(|r| r.cpu_s),
        target_pct,
        meets_target: target_pct
            .zip(slowdown_wall_pct)
            .map(|(target, s)| s.median <= target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: u32, agent: Option<Agent>, wall_s: f64, cpu_s: f64) -> SyscallRun {
        SyscallRun {
            round,
            attempt: 1,
            pair: Agent::Report,
            agent,
            wall_s,
            cpu_s,
            other_cpu_s: 0.0,
        }
    }

    #[test]
    fn slowdown_is_per_pair() {
        let runs = vec![
            run(0, None, 1.0, 0.9),
            run(0, Some(Agent::Report), 1.005, 0.9),
            run(1, Some(Agent::Report), 1.2, 1.08),
            run(1, None, 1.1, 1.0),
        ];
        let row = row(Agent::Report, &Default::default(), &runs);
        assert_eq!(row.pairs, 2);
        let wall = row.slowdown_wall_pct.unwrap();
        assert!((wall.min - 0.5).abs() < 1e-9, "{wall:?}");
        assert!((wall.max - 100.0 * (1.2 / 1.1 - 1.0)).abs() < 1e-9);
        let cpu = row.slowdown_cpu_pct.unwrap();
        assert!((cpu.min - 0.0).abs() < 1e-9 && (cpu.max - 8.0).abs() < 1e-9);
        assert_eq!(row.target_pct, Some(TARGET_PCT));
        assert_eq!(row.meets_target, Some(false));
        assert_eq!(
            self::row(Agent::Tcplife, &Default::default(), &runs).meets_target,
            None
        );
        // top on the counting path is always-on too; on records it is not.
        assert!(Agent::Top.always_on() && !Agent::TopRecords.always_on());
    }

    #[test]
    fn times_a_short_dd() {
        let (wall, cpu) = time_dd(1000).unwrap();
        assert!(wall > 0.0 && cpu >= 0.0 && cpu <= wall + 0.01);
    }
}
