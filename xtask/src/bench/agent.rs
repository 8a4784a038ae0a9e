//! The tracers under test: portwatch (report, serve and top on the counting path, their
//! default, and on the per-record path; stream) and libbpf-tools' tcpstates and tcplife.
//! Each runs as the user would run it, with its output going to a file (serve: scraped
//! once a second; top: drawn on a pseudo-terminal, see `pty`), and is stopped with
//! SIGINT, as Ctrl-C would.
use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    process::{Finished, Listen, Process},
    procfs::{self, ProgramRuns},
    pty::Pty,
    scrape::{self, Scraper},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Agent {
    /// `portwatch report --format json` for longer than the run, stopped with SIGINT:
    /// the counting path (its default), the kernel counts transitions.
    Report,
    /// The same with `--collect records`: one record per transition, and the
    /// `syscalls:*` accept and connect tracepoints attached.
    ReportRecords,
    /// `portwatch stream --format json > file` (always records).
    Stream,
    /// `portwatch serve` on loopback, scraped once a second as Prometheus would: the
    /// counting path (its default).
    Serve,
    /// The same with `--collect records`.
    ServeRecords,
    /// `portwatch top --interval 1s` on a 120x40 pseudo-terminal whose screen is read
    /// and thrown away: the counting path (its default). It prints no counts.
    Top,
    /// The same with `--collect records`.
    TopRecords,
    /// libbpf-tools `tcpstates > file`: one line per transition.
    Tcpstates,
    /// libbpf-tools `tcplife > file`: one line per socket closed.
    Tcplife,
}

impl Agent {
    pub fn label(self) -> &'static str {
        match self {
            Agent::Report => "portwatch report (counts)",
            Agent::ReportRecords => "portwatch report (records)",
            Agent::Stream => "portwatch stream --format json",
            Agent::Serve => "portwatch serve (counts, scraped 1/s)",
            Agent::ServeRecords => "portwatch serve (records, scraped 1/s)",
            Agent::Top => "portwatch top (counts, redrawn 1/s)",
            Agent::TopRecords => "portwatch top (records, redrawn 1/s)",
            Agent::Tcpstates => "libbpf-tools tcpstates",
            Agent::Tcplife => "libbpf-tools tcplife",
        }
    }

    /// The most overhead (fewer connections/s than bare, and more CPU per connection)
    /// the mode may cost at full churn, in percent, as BENCHMARKS.md's Targets table
    /// sets it; None where it sets none.
    pub fn overhead_target_pct(self) -> Option<f64> {
        match self {
            Agent::Report | Agent::Serve | Agent::Top => Some(5.0),
            Agent::Stream => Some(20.0),
            _ => None,
        }
    }

    /// A column heading.
    pub fn short_label(self) -> &'static str {
        match self {
            Agent::Report => "report",
            Agent::ReportRecords => "report-records",
            Agent::Stream => "stream",
            Agent::Serve => "serve",
            Agent::ServeRecords => "serve-records",
            Agent::Top => "top",
            Agent::TopRecords => "top-records",
            Agent::Tcpstates => "tcpstates",
            Agent::Tcplife => "tcplife",
        }
    }

    pub fn is_portwatch(self) -> bool {
        matches!(
            self,
            Agent::Report
                | Agent::ReportRecords
                | Agent::Stream
                | Agent::Serve
                | Agent::ServeRecords
                | Agent::Top
                | Agent::TopRecords
        )
    }

    /// portwatch on its counting path: the kernel counts transitions and sends records
    /// only for the few it cannot count, so its events are no measure of the workload;
    /// its connections are.
    pub fn counts(self) -> bool {
        matches!(self, Agent::Report | Agent::Serve | Agent::Top)
    }

    /// The modes meant to run always, on every host: the syscall row's target (at most
    /// 1 % slower) applies to them.
    pub fn always_on(self) -> bool {
        self.counts()
    }

    fn is_serve(self) -> bool {
        matches!(self, Agent::Serve | Agent::ServeRecords)
    }

    fn is_report(self) -> bool {
        matches!(self, Agent::Report | Agent::ReportRecords)
    }

    fn is_top(self) -> bool {
        matches!(self, Agent::Top | Agent::TopRecords)
    }

    /// The collect flag it runs with (its own default otherwise).
    fn collect_args(self) -> &'static [&'static str] {
        match self {
            Agent::ReportRecords | Agent::ServeRecords | Agent::TopRecords => {
                &["--collect", "records"]
            }
            _ => &[],
        }
    }

    /// The command the user would type, for the results.
    pub fn command_line(self, options: &Options) -> String {
        let mut flags: Vec<String> = self.collect_args().iter().map(|s| s.to_string()).collect();
        flags.extend(options.args());
        let flags: String = flags.iter().map(|flag| format!(" {flag}")).collect();
        match self {
            Agent::Report | Agent::ReportRecords => {
                format!("portwatch report --format json --duration 24h{flags}")
            }
            Agent::Stream => format!("portwatch stream --format json{flags} > FILE"),
            Agent::Serve | Agent::ServeRecords => {
                format!("portwatch serve --listen 127.0.0.1:0{flags} (GET /metrics every 1 s)")
            }
            Agent::Top | Agent::TopRecords => format!(
                "portwatch top --interval 1s{flags} (on a {TOP_COLUMNS}x{TOP_ROWS} pseudo-terminal)"
            ),
            Agent::Tcpstates => "stdbuf -oL tcpstates > FILE".into(),
            Agent::Tcplife => "stdbuf -oL tcplife > FILE".into(),
        }
    }

    /// The program it runs.
    pub fn program(self) -> &'static str {
        match self {
            Agent::Report
            | Agent::ReportRecords
            | Agent::Stream
            | Agent::Serve
            | Agent::ServeRecords
            | Agent::Top
            | Agent::TopRecords => "portwatch",
            Agent::Tcpstates => "tcpstates",
            Agent::Tcplife => "tcplife",
        }
    }
}

