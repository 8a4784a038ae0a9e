//! What happened in a window, per process and per destination: pure code over the event
//! stream, so live runs, replays and tests all go through it.
use std::net::IpAddr;

mod counts;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    detect::{histogram::Histogram, rate::Occurrences},
    event::{Comm, ConnectFailed, Event, Origin, Transition},
    process::Process,
    sockets::{
        owners::SocketOwner,
        table::{Seed, SocketTable, TableEvictions},
    },
    tcp_state::TcpState,
};

/// Where an active connection goes, from one local address in one network namespace:
/// the unit the ephemeral port range is counted against (each namespace has its own
/// range and its own ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// Network namespace inode; 0 when unknown.
    pub netns: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl Destination {
    fn of(event: &Transition) -> Self {
        Destination {
            netns: event.netns,
            saddr: event.saddr,
            daddr: event.daddr,
            dport: event.dport,
        }
    }

    /// The destination of an active flow's connections (the counting path).
    pub(crate) fn of_flow(flow: &crate::event::FlowCount) -> Self {
        Destination {
            netns: flow.netns,
            saddr: flow.saddr,
            daddr: flow.daddr,
            dport: flow.dport,
        }
    }

    /// The destination of a socket this side opened (its local port left out).
    pub fn of_tuple(tuple: &crate::sockets::tuple::Tuple) -> Self {
        Destination {
            netns: tuple.netns,
            saddr: tuple.saddr,
            daddr: tuple.daddr,
            dport: tuple.dport,
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
    /// Counting path: connections the kernel counted open and not yet closed (opened
    /// minus closed), which no socket in the table stands for unless it is one of the
    /// CLOSE_WAIT sockets a reading put there.
    pub counted_open: u64,
    /// Active connections opened, per destination.
    pub destinations: FxHashMap<Destination, u64>,
    /// Its latest event, for eviction: the longest idle goes first.
    pub last_ns: u64,
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
    /// Counting path: connections toward it counted open and not yet closed (see
    /// [`Activity::counted_open`]).
    pub counted_open: u64,
    /// Its latest event, for eviction.
    pub last_ns: u64,
}

/// How much a model keeps: each has a flag in `portwatch report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live sockets in the socket table, and TIME_WAIT groups (`--max-sockets`).
    pub max_sockets: usize,
    /// Processes with activity (`--max-processes`).
    pub max_processes: usize,
    /// Destinations with activity (`--max-destinations`).
    pub max_destinations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sockets: crate::sockets::table::DEFAULT_MAX_SOCKETS,
            max_processes: 16384,
            max_destinations: 65536,
        }
    }
}

/// What a model forgot because a limit was reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Live sockets (`sockets`) and TIME_WAIT sockets, from the socket table; and of
    /// the live ones, those that were not stale.
    pub table: TableEvictions,
    /// Processes whose activity was forgotten.
    pub processes: u64,
    /// Destinations whose activity was forgotten.
    pub destinations: u64,
}

impl Evictions {
    /// Whether anything a report counts was forgotten: then its numbers are lower
    /// bounds. Stale sockets (their CLOSE record was lost) are not.
    pub fn mattered(&self) -> bool {
        self.table.live_sockets > 0
            || self.table.time_wait > 0
            || self.processes > 0
            || self.destinations > 0
    }
}

/// What a process holds now, for eviction.
#[derive(Clone, Copy, Debug, Default)]
struct Holding {
    close_wait: bool,
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
    /// Whether a portless SYN_SENT -> CLOSE is itself the failed connect (the counting
    /// path attaches no connect() hook, so no EADDRNOTAVAIL record follows it).
    portless_is_failure: bool,
    /// Counting path: the process each flow's counts go to, fixed when the flow is first
    /// read (see `counts`).
    flow_owners: FxHashMap<counts::FlowId, Process>,
    /// Counting path: when each PID exited, for exits recorded since the last reading
    /// of the counts.
    exits_since_reading: FxHashMap<u32, Vec<u64>>,
    pub start_ns: u64,
    pub last_ns: u64,
    /// Records seen, of every kind.
    pub seen: u64,
    limits: Limits,
    evicted_processes: u64,
    evicted_destinations: u64,
}

/// Processes whose owner portwatch does not know are counted under PID 0.
pub const UNKNOWN: Process = Process::after_exits(0, 0);

impl Model {
    pub fn new(start_ns: u64) -> Self {
        Model::with_limits(start_ns, Limits::default())
    }

