//! The live socket table in userspace: a mirror of the kernel's, fed by events, seeded
//! by the startup snapshot, and the one place that answers "who owns this socket?".
//!
//! Pure code over events and timestamps (no clock, no I/O), so it is tested with
//! synthetic streams. What the counting path feeds it is in `counted`.
use std::{collections::HashMap, num::NonZeroU64};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    exits::Exits,
    owners::{OwnerId, Owners, SocketOwner},
    time_wait::{TimeWait, TimeWaits},
    tuple::Tuple,
};
use crate::{
    event::{Accepted, Comm, Event, Exited, Origin, Owner, OwnerSource, Transition},
    process::Process,
    tcp_state::TcpState,
};

/// A socket that existed before portwatch attached, from the startup snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub tuple: Tuple,
    pub state: TcpState,
    /// Processes holding its file descriptor; the first is taken as the owner.
    pub holders: Vec<(u32, Comm)>,
    /// A lower bound on how long it has been in `state` when the snapshot was taken.
    pub in_state_at_least_ns: Option<u64>,
    /// CLOCK_MONOTONIC time of the snapshot.
    pub taken_ns: u64,
}

/// A live socket as [`SocketTable::live`] and [`SocketTable::get`] show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSocket {
    pub tuple: Tuple,
    pub state: TcpState,
    /// When it entered `state`; for sockets that predate portwatch, the latest time it
    /// can have (see `state_since_exact`).
    pub state_since_ns: u64,
    /// False when `state_since_ns` is only an upper bound (the socket predates portwatch).
    pub state_since_exact: bool,
    pub opened_ns: Option<u64>,
    pub origin: Option<Origin>,
    pub owner: Option<SocketOwner>,
}

/// What one transition did, for a caller that follows whole connections
/// ([`SocketTable::apply_transition`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The socket's owner afterwards (what [`SocketTable::apply`] returns).
    pub owner: Option<SocketOwner>,
    /// Set when the transition closed the socket (to CLOSE): what the table knew of it.
    pub closed: Option<Closed>,
}

/// A socket as the table knew it when it closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// When it opened (CLOCK_MONOTONIC ns): the kernel's record of it, or, when the
    /// kernel's table had no room for the socket, the time its opening record carried.
    /// None when portwatch did not see it open.
    pub opened_ns: Option<u64>,
    /// The startup snapshot listed it: it was open before portwatch attached.
    pub predates_start: bool,
    pub origin: Option<Origin>,
}

/// A live socket as the table stores it: 72 bytes, well under [`LiveSocket`]'s size, as
/// a host may hold hundreds of thousands. The owner is an id into the table's
/// [`Owners`], and a zero open time means unknown (the kernel sends 0 for that too).
#[derive(Clone, Copy, Debug)]
struct Stored {
    tuple: Tuple,
    state: TcpState,
    state_since_exact: bool,
    /// From the startup snapshot (see [`Closed::predates_start`]).
    predates_start: bool,
    origin: Option<Origin>,
    owner: Option<OwnerId>,
    state_since_ns: u64,
    opened_ns: Option<NonZeroU64>,
}

const _: () = assert!(size_of::<Stored>() == 72);

/// How many live sockets the table holds by default: the same as the kernel's table
/// (`--max-sockets`).
pub const DEFAULT_MAX_SOCKETS: usize = 65536;

/// A socket in a passing state (SYN_SENT, FIN_WAIT2, LAST_ACK, ...) for longer than
/// this has lost its CLOSE record: the kernel gives up on every one of them well within
/// it (SYN retries ~2 min, FIN_WAIT2 60 s). Evicting it loses nothing.
pub const STALE_NS: u64 = 5 * 60 * 1_000_000_000;

/// What the table forgot because it was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableEvictions {
    /// Live sockets evicted, of every kind.
    pub sockets: u64,
    /// Of `sockets`, those that were not stale: ones a report counted.
    pub live_sockets: u64,
    /// TIME_WAIT sockets forgotten before their 60 s.
    pub time_wait: u64,
}

#[derive(Debug)]
pub struct SocketTable {
    live: FxHashMap<u64, Stored>,
    /// `live` holds at most this many sockets (see [`SocketTable::evict`]).
    max_sockets: usize,
    evicted_sockets: u64,
    evicted_live_sockets: u64,
    time_wait: TimeWaits,
    /// The owners `live` and `time_wait` refer to.
    owners: Owners,
    /// Sockets from the startup snapshot that no event has named yet. std's hasher:
    /// the key is a 4-tuple remote peers choose (see Cargo.toml on rustc-hash).
    seeds: HashMap<Tuple, Seed>,
    exits: Exits,
    /// Counting path: the sockets in `live` that the last reading of the kernel's
    /// CLOSE_WAIT sockets put there (the rest come from records).
    counted_close_waits: FxHashSet<u64>,
}

