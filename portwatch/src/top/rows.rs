//! The rows `top` shows, built from a frame and the history: numbers still, formatted
//! only when drawn, so sorting and filtering compare numbers.
use std::net::IpAddr;

use crate::{
    detect::report::Severity,
    event::Comm,
    process::Process,
    tcp_state::TcpState,
    top::{frame::Frame, history::History},
};

/// Names a process's workload (container, unit), or None for the host. Looked up after
/// the model's lock is released: /proc on a live host, the recording's names in a replay.
pub type WorkloadOf<'a> = &'a dyn Fn(&Process) -> Option<String>;

#[derive(Clone, Debug, PartialEq)]
pub struct ProcessRow {
    pub process: Process,
    pub comm: String,
    /// Container, pod or unit; `host` when none, `(exited)` for a process gone.
    pub workload: String,
    pub alive: bool,
    pub established: usize,
    pub close_wait: usize,
    pub close_wait_oldest_s: Option<f64>,
    pub close_wait_per_min: Option<f64>,
    pub connections_per_s: f64,
    pub time_wait_per_s: f64,
    pub time_wait_held: usize,
    pub median_lifetime_s: Option<f64>,
    pub failed_connects: u64,
    /// The worst open finding naming it (an exhaustion finding names the process
    /// using the destination most).
    pub finding: Option<Severity>,
    /// It holds a socket on the port the user filters by.
    pub on_port: bool,
}

impl ProcessRow {
    /// The unknown owner (sockets whose process portwatch could not learn) is PID 0.
    pub fn pid_text(&self) -> String {
        if self.process.pid == 0 {
            "?".to_owned()
        } else {
            self.process.pid.to_string()
        }
    }
}

/// Rows for every process with sockets now, activity in the last interval, or an
/// open finding; processes the model remembers but that are idle and hold nothing are
/// left out, so a long run does not fill the table with exited processes.
pub fn processes(frame: &Frame, history: &History, workload: WorkloadOf<'_>) -> Vec<ProcessRow> {
    let mut rows = Vec::new();
    for p in &frame.sample.processes {
        let rates = history.rates(&p.process);
        let finding = frame
            .findings
            .iter()
            .filter(|f| f.process == p.process)
            .map(|f| f.severity)
            .max();
        let busy = p.sockets() > 0
            || rates.connections_per_s > 0.0
            || rates.time_wait_per_s > 0.0
            || finding.is_some();
        if !busy {
            continue;
        }
        let state = |s: TcpState| p.states.get(s.name()).copied().unwrap_or(0);
        rows.push(ProcessRow {
            process: p.process,
            comm: comm_text(p.comm, p.process),
            // Only a live process's /proc says where it runs; an exited one's PID
            // may be someone else's now.
            workload: if p.process.pid == 0 {
                "-".to_owned()
            } else if !p.alive {
                "(exited)".to_owned()
            } else {
                workload(&p.process).unwrap_or_else(|| "host".to_owned())
            },
            alive: p.alive,
            established: state(TcpState::Established),
            close_wait: state(TcpState::CloseWait),
            close_wait_oldest_s: p.close_wait_oldest_s,
            close_wait_per_min: rates.close_wait_per_min,
            connections_per_s: rates.connections_per_s,
            time_wait_per_s: rates.time_wait_per_s,
            time_wait_held: state(TcpState::TimeWait),
            median_lifetime_s: frame.median_lifetime_s.get(&p.process).copied(),
            failed_connects: p.counters.failed_connects,
            finding,
            on_port: frame.on_port.contains(&p.process),
        });
    }
    rows
}

fn comm_text(comm: Comm, process: Process) -> String {
    if process.pid == 0 {
        "(unknown owner)".to_owned()
    } else if comm.is_empty() {
        "?".to_owned()
    } else {
        comm.to_string()
    }
}

/// A destination's port budget.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationRow {
    pub netns: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    pub in_use: usize,
    pub capacity: u32,
    pub time_wait: usize,
    pub eta_s: Option<f64>,
    /// The process holding most of its ports: (PID, comm, ports).
    pub top: Option<(u32, String, usize)>,
}