    /// A model that keeps at most what `limits` says. A report of an hour, or a host
    /// that starts a process per request, would otherwise keep every process and
    /// destination it ever saw.
    pub fn with_limits(start_ns: u64, limits: Limits) -> Self {
        let limits = Limits {
            max_sockets: limits.max_sockets.max(1),
            max_processes: limits.max_processes.max(1),
            max_destinations: limits.max_destinations.max(1),
        };
        Model {
            table: SocketTable::with_limit(limits.max_sockets),
            processes: FxHashMap::default(),
            destinations: FxHashMap::default(),
            portless: FxHashMap::default(),
            portless_is_failure: false,
            flow_owners: FxHashMap::default(),
            exits_since_reading: FxHashMap::default(),
            start_ns,
            last_ns: start_ns,
            seen: 0,
            limits,
            evicted_processes: 0,
            evicted_destinations: 0,
        }
    }

    /// Counts each portless SYN_SENT -> CLOSE as a failed connect (EADDRNOTAVAIL), for
    /// records from the counting path, where no connect() hook sends its own record.
    /// inet_hash_connect() failing to find a local port is the only way a connect()
    /// leaves SYN_SENT without one (the kernel matrix checks it against connect()).
    pub fn count_portless_closes_as_failed_connects(&mut self) {
        self.portless_is_failure = true;
    }

    pub fn evictions(&self) -> Evictions {
        Evictions {
            table: self.table.evictions(),
            processes: self.evicted_processes,
            destinations: self.evicted_destinations,
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
            Event::Exited(exited) => {
                if self.portless_is_failure {
                    self.exits_since_reading
                        .entry(exited.pid)
                        .or_default()
                        .push(exited.ts_ns);
                }
                self.prune_exits();
            }
            Event::Accepted(_) => {}
        }
        self.enforce_limits();
    }

    /// One comparison per table; the work is in batches (see `evict_processes`).
    fn enforce_limits(&mut self) {
        if self.processes.len() > self.limits.max_processes {
            self.evict_processes();
        }
        if self.destinations.len() > self.limits.max_destinations {
            self.evict_destinations();
        }
        if self.portless.len() > self.limits.max_processes {
            // Each waits for an EADDRNOTAVAIL record right behind it; so many waiting
            // means those records were lost. They hold no counts, only a destination.
            self.portless.clear();
        }
    }

    /// Over the limit: forgets processes down to 1/16 below it, so that one pass over
    /// the tables pays for that many new processes. First those that exited and hold
    /// nothing, then those that hold nothing, then those that hold sockets or
    /// TIME_WAIT, and those holding CLOSE_WAIT sockets last; the longest idle first.
    #[cold]
    fn evict_processes(&mut self) {
        let max = self.limits.max_processes;
        let excess = self.processes.len().saturating_sub(max - max / 16);
        if excess == 0 {
            return;
        }
        let holding = self.holding();
        let mut ranked: Vec<(u8, u64, Process)> = self
            .processes
            .iter()
            .map(|(&process, activity)| {
                let class = match holding.get(&process) {
                    Some(&Holding {
                        close_wait: true, ..
                    }) => 3,
                    Some(_) => 2,
                    None if process == UNKNOWN || self.table.is_alive(&process) => 1,
                    None => 0,
                };
                (class, activity.last_ns, process)
            })
            .collect();
        ranked.select_nth_unstable(excess - 1);
        let evicted: FxHashSet<Process> = ranked[..excess].iter().map(|r| r.2).collect();
        self.processes
            .retain(|process, _| !evicted.contains(process));
        for destination in self.destinations.values_mut() {
            destination
                .consumers
                .retain(|process, _| !evicted.contains(process));
        }
        self.evicted_processes += excess as u64;
    }

    /// Over the limit: forgets destinations down to 1/16 below it, those no port is
    /// taken toward (no live connection, no TIME_WAIT) first, the longest idle first.
    #[cold]
    fn evict_destinations(&mut self) {
        let max = self.limits.max_destinations;
        let excess = self.destinations.len().saturating_sub(max - max / 16);
        if excess == 0 {
            return;
        }
        let mut in_use = FxHashSet::default();
        for (_, socket) in self.table.live() {
            if socket.origin == Some(Origin::Active) {
                in_use.insert(Destination::of_tuple(&socket.tuple));
            }
        }
        for group in self.table.time_wait() {
            in_use.insert(Destination::of_tuple(&group.tuple));
        }
        let mut ranked: Vec<(bool, u64, Destination)> = self
            .destinations
            .iter()
            .map(|(&destination, activity)| {
                (in_use.contains(&destination), activity.last_ns, destination)
            })
            .collect();
        ranked.select_nth_unstable(excess - 1);
        let evicted: FxHashSet<Destination> = ranked[..excess].iter().map(|r| r.2).collect();
        self.destinations
            .retain(|destination, _| !evicted.contains(destination));
        // A process's destinations are a subset of the model's: keep them so.
        for activity in self.processes.values_mut() {
            activity
                .destinations
                .retain(|destination, _| !evicted.contains(destination));
        }
        self.evicted_destinations += excess as u64;
    }

