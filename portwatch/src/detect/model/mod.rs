//! What happened in a window, per process and per destination: pure code over the event
//! stream, so live runs, replays and tests all go through it.
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    detect::{histogram::Histogram, rate::Occurrences},
    event::{Comm, ConnectFailed, Event, Origin, Transition},
    process::Process,
    sockets::{
        owners::SocketOwner,
        table::{Seed, SocketTable},
    },
    tcp_state::TcpState,
};

/// Where an active connection goes, from one local address: the unit the ephemeral
/// port range is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl Destination {
    fn of(event: &Transition) -> Self {
        Destination {
            saddr: event.saddr,
            daddr: event.daddr,
            dport: event.dport,
        }
    }
}

/// What one process did during the window.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    pub comm: Comm,
    pub cgroup_id: u64,
    /// Connections that reached ESTABLISHED, by who opened them; the active ones with
    /// when, for the churn rate.
    pub opened_active: Occurrences,
    pub opened_passive: u64,
    /// Established connections that reached CLOSE, by who opened them.
    pub closed_active: u64,
    pub closed_passive: u64,
    /// When connections (of either side) opened and closed, for the process's rates.
    pub opens: Occurrences,
    pub closes: Occurrences,
    /// Lifetimes (open to close, ns) of connections opened and closed in the window.
    pub lifetimes: Histogram,
    /// Connections this process closed first (it sent the first FIN): its side ends up
    /// in TIME_WAIT.
    pub closed_first: u64,
    /// Connections the peer closed first (ESTABLISHED -> CLOSE_WAIT).
    pub peer_closed_first: u64,
    pub time_wait_created: Occurrences,
    pub close_wait_entered: u64,
    pub close_wait_left: u64,
    /// connect() calls that failed with EADDRNOTAVAIL.
    pub failed_connects: u64,
    /// Active connections opened, per destination.
    pub destinations: FxHashMap<Destination, u64>,
}

/// What happened toward one destination during the window.
#[derive(Clone, Debug, Default)]
pub struct DestinationActivity {
    /// Active connections opened toward it, with when: the forecast's rate.
    pub opened: Occurrences,
    pub failed_connects: u64,
    pub lifetimes: Histogram,
    /// Connections opened (or failed) per process.
    pub consumers: FxHashMap<Process, u64>,
}

/// A connect() that got as far as SYN_SENT and fell back to CLOSE without a local port.
#[derive(Clone, Copy, Debug)]
struct PortlessClose {
    destination: Destination,
    owner: Option<SocketOwner>,
}

/// The window's model. Feed it events in order with [`Model::apply`].
#[derive(Debug)]
pub struct Model {
    pub table: SocketTable,
    pub processes: FxHashMap<Process, Activity>,
    pub destinations: FxHashMap<Destination, DestinationActivity>,
    /// The last portless SYN_SENT -> CLOSE per thread, to give a following
    /// EADDRNOTAVAIL its destination.
    portless: FxHashMap<u32, PortlessClose>,
    pub start_ns: u64,
    pub last_ns: u64,
    /// Records seen, of every kind.
    pub seen: u64,
}

/// Processes whose owner portwatch does not know are counted under PID 0.
pub const UNKNOWN: Process = Process::after_exits(0, 0);

impl Model {
    pub fn new(start_ns: u64) -> Self {
        Model {
            table: SocketTable::new(),
            processes: FxHashMap::default(),
            destinations: FxHashMap::default(),
            portless: FxHashMap::default(),
            start_ns,
            last_ns: start_ns,
            seen: 0,
        }
    }

    pub fn seed(&mut self, seed: Seed) {
        self.table.seed(seed);
    }

    pub fn apply(&mut self, event: &Event) {
        self.seen += 1;
        let owner = self.table.apply(event);
        match event {
            Event::Transition(transition) => {
                self.last_ns = self.last_ns.max(transition.ts_ns);
                self.transition(transition, owner);
            }
            Event::ConnectFailed(failed) => {
                self.last_ns = self.last_ns.max(failed.ts_ns);
                self.connect_failed(failed);
            }
            Event::Exited(_) => self.prune_exits(),
            Event::Accepted(_) => {}
        }
    }