impl Default for SocketTable {
    fn default() -> Self {
        SocketTable::with_limit(DEFAULT_MAX_SOCKETS)
    }
}

impl SocketTable {
    pub fn new() -> Self {
        SocketTable::default()
    }

    /// A table of at most `max_sockets` live sockets and as many TIME_WAIT groups.
    /// Without a bound, every socket whose CLOSE record is lost (a full ring buffer, a
    /// run the kernel skipped) would stay forever.
    pub fn with_limit(max_sockets: usize) -> Self {
        let max_sockets = max_sockets.max(1);
        SocketTable {
            live: FxHashMap::default(),
            max_sockets,
            evicted_sockets: 0,
            evicted_live_sockets: 0,
            time_wait: TimeWaits::new(max_sockets),
            owners: Owners::default(),
            seeds: HashMap::new(),
            exits: Exits::default(),
            counted_close_waits: FxHashSet::default(),
        }
    }

    /// Adds a socket from the startup snapshot. It is matched to the kernel's identity
    /// by its 4-tuple when its first event arrives.
    pub fn seed(&mut self, seed: Seed) {
        self.seeds.insert(seed.tuple, seed);
    }

    /// Applies one event; for a transition, returns the socket's owner afterwards.
    pub fn apply(&mut self, event: &Event) -> Option<SocketOwner> {
        match event {
            Event::Transition(transition) => self.transition(transition).owner,
            Event::Accepted(accepted) => {
                self.accepted(accepted);
                None
            }
            Event::Exited(exited) => {
                self.exited(exited);
                None
            }
            Event::ConnectFailed(_) => None,
        }
    }

    /// Applies one transition; returns the owner afterwards and, when it closed the
    /// socket, what the table knew of it.
    pub fn apply_transition(&mut self, event: &Transition) -> Applied {
        self.transition(event)
    }

    fn transition(&mut self, event: &Transition) -> Applied {
        use std::collections::hash_map::Entry;
        self.expire_time_wait(event.ts_ns);
        let learned = event.owner.map(|owner| self.owner_from(&owner));
        let tuple = Tuple::of(event);
        // One lookup per event: the entry found (or made) here is the one removed at
        // CLOSE.
        let mut entry = match self.live.entry(event.sock) {
            Entry::Occupied(mut entry) => {
                if starts_life(event) {
                    // Still here, so the kernel skipped the earlier socket's last
                    // transitions (it does while another eBPF program runs on that CPU):
                    // that socket is gone, and its owner is not this one's.
                    entry.insert(fresh(event, None, false));
                }
                entry
            }
            Entry::Vacant(entry) => {
                // Seeds are few and gone soon after startup; most new sockets need no
                // look at them.
                let seed = if self.seeds.is_empty() {
                    None
                } else {
                    self.seeds.remove(&tuple)
                };
                let owner =
                    seeded_owner(seed.as_ref(), &self.exits).map(|owner| self.owners.intern(owner));
                entry.insert_entry(fresh(event, owner, seed.is_some()))
            }
        };
        let socket = entry.get_mut();
        let mut owner = socket.owner.map(|id| self.owners.get(id));
        if let Some(learned) = learned
            && should_replace(owner.as_ref(), &learned)
        {
            socket.owner = Some(self.owners.intern(learned));
            owner = Some(learned);
        }
        // The local port of CLOSE -> SYN_SENT is 0: the kernel picks it afterwards.
        socket.tuple = tuple;
        socket.state = event.new_state;
        socket.state_since_ns = event.ts_ns;
        socket.state_since_exact = true;
        if event.origin.is_some() {
            socket.origin = event.origin;
        }
        let mut gone = None;
        if event.new_state == TcpState::Close {
            let closed = entry.remove();
            if event.enters_time_wait() {
                let process = closed.owner.map(|id| self.owners.get(id).process);
                self.time_wait
                    .add(tuple, closed.origin, event.ts_ns, closed.owner, process);
            }
            gone = Some(Closed {
                opened_ns: closed.opened_ns.map(NonZeroU64::get),
                predates_start: closed.predates_start,
                origin: closed.origin,
            });
        }
        if self.live.len() > self.max_sockets {
            self.evict(event.ts_ns);
        }
        self.compact_owners();
        Applied {
            owner,
            closed: gone,
        }
    }