    /// Local ports taken now per destination: live connections this host opened, plus
    /// TIME_WAIT sockets younger than 60 s; on the counting path also the connections
    /// counted open toward it that the table does not hold.
    pub fn ports_in_use(&self, now_ns: u64) -> FxHashMap<Destination, usize> {
        let mut in_use: FxHashMap<Destination, usize> = FxHashMap::default();
        let mut counted_in_table: FxHashMap<Destination, u64> = FxHashMap::default();
        for (sock, socket) in self.table.live() {
            if socket.origin == Some(Origin::Active) && socket.tuple.sport != 0 {
                let destination = Destination::of_tuple(&socket.tuple);
                *in_use.entry(destination).or_default() += 1;
                if self.table.is_counted(sock) {
                    *counted_in_table.entry(destination).or_default() += 1;
                }
            }
        }
        for tw in self.table.time_wait() {
            if now_ns.saturating_sub(tw.since_ns) < crate::sockets::time_wait::TIME_WAIT_NS {
                *in_use.entry(Destination::of_tuple(&tw.tuple)).or_default() += tw.count as usize;
            }
        }
        for (destination, toward) in &self.destinations {
            let in_table = counted_in_table.get(destination).copied().unwrap_or(0);
            let untabled = toward.counted_open.saturating_sub(in_table);
            if untabled > 0 {
                *in_use.entry(*destination).or_default() += untabled as usize;
            }
        }
        in_use
    }

    /// The processes holding live sockets or TIME_WAIT now, and whether any of those
    /// sockets is in CLOSE_WAIT.
    fn holding(&self) -> FxHashMap<Process, Holding> {
        let mut holding: FxHashMap<Process, Holding> = FxHashMap::default();
        for (_, socket) in self.table.live() {
            let process = socket.owner.map_or(UNKNOWN, |o| o.process);
            holding.entry(process).or_default().close_wait |= socket.state == TcpState::CloseWait;
        }
        for group in self.table.time_wait() {
            holding
                .entry(group.owner.map_or(UNKNOWN, |o| o.process))
                .or_default();
        }
        holding
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
        pids.extend(self.flow_owners.values().map(|p| p.pid));
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
        activity.last_ns = activity.last_ns.max(ts_ns);
        match (event.old_state, event.new_state) {
            (SynSent, Established) => {
                activity.opened_active.record(ts_ns, start_ns);
                activity.opens.record(ts_ns, start_ns);
                let destination = Destination::of(event);
                *activity.destinations.entry(destination).or_default() += 1;
                let toward = self.destinations.entry(destination).or_default();
                toward.last_ns = ts_ns;
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
            (SynSent, Close) if event.sport == 0 && self.portless_is_failure => {
                self.failed_connect(ts_ns, Some(Destination::of(event)), owner, event.task.comm);
                return;
            }
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
                let toward = self.destinations.entry(Destination::of(event)).or_default();
                toward.last_ns = ts_ns;
                toward.lifetimes.record(lifetime);
            }
        }
    }

    fn connect_failed(&mut self, failed: &ConnectFailed) {
        let portless = self.portless.remove(&failed.task.tid);
        let owner = portless.and_then(|p| p.owner);
        self.failed_connect(
            failed.ts_ns,
            portless.map(|p| p.destination),
            owner,
            failed.task.comm,
        );
    }

    /// A connect() that failed for want of a local port toward `destination`.
    fn failed_connect(
        &mut self,
        ts_ns: u64,
        destination: Option<Destination>,
        owner: Option<SocketOwner>,
        comm: Comm,
    ) {
        let process = owner.map_or(UNKNOWN, |owner| owner.process);
        let activity = self.activity(owner.as_ref());
        activity.last_ns = activity.last_ns.max(ts_ns);
        activity.failed_connects += 1;
        if activity.comm.is_empty() {
            activity.comm = comm;
        }
        if let Some(destination) = destination {
            let toward = self.destinations.entry(destination).or_default();
            toward.last_ns = ts_ns;
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