/// The size of top's terminal: a usual window, larger than the 80x24 at which top
/// already leaves columns out (docs/top.md), so it draws about what a user would see.
const TOP_COLUMNS: u16 = 120;
const TOP_ROWS: u16 = 40;

/// Options given to every portwatch agent (the peers have none).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--max-sockets N`.
    pub max_sockets: Option<u32>,
    /// `--state-hook HOOK` (auto, classic); portwatch's own default if None.
    pub state_hook: Option<String>,
}

impl Options {
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(max) = self.max_sockets {
            args.extend(["--max-sockets".to_owned(), max.to_string()]);
        }
        if let Some(hook) = &self.state_hook {
            args.extend(["--state-hook".to_owned(), hook.clone()]);
        }
        args
    }
}

/// An agent that is attached and tracing.
pub struct Running {
    agent: Agent,
    process: Process,
    output: PathBuf,
    cpu_at_start: f64,
    /// serve only: its scrapes.
    scraper: Option<Scraper>,
}

/// What a stopped agent cost and where its output is.
pub struct Stopped {
    pub agent: Agent,
    pub finished: Finished,
    /// CPU seconds from the start of the workload to the agent's exit (its final drain
    /// and, for report, building and printing the report included).
    pub cpu_s: f64,
    pub output: PathBuf,
    /// The agent's eBPF programs' statistics, read just before the stop.
    pub programs: Vec<ProgramRuns>,
}