    /// Over the limit: forgets live sockets down to 1/16 below it, so one scan pays
    /// for that many new sockets. First those in passing states (opening, closing:
    /// the ones that lost their CLOSE record are among them), longest in their state
    /// first; then ESTABLISHED, oldest first; then listeners; CLOSE_WAIT last, newest
    /// first, so the oldest (the leak's evidence) stays longest.
    #[cold]
    fn evict(&mut self, now_ns: u64) {
        let target = self.max_sockets - self.max_sockets / 16;
        let excess = self.live.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        let mut ranked: Vec<(u8, u64, u64)> = self
            .live
            .iter()
            .map(|(&sock, s)| {
                let (class, order) = match s.state {
                    TcpState::Established => (1, s.state_since_ns),
                    TcpState::Listen => (2, s.state_since_ns),
                    TcpState::CloseWait => (3, u64::MAX - s.state_since_ns),
                    _ => (0, s.state_since_ns),
                };
                (class, order, sock)
            })
            .collect();
        ranked.select_nth_unstable(excess - 1);
        for &(class, since_ns, sock) in &ranked[..excess] {
            self.live.remove(&sock);
            self.evicted_sockets += 1;
            if class != 0 || now_ns.saturating_sub(since_ns) < STALE_NS {
                self.evicted_live_sockets += 1;
            }
        }
    }

    /// The process a PID names now (its current life).
    pub fn process(&self, pid: u32) -> Process {
        self.exits.process(pid)
    }

    /// What the table forgot because it was full.
    pub fn evictions(&self) -> TableEvictions {
        TableEvictions {
            sockets: self.evicted_sockets,
            live_sockets: self.evicted_live_sockets,
            time_wait: self.time_wait.evicted(),
        }
    }

    /// Live sockets held now.
    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    fn accepted(&mut self, event: &Accepted) {
        let owner = self.owner_from(&event.owner);
        if let Some(socket) = self.live.get_mut(&event.sock) {
            socket.owner = Some(self.owners.intern(owner));
            self.compact_owners();
        }
    }

    fn exited(&mut self, event: &Exited) {
        self.exits.record(event.pid);
    }

    fn owner_from(&self, owner: &Owner) -> SocketOwner {
        SocketOwner {
            process: self.exits.process(owner.pid),
            comm: owner.comm,
            cgroup_id: owner.cgroup_id,
            source: owner.source,
        }
    }

    /// Drops the owners no socket refers to any more, once enough were added.
    fn compact_owners(&mut self) {
        if self.owners.wants_compaction() {
            let live = self.live.values_mut().filter_map(|s| s.owner.as_mut());
            self.owners.compact(live.chain(self.time_wait.owners_mut()));
        }
    }

    #[cfg(test)]
    fn owners_len(&self) -> usize {
        self.owners.len()
    }

    /// Whether enough exits were recorded since the last pruning to prune again. The
    /// table's user calls [`SocketTable::prune_exits`] then, with what it refers to.
    pub fn wants_exit_pruning(&self) -> bool {
        self.exits.wants_pruning()
    }

    /// Forgets the exits of PIDs nothing refers to: not an owner in the table, not a
    /// holder of a startup socket, not one `also_keep` names (the caller's own
    /// references). A host starts and ends processes all day; without this a long run
    /// would remember every exit. A PID forgotten here counts its lives from 0 again,
    /// which nothing can confuse: no reference to its earlier lives is left.
    pub fn prune_exits(&mut self, also_keep: impl Fn(u32) -> bool) {
        let mut referenced = FxHashSet::default();
        let live = self.live.values().filter_map(|s| s.owner);
        let time_wait = self.time_wait.iter().filter_map(|t| t.owner);
        for id in live.chain(time_wait) {
            referenced.insert(self.owners.get(id).process.pid);
        }
        for seed in self.seeds.values() {
            referenced.extend(seed.holders.iter().map(|&(pid, _)| pid));
        }
        self.exits
            .retain(|pid| referenced.contains(&pid) || also_keep(pid));
    }

    #[cfg(test)]
    fn exits_len(&self) -> usize {
        self.exits.len()
    }

    /// False once the process has exited: its PID may belong to another process now.
    pub fn is_alive(&self, process: &Process) -> bool {
        self.exits.is_alive(process)
    }

    /// Forgets TIME_WAIT sockets older than 60 s at `now_ns`.
    pub fn expire_time_wait(&mut self, now_ns: u64) {
        self.time_wait.expire(now_ns);
    }

