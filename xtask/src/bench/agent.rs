//! The tracers under test: portwatch (report, stream, serve) and libbpf-tools'
//! tcpstates and tcplife. Each runs as the user would run it, with its output going to
//! a file (serve: scraped once a second), and is stopped with SIGINT, as Ctrl-C would.
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
    scrape::{self, Scraper},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Agent {
    /// `portwatch report --format json` for longer than the run, stopped with SIGINT.
    Report,
    /// `portwatch stream --format json > file`.
    Stream,
    /// `portwatch serve` on loopback, scraped once a second as Prometheus would.
    Serve,
    /// libbpf-tools `tcpstates > file`: one line per transition.
    Tcpstates,
    /// libbpf-tools `tcplife > file`: one line per socket closed.
    Tcplife,
}

impl Agent {
    pub fn label(self) -> &'static str {
        match self {
            Agent::Report => "portwatch report",
            Agent::Stream => "portwatch stream --format json",
            Agent::Serve => "portwatch serve (scraped 1/s)",
            Agent::Tcpstates => "libbpf-tools tcpstates",
            Agent::Tcplife => "libbpf-tools tcplife",
        }
    }

    /// A column heading.
    pub fn short_label(self) -> &'static str {
        match self {
            Agent::Report => "report",
            Agent::Stream => "stream",
            Agent::Serve => "serve",
            Agent::Tcpstates => "tcpstates",
            Agent::Tcplife => "tcplife",
        }
    }

    pub fn is_portwatch(self) -> bool {
        matches!(self, Agent::Report | Agent::Stream | Agent::Serve)
    }

    /// The command the user would type, for the results.
    pub fn command_line(self, max_sockets: Option<u32>) -> String {
        let max = max_sockets.map_or(String::new(), |n| format!(" --max-sockets {n}"));
        match self {
            Agent::Report => format!("portwatch report --format json --duration 24h{max}"),
            Agent::Stream => format!("portwatch stream --format json{max} > FILE"),
            Agent::Serve => {
                format!("portwatch serve --listen 127.0.0.1:0{max} (GET /metrics every 1 s)")
            }
            Agent::Tcpstates => "stdbuf -oL tcpstates > FILE".into(),
            Agent::Tcplife => "stdbuf -oL tcplife > FILE".into(),
        }
    }

    /// The program it runs.
    pub fn program(self) -> &'static str {
        match self {
            Agent::Report | Agent::Stream | Agent::Serve => "portwatch",
            Agent::Tcpstates => "tcpstates",
            Agent::Tcplife => "tcplife",
        }
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
pub fn start(
    agent: Agent,
    portwatch: &Path,
    output: &Path,
    max_sockets: Option<u32>,
) -> Result<Running> {
    let file = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let mut command = match agent {
        Agent::Report | Agent::Stream | Agent::Serve => {
            let mut command = Command::new(portwatch);
            match agent {
                // Longer than any run: SIGINT ends it, and it still reports.
                Agent::Report => command.args(["report", "--format", "json", "--duration", "24h"]),
                Agent::Serve => command.args(["serve", "--listen", "127.0.0.1:0"]),
                _ => command.args(["stream", "--format", "json"]),
            };
            if let Some(max) = max_sockets {
                command.args(["--max-sockets", &max.to_string()]);
            }
            command
        }
        Agent::Tcpstates | Agent::Tcplife => {
            // Their stdout is block-buffered into a file; -oL keeps every line whole
            // when SIGINT ends them (they flush at exit anyway).
            let mut command = Command::new("stdbuf");
            command.args(["-oL", agent.program()]);
            command
        }
    };
    command.stdout(file);
    let mut process = Process::spawn(command, agent.label(), Listen::Stderr)?;
    let attach_timeout = Duration::from_secs(60);
    let mut scraper = None;
    if agent == Agent::Serve {
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
            // The metrics at the end of the workload are the run's result.
            let metrics = scraper.finish().context("scraping portwatch serve")?;
            fs::write(&self.output, metrics)
                .with_context(|| format!("writing {}", self.output.display()))?;
        }
        let programs = procfs::bpf_objects(self.process.pid).1;
        self.process.interrupt()?;
        let finished = self.process.finish(Duration::from_secs(120))?;
        if !finished.success {
            bail!(
                "{} failed after SIGINT: {}",
                self.agent.label(),
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

/// What an agent saw of the workload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Observed {
    /// Events the agent counts for the workload: for portwatch report every record it
    /// received (`events.seen`); for the others the lines naming the server's port.
    pub events: u64,
    /// Every event the agent received, the host's other traffic included.
    pub events_total: u64,
    /// Events lost on the way from the kernel (ring or perf buffer full).
    pub dropped: u64,
    /// portwatch report only: connections opened and closed, as charged to the client
    /// and to the server process.
    pub connections: Option<Connections>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Connections {
    pub client_opened: u64,
    pub client_closed: u64,
    pub server_opened: u64,
    pub server_closed: u64,
}

impl Connections {
    /// The fewest connections any of the four counts accounts for.
    pub fn least(&self) -> u64 {
        self.client_opened
            .min(self.client_closed)
            .min(self.server_opened)
            .min(self.server_closed)
    }
}

/// Reads what a stopped agent reported about the workload on `port`.
pub fn observe(stopped: &Stopped, port: u16, client_pid: u32, server_pid: u32) -> Result<Observed> {
    match stopped.agent {
        Agent::Report => observe_report(&stopped.output, client_pid, server_pid),
        Agent::Serve => {
            let metrics = fs::read_to_string(&stopped.output)
                .with_context(|| format!("reading {}", stopped.output.display()))?;
            let count = |name: &str| scrape::value(&metrics, name).unwrap_or(0.0) as u64;
            let seen = count("portwatch_events_total");
            Ok(Observed {
                events: seen,
                events_total: seen,
                dropped: count("portwatch_events_dropped_total"),
                // Its series name workloads and commands, not the benchmark's PIDs.
                connections: None,
            })
        }
        Agent::Stream => {
            let needles = [format!("\"sport\":{port},"), format!("\"dport\":{port},")];
            let (events, _) = count_lines(&stopped.output, |line| {
                needles.iter().any(|needle| line.contains(needle.as_str()))
            })?;
            let (events_total, dropped) = stream_summary(&stopped.finished.said)?;
            Ok(Observed {
                events,
                events_total,
                dropped,
                connections: None,
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
                dropped: lost_events(&stopped.finished.said),
                connections: None,
            })
        }
    }
}

fn observe_report(output: &Path, client_pid: u32, server_pid: u32) -> Result<Observed> {
    let text =
        fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("portwatch report wrote no JSON to {}", output.display()))?;
    let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
    let process = |pid: u32| {
        report["processes"]
            .as_array()
            .and_then(|processes| processes.iter().find(|p| p["pid"] == pid))
    };
    let opened_closed = |pid: u32| {
        process(pid).map_or((0, 0), |p| {
            (
                number(&p["connections_opened"]),
                number(&p["connections_closed"]),
            )
        })
    };
    let (client_opened, client_closed) = opened_closed(client_pid);
    let (server_opened, server_closed) = opened_closed(server_pid);
    let seen = number(&report["events"]["seen"]);
    Ok(Observed {
        events: seen,
        events_total: seen,
        dropped: number(&report["events"]["dropped"]),
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
    fn sums_libbpf_tools_lost_events() {
        let said = [
            "lost 12 events on CPU #0".to_owned(),
            "something else".to_owned(),
            "lost 3 events on CPU #1".to_owned(),
        ];
        assert_eq!(lost_events(&said), 15);
    }
}