    /// Lets the table forget exits of PIDs that neither it nor this model refers to.
    fn prune_exits(&mut self) {
        if !self.table.wants_exit_pruning() {
            return;
        }
        let mut pids: FxHashSet<u32> = self.processes.keys().map(|p| p.pid).collect();
        for destination in self.destinations.values() {
            pids.extend(destination.consumers.keys().map(|p| p.pid));
        }
        for portless in self.portless.values() {
            pids.extend(portless.owner.map(|o| o.process.pid));
        }
        self.table.prune_exits(|pid| pids.contains(&pid));
    }

    fn activity(&mut self, owner: Option<&SocketOwner>) -> &mut Activity {
        activity_of(&mut self.processes, owner)
    }

    fn transition(&mut self, event: &Transition, owner: Option<SocketOwner>) {
        use TcpState::*;
        let process = owner.map_or(UNKNOWN, |owner| owner.process);
        // Borrowed from the field, not through `self`, so that the other tables can be
        // updated alongside: one lookup per event.
        let activity = activity_of(&mut self.processes, owner.as_ref());
        let (ts_ns, start_ns) = (event.ts_ns, self.start_ns);
        match (event.old_state, event.new_state) {
            (SynSent, Established) => {
                activity.opened_active.record(ts_ns, start_ns);
                activity.opens.record(ts_ns, start_ns);
                let destination = Destination::of(event);
                *activity.destinations.entry(destination).or_default() += 1;
                let toward = self.destinations.entry(destination).or_default();
                toward.opened.record(ts_ns, start_ns);
                *toward.consumers.entry(process).or_default() += 1;
            }
            (SynRecv, Established) => {
                activity.opened_passive += 1;
                activity.opens.record(ts_ns, start_ns);
            }
            (Established, FinWait1) => activity.closed_first += 1,
            (Established, CloseWait) => {
                activity.peer_closed_first += 1;
                activity.close_wait_entered += 1;
            }
            (CloseWait, LastAck | Close) => activity.close_wait_left += 1,
            (SynSent, Close) if event.sport == 0 => {
                // connect() found no local port; its EADDRNOTAVAIL record follows.
                self.portless.insert(
                    event.task.tid,
                    PortlessClose {
                        destination: Destination::of(event),
                        owner,
                    },
                );
            }
            _ => {}
        }
        if event.new_state != Close {
            return;
        }
        if event.enters_time_wait() {
            activity.time_wait_created.record(ts_ns, start_ns);
        }
        let was_established = !matches!(event.old_state, SynSent | SynRecv | Listen | Close);
        if !was_established {
            return;
        }
        activity.closes.record(ts_ns, start_ns);
        let active = event.origin == Some(Origin::Active);
        if active {
            activity.closed_active += 1;
        } else {
            activity.closed_passive += 1;
        }
        if let Some(opened) = event.opened_ns {
            let lifetime = event.ts_ns.saturating_sub(opened);
            activity.lifetimes.record(lifetime);
            if active {
                self.destinations
                    .entry(Destination::of(event))
                    .or_default()
                    .lifetimes
                    .record(lifetime);
            }
        }
    }

    fn connect_failed(&mut self, failed: &ConnectFailed) {
        let portless = self.portless.remove(&failed.task.tid);
        let owner = portless.and_then(|p| p.owner);
        let process = owner.map_or(UNKNOWN, |owner| owner.process);
        let activity = self.activity(owner.as_ref());
        activity.failed_connects += 1;
        if activity.comm.is_empty() {
            activity.comm = failed.task.comm;
        }
        if let Some(portless) = portless {
            let toward = self.destinations.entry(portless.destination).or_default();
            toward.failed_connects += 1;
            *toward.consumers.entry(process).or_default() += 1;
        }
    }
}

/// The activity of `owner`'s process (or of the unknown owner), with the owner's latest
/// comm and cgroup.
fn activity_of<'a>(
    processes: &'a mut FxHashMap<Process, Activity>,
    owner: Option<&SocketOwner>,
) -> &'a mut Activity {
    let key = owner.map_or(UNKNOWN, |owner| owner.process);
    let activity = processes.entry(key).or_default();
    if let Some(owner) = owner {
        activity.comm = owner.comm;
        activity.cgroup_id = owner.cgroup_id;
    }
    activity
}

#[cfg(test)]
pub(crate) mod tests;