    pub fn live(&self) -> impl Iterator<Item = (u64, LiveSocket)> + '_ {
        self.live
            .iter()
            .map(|(&sock, stored)| (sock, self.view(stored)))
    }

    pub fn time_wait(&self) -> impl Iterator<Item = TimeWait> + '_ {
        self.time_wait.iter().map(|stored| TimeWait {
            tuple: stored.tuple,
            since_ns: stored.since_ns,
            owner: stored.owner.map(|id| self.owners.get(id)),
            count: stored.count,
        })
    }

    /// Startup-snapshot sockets no event has touched yet (still in their seeded state).
    pub fn unmatched_seeds(&self) -> impl Iterator<Item = &Seed> {
        self.seeds.values()
    }

    pub fn get(&self, sock: u64) -> Option<LiveSocket> {
        self.live.get(&sock).map(|stored| self.view(stored))
    }

    fn view(&self, stored: &Stored) -> LiveSocket {
        LiveSocket {
            tuple: stored.tuple,
            state: stored.state,
            state_since_ns: stored.state_since_ns,
            state_since_exact: stored.state_since_exact,
            opened_ns: stored.opened_ns.map(NonZeroU64::get),
            origin: stored.origin,
            owner: stored.owner.map(|id| self.owners.get(id)),
        }
    }

    /// Live sockets whose owner is unknown, only provisional (a listener's), or has
    /// exited (see [`SocketTable::settled`]).
    pub fn unresolved(&self) -> usize {
        self.live
            .values()
            .filter(|s| !self.settled(s.owner.map(|id| self.owners.get(id)).as_ref()))
            .count()
    }

    /// Whether an owner needs no look at /proc: learned for certain, and still running.
    ///
    /// An owner that exited while its socket lives on may have left it to a process
    /// that inherited the descriptor (a leaker that forks and exits, a daemon that
    /// double-forks): the kernel saw that process neither accept nor connect, so only
    /// /proc can name it. Where no process holds the socket (an orphan finishing its
    /// close), the exited owner stays.
    fn settled(&self, owner: Option<&SocketOwner>) -> bool {
        owner.is_some_and(|o| o.source.is_certain() && self.exits.is_alive(&o.process))
    }

    /// Names the holders found in /proc for live sockets whose owner the kernel could
    /// not learn for certain (accept(fd, NULL, NULL), a socket passed with
    /// SCM_RIGHTS, ...) or has exited (inherited by a child). `holders` maps a
    /// 4-tuple to the PID and comm holding it. Returns how many sockets got an owner.
    pub fn resolve(&mut self, holders: &HashMap<Tuple, (u32, Comm)>) -> usize {
        let mut resolved = 0;
        let mut live = std::mem::take(&mut self.live);
        for socket in live.values_mut() {
            let owner = socket.owner.map(|id| self.owners.get(id));
            if self.settled(owner.as_ref()) {
                continue;
            }
            let Some(&(pid, comm)) = holders.get(&socket.tuple) else {
                continue;
            };
            let found = SocketOwner {
                process: self.exits.process(pid),
                comm,
                cgroup_id: owner.map_or(0, |o| o.cgroup_id),
                source: OwnerSource::Procfs,
            };
            socket.owner = Some(self.owners.intern(found));
            resolved += 1;
        }
        self.live = live;
        self.compact_owners();
        resolved
    }
}

/// connect(), listen(), or a new passive socket cloned from its listener: a new socket
/// at this address, whatever the table remembers about the address.
fn starts_life(event: &Transition) -> bool {
    portwatch_common::tcp_state::starts_life(event.old_state.number(), event.new_state.number())
}

/// A socket's entry before its first transition is applied.
fn fresh(event: &Transition, owner: Option<OwnerId>, predates_start: bool) -> Stored {
    Stored {
        tuple: Tuple::of(event),
        state: event.old_state,
        state_since_exact: false,
        predates_start,
        origin: event.origin,
        owner,
        state_since_ns: event.ts_ns,
        opened_ns: event.opened_ns.and_then(NonZeroU64::new),
    }
}

/// The owner a snapshot's seed names: the first process holding it.
fn seeded_owner(seed: Option<&Seed>, exits: &Exits) -> Option<SocketOwner> {
    let &(pid, comm) = seed?.holders.first()?;
    Some(SocketOwner {
        process: exits.process(pid),
        comm,
        cgroup_id: 0,
        source: OwnerSource::Procfs,
    })
}

/// Owners learned in the owner's own system call win; a provisional (listener) owner
/// never replaces one found in /proc or learned for certain.
///
/// The same PID and comm again is the same owner: keeping the one learned first keeps
/// its life, so an owner that has exited stays exited.
fn should_replace(current: Option<&SocketOwner>, learned: &SocketOwner) -> bool {
    match current {
        None => true,
        Some(current)
            if current.process.pid == learned.process.pid && current.comm == learned.comm =>
        {
            false
        }
        Some(_) if learned.source.is_certain() => true,
        Some(current) => !current.source.is_certain() && current.source != OwnerSource::Procfs,
    }
}

mod counted;

#[cfg(test)]
mod tests;