impl DestinationRow {
    pub fn share(&self) -> f64 {
        if self.capacity == 0 {
            return 1.0;
        }
        self.in_use as f64 / f64::from(self.capacity)
    }

    pub fn time_wait_share(&self) -> f64 {
        if self.in_use == 0 {
            return 0.0;
        }
        self.time_wait as f64 / self.in_use as f64
    }
}

/// The busiest destinations: those nearest exhaustion first (a forecast, soonest
/// first), then by the share of ports in use. Destinations with no port in use and
/// no forecast are left out.
pub fn destinations(frame: &Frame, limit: usize) -> Vec<DestinationRow> {
    let mut rows: Vec<DestinationRow> = frame
        .sample
        .destinations
        .iter()
        .filter(|d| d.ports_in_use > 0 || d.eta_s.is_some())
        .map(|d| {
            let key = crate::detect::model::Destination {
                netns: d.netns,
                saddr: d.saddr,
                daddr: d.daddr,
                dport: d.dport,
            };
            let used = frame.destinations.get(&key).copied().unwrap_or_default();
            DestinationRow {
                netns: d.netns,
                saddr: d.saddr,
                daddr: d.daddr,
                dport: d.dport,
                in_use: d.ports_in_use,
                capacity: d.port_capacity,
                time_wait: used.time_wait,
                eta_s: d.eta_s,
                top: used.top.map(|(p, comm, n)| (p.pid, comm_text(comm, p), n)),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        let eta = |r: &DestinationRow| r.eta_s.unwrap_or(f64::INFINITY);
        eta(a)
            .total_cmp(&eta(b))
            .then(b.share().total_cmp(&a.share()))
            .then((a.daddr, a.dport, a.saddr).cmp(&(b.daddr, b.dport, b.saddr)))
    });
    rows.truncate(limit);
    rows
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::live::{ProcessCounters, ProcessSample, Sample};

    fn sample(pid: u32, alive: bool, states: &[(&'static str, usize)]) -> ProcessSample {
        ProcessSample {
            process: Process::after_exits(pid, 0),
            comm: Comm::new("p"),
            alive,
            states: states.iter().copied().collect::<BTreeMap<_, _>>(),
            close_wait_oldest_s: None,
            counters: ProcessCounters::default(),
        }
    }

    #[test]
    fn idle_processes_are_left_out_and_the_gone_are_named_so() {
        let frame = Frame {
            sample: Sample {
                now_ns: 1,
                processes: vec![
                    sample(1, true, &[("CLOSE_WAIT", 2)]),
                    // Remembered, holding nothing, doing nothing.
                    sample(2, true, &[]),
                    sample(3, false, &[("TIME_WAIT", 4)]),
                    sample(0, true, &[("ESTABLISHED", 1)]),
                ],
                ..Sample::default()
            },
            ..Frame::default()
        };
        let history = History::new(0);
        let workload = |_: &Process| Some("web.service".to_owned());
        let rows = processes(&frame, &history, &workload);
        let shown: Vec<(u32, &str, &str)> = rows
            .iter()
            .map(|r| (r.process.pid, r.comm.as_str(), r.workload.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                (1, "p", "web.service"),
                (3, "p", "(exited)"),
                (0, "(unknown owner)", "-")
            ]
        );
        assert_eq!(rows[0].close_wait, 2);
        assert_eq!(rows[1].time_wait_held, 4);
        assert_eq!(rows[2].pid_text(), "?");
    }

    /// An idle row, for tests to fill in.
    pub fn row(pid: u32, comm: &str) -> ProcessRow {
        ProcessRow {
            process: Process::after_exits(pid, 0),
            comm: comm.to_owned(),
            workload: "host".to_owned(),
            alive: true,
            established: 0,
            close_wait: 0,
            close_wait_oldest_s: None,
            close_wait_per_min: None,
            connections_per_s: 0.0,
            time_wait_per_s: 0.0,
            time_wait_held: 0,
            median_lifetime_s: None,
            failed_connects: 0,
            finding: None,
            on_port: false,
        }
    }
}