/// Starts `agent`, output to `output`, and waits until it traces.
pub fn start(agent: Agent, portwatch: &Path, output: &Path, options: &Options) -> Result<Running> {
    let command = if agent.is_portwatch() {
        let mut command = Command::new(portwatch);
        if agent.is_report() {
            // Longer than any run: SIGINT ends it, and it still reports.
            command.args(["report", "--format", "json", "--duration", "24h"]);
        } else if agent.is_serve() {
            command.args(["serve", "--listen", "127.0.0.1:0"]);
        } else if agent.is_top() {
            // Its default interval, pinned: what a redraw costs depends on it.
            command.args(["top", "--interval", "1s"]);
        } else {
            command.args(["stream", "--format", "json"]);
        }
        command.args(agent.collect_args()).args(options.args());
        command
    } else {
        // libbpf-tools: their stdout is block-buffered into a file; -oL keeps every line
        // whole when SIGINT ends them (they flush at exit anyway).
        let mut command = Command::new("stdbuf");
        command.args(["-oL", agent.program()]);
        command
    };
    let mut process = spawn(agent, command, output)?;
    let attach_timeout = Duration::from_secs(60);
    let mut scraper = None;
    if agent.is_serve() {
        // "portwatch: serving http://127.0.0.1:PORT/metrics until Ctrl-C", once attached.
        let address = process.wait_for(attach_timeout, "\"serving\" line", |line| {
            let rest = line.split("serving http://").nth(1)?;
            rest.split('/').next()?.parse::<std::net::SocketAddr>().ok()
        })?;
        scraper = Some(Scraper::start(address));
    } else if agent.is_portwatch() {
        // After attaching and the startup snapshot, portwatch says it is tracing.
        process.wait_for(attach_timeout, "\"tracing\" line", |line| {
            line.contains("tracing").then_some(())
        })?;
    } else {
        // libbpf-tools print their header once attached.
        wait_for_header(output, attach_timeout).with_context(|| agent.label())?;
    }
    Ok(Running {
        agent,
        cpu_at_start: procfs::cpu_seconds(process.pid)?,
        process,
        output: output.to_owned(),
        scraper,
    })
}

/// Starts the agent's process, its stdout to `output`, or for top on a terminal of its
/// own (its output is a screen, not a result). Its stderr carries its messages either
/// way: top's too, which writes them there as long as stderr is not its terminal.
fn spawn(agent: Agent, mut command: Command, output: &Path) -> Result<Process> {
    if !agent.is_top() {
        let file =
            File::create(output).with_context(|| format!("creating {}", output.display()))?;
        command.stdout(file);
        return Process::spawn(command, agent.label(), Listen::Stderr);
    }
    let pty = Pty::open(TOP_COLUMNS, TOP_ROWS)?;
    let stdin = pty.attach(&mut command)?;
    let process = Process::spawn_with_stdin(command, agent.label(), Listen::Stderr, stdin)?;
    pty.play_terminal()?;
    Ok(process)
}

/// Longer than the second between portwatch's readings of the kernel's counts.
const COUNTS_SETTLE: Duration = Duration::from_millis(1500);

fn wait_for_header(output: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while fs::metadata(output).map(|m| m.len()).unwrap_or(0) == 0 {
        if Instant::now() >= deadline {
            bail!("printed no header within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The workload starts now: CPU spent attaching is not the workload's.
    pub fn workload_starts(&mut self) -> Result<()> {
        self.cpu_at_start = procfs::cpu_seconds(self.process.pid)?;
        Ok(())
    }

    /// CPU seconds since the workload started.
    pub fn cpu_so_far(&self) -> f64 {
        procfs::cpu_seconds(self.process.pid).unwrap_or(self.cpu_at_start) - self.cpu_at_start
    }

    /// Stops the agent with SIGINT and waits for it to finish writing.
    pub fn stop(self) -> Result<Stopped> {
        if let Some(scraper) = self.scraper {
            if self.agent.counts() {
                // serve reads the kernel's counts once a second: a scrape shows what was
                // read, so wait for a reading made after the workload's last close.
                thread::sleep(COUNTS_SETTLE);
            }
            // The metrics at the end of the workload are the run's result.
            let metrics = scraper.finish().context("scraping portwatch serve")?;
            fs::write(&self.output, metrics)
                .with_context(|| format!("writing {}", self.output.display()))?;
        }
        let programs = procfs::bpf_objects(self.process.pid).1;
        // An agent that ended on its own (top whose screen could not start, say) did not
        // trace the whole run, whatever its exit status.
        let ended_early = self.process.has_exited()?;
        self.process.interrupt()?;
        let finished = self.process.finish(Duration::from_secs(120))?;
        if ended_early || !finished.success {
            bail!(
                "{} {}: {}",
                self.agent.label(),
                if ended_early {
                    "exited before it was stopped"
                } else {
                    "failed after SIGINT"
                },
                finished.said.join("\n")
            );
        }
        Ok(Stopped {
            agent: self.agent,
            cpu_s: finished.cpu_s - self.cpu_at_start,
            finished,
            output: self.output,
            programs,
        })
    }
}

/// What an agent saw of the workload. top prints no counts: all is 0 or None for it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observed {
    /// Events the agent counts for the workload: for portwatch report every record it
    /// received (`events.seen`); for the others the lines naming the server's port.
    pub events: u64,
    /// Every event the agent received, the host's other traffic included.
    pub events_total: u64,
    /// Events lost on the way from the kernel (ring or perf buffer full); None where
    /// the agent does not say (top shows it only on its screen).
    pub dropped: Option<u64>,
    /// portwatch report and serve: connections opened and closed, as charged to the
    /// client and to the server process (serve: to their commands).
    pub connections: Option<Connections>,
    /// portwatch report: the most entries (`processes[]`) the report gave the client's
    /// or the server's PID. 1 is right; more means the report split a process (its
    /// counts are added up for `connections`).
    pub entries_per_process: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Connections {
    pub client_opened: u64,
    pub client_closed: u64,
    pub server_opened: u64,
    pub server_closed: u64,
}

impl Connections {
    fn all(&self) -> [u64; 4] {
        [
            self.client_opened,
            self.client_closed,
            self.server_opened,
            self.server_closed,
        ]
    }

    /// The fewest connections any of the four counts accounts for.
    pub fn least(&self) -> u64 {
        self.all().into_iter().min().unwrap_or(0)
    }

    /// Of the four counts, the one furthest from `made` (above or below).
    pub fn furthest_from(&self, made: u64) -> u64 {
        self.all()
            .into_iter()
            .max_by_key(|&count| count.abs_diff(made))
            .unwrap_or(0)
    }
}

/// Reads what a stopped agent reported about the workload on `port`.
pub fn observe(stopped: &Stopped, port: u16, client_pid: u32, server_pid: u32) -> Result<Observed> {
    match stopped.agent {
        Agent::Report | Agent::ReportRecords => {
            observe_report(&stopped.output, client_pid, server_pid)
        }
        Agent::Serve | Agent::ServeRecords => observe_serve(&stopped.output),
        // Its counts are on a screen drawn for a person, not in any output to read.
        Agent::Top | Agent::TopRecords => Ok(Observed::default()),
        Agent::Stream => {
            let needles = [format!("\"sport\":{port},"), format!("\"dport\":{port},")];
            let (events, _) = count_lines(&stopped.output, |line| {
                needles.iter().any(|needle| line.contains(needle.as_str()))
            })?;
            let (events_total, dropped) = stream_summary(&stopped.finished.said)?;
            Ok(Observed {
                events,
                events_total,
                dropped: Some(dropped),
                connections: None,
                entries_per_process: None,
            })
        }
        Agent::Tcpstates | Agent::Tcplife => {
            // Counted from the end of the line: the command name may hold spaces.
            // tcpstates: ... LPORT RADDR RPORT OLD -> NEW MS; tcplife: ... LPORT RADDR
            // RPORT TX_KB RX_KB MS.
            let (lport, rport) = match stopped.agent {
                Agent::Tcpstates => (7, 5),
                _ => (6, 4),
            };
            let port = port.to_string();
            let (events, total) = count_lines(&stopped.output, |line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let from_end = |n: usize| words.len().checked_sub(n).map(|i| words[i]);
                from_end(lport) == Some(port.as_str()) || from_end(rport) == Some(port.as_str())
            })?;
            Ok(Observed {
                events,
                // Minus the header.
                events_total: total.saturating_sub(1),
                dropped: Some(lost_events(&stopped.finished.said)),
                connections: None,
                entries_per_process: None,
            })
        }
    }
}

/// serve's last scrape. Its series name commands, not PIDs: the workload's are
/// `churn-client` and `echo-server`/`echo-worker` (another process with those names on
/// the host would add to them).
fn observe_serve(output: &Path) -> Result<Observed> {
    let metrics =
        fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    let count = |name: &str| scrape::value(&metrics, name).unwrap_or(0.0) as u64;
    let of = |name: &str, comm: &str| {
        scrape::sum(&metrics, name, |labels| {
            labels.contains(&format!("comm=\"{comm}"))
        }) as u64
    };
    let (opened, closed) = (
        "portwatch_connections_opened_total",
        "portwatch_connections_closed_total",
    );
    let seen = count("portwatch_events_total");
    Ok(Observed {
        events: seen,
        events_total: seen,
        dropped: Some(count("portwatch_events_dropped_total")),
        connections: Some(Connections {
            client_opened: of(opened, "churn-"),
            client_closed: of(closed, "churn-"),
            server_opened: of(opened, "echo-"),
            server_closed: of(closed, "echo-"),
        }),
        entries_per_process: None,
    })
}

fn observe_report(output: &Path, client_pid: u32, server_pid: u32) -> Result<Observed> {
    let text =
        fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("portwatch report wrote no JSON to {}", output.display()))?;
    let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
    let entries = |pid: u32| -> Vec<&serde_json::Value> {
        report["processes"]
            .as_array()
            .map(|processes| processes.iter().filter(|p| p["pid"] == pid).collect())
            .unwrap_or_default()
    };
    // A process is one entry; should the report list a PID more than once, its
    // entries are added up here (what was counted) and the split is reported.
    let opened_closed = |pid: u32| {
        entries(pid).iter().fold((0, 0), |(opened, closed), p| {
            (
                opened + number(&p["connections_opened"]),
                closed + number(&p["connections_closed"]),
            )
        })
    };
    let split_entries = entries(client_pid).len().max(entries(server_pid).len()) as u64;
    let (client_opened, client_closed) = opened_closed(client_pid);
    let (server_opened, server_closed) = opened_closed(server_pid);
    let seen = number(&report["events"]["seen"]);
    Ok(Observed {
        events: seen,
        events_total: seen,
        dropped: Some(number(&report["events"]["dropped"])),
        entries_per_process: Some(split_entries),
        connections: Some(Connections {
            client_opened,
            client_closed,
            server_opened,
            server_closed,
        }),
    })
}

/// Lines of `path` that `matches`, and all lines.
fn count_lines(path: &Path, matches: impl Fn(&str) -> bool) -> Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let (mut matching, mut total) = (0, 0);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok((matching, total));
        }
        total += 1;
        if matches(&line) {
            matching += 1;
        }
    }
}

/// `portwatch: 1234 events seen (56 shown), 0 dropped (ring buffer full)`.
fn stream_summary(said: &[String]) -> Result<(u64, u64)> {
    let line = said
        .iter()
        .rev()
        .find(|line| line.contains("events seen"))
        .context("portwatch stream printed no summary line")?;
    let number_before = |marker: &str| -> Option<u64> {
        let end = line.find(marker)?;
        line[..end].split_whitespace().last()?.parse().ok()
    };
    match (number_before(" events seen"), number_before(" dropped")) {
        (Some(seen), Some(dropped)) => Ok((seen, dropped)),
        _ => bail!("cannot read portwatch's summary line {line:?}"),
    }
}

/// libbpf-tools print `lost N events on CPU #C` for each loss.
fn lost_events(said: &[String]) -> u64 {
    said.iter()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("lost ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_portwatch_stream_summary() {
        let said = [
            "portwatch: tracing TCP state changes; Ctrl-C to stop".to_owned(),
            "portwatch: 1234 events seen (56 shown), 7 dropped (ring buffer full), 2 \
             sockets untracked (socket table full)"
                .to_owned(),
        ];
        assert_eq!(stream_summary(&said).unwrap(), (1234, 7));
        assert!(stream_summary(&said[..1]).is_err());
    }

    #[test]
    fn connections_furthest_from_the_truth() {
        let counted = Connections {
            client_opened: 1000,
            client_closed: 998,
            server_opened: 1003,
            server_closed: 1000,
        };
        assert_eq!(counted.least(), 998);
        assert_eq!(counted.furthest_from(1000), 1003);
        assert_eq!(counted.furthest_from(1002), 998);
    }

    #[test]
    fn sums_libbpf_tools_lost_events() {
        let said = [
            "lost 12 events on CPU #0".to_owned(),
            "something else".to_owned(),
            "lost 3 events on CPU #1".to_owned(),
        ];
        assert_eq!(lost_events(&said), 15);
    }
}
