//! The live socket table in userspace: a mirror of the kernel's, fed by events, seeded
//! by the startup snapshot, and the one place that answers "who owns this socket?".
//!
//! Pure code over events and timestamps (no clock, no I/O), so it is tested with
//! synthetic streams.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    num::NonZeroU64,
};

use serde::Serialize;

use super::owners::{OwnerId, Owners, ProcessRef, SocketOwner};
use crate::{
    event::{Accepted, Comm, Event, Exited, Origin, Owner, OwnerSource, Transition},
    fast_hash::FastMap,
    tcp_state::TcpState,
};

/// Linux keeps a socket in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN), not configurable.
pub const TIME_WAIT_NS: u64 = 60_000_000_000;

/// A connection's two ends, as seen from the socket's side. IPv4-mapped IPv6
/// addresses are stored as IPv4, so the kernel's events and sock_diag agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn of(event: &Transition) -> Self {
        Tuple {
            saddr: event.saddr,
            sport: event.sport,
            daddr: event.daddr,
            dport: event.dport,
        }
    }
}

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

/// Time-wait mini-sockets that entered TIME_WAIT within one second, toward one
/// destination, charged to the process whose socket closed first.
///
/// A host churning 35,000 connections a second holds 2 million TIME_WAIT sockets; kept
/// one by one they would cost hundreds of MiB. Grouped per second and destination
/// they cost a few entries a second, and expire at most a second late.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWait {
    /// For connections this side opened, the destination with the local port left
    /// out (the port budget is counted per destination). For accepted ones, the
    /// listening address with the remote end left out (their ports are not ephemeral).
    pub tuple: Tuple,
    /// When the first of the group entered TIME_WAIT.
    pub since_ns: u64,
    pub owner: Option<SocketOwner>,
    pub count: u32,
}

/// What TIME_WAIT sockets are grouped by, besides the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TimeWaitKey {
    tuple: Tuple,
    owner: Option<ProcessRef>,
}

/// A live socket as the table stores it: 64 bytes rather than [`LiveSocket`]'s 112, as
/// a host may hold hundreds of thousands. The owner is an id into the table's
/// [`Owners`], and a zero open time means unknown (the kernel sends 0 for that too).
#[derive(Clone, Copy, Debug)]
struct Stored {
    tuple: Tuple,
    state: TcpState,
    state_since_exact: bool,
    origin: Option<Origin>,
    owner: Option<OwnerId>,
    state_since_ns: u64,
    opened_ns: Option<NonZeroU64>,
}

/// A TIME_WAIT group as the table stores it (56 bytes rather than [`TimeWait`]'s 96).
#[derive(Clone, Copy, Debug)]
struct StoredTimeWait {
    tuple: Tuple,
    owner: Option<OwnerId>,
    count: u32,
    since_ns: u64,
}

const _: () = assert!(size_of::<Stored>() == 64);
const _: () = assert!(size_of::<StoredTimeWait>() == 56);

#[derive(Debug, Default)]
pub struct SocketTable {
    live: FastMap<u64, Stored>,
    /// In the order they entered TIME_WAIT, which is also the order they expire.
    time_wait: VecDeque<StoredTimeWait>,
    /// The owners `live` and `time_wait` refer to.
    owners: Owners,
    /// The current second's groups: key -> absolute position in `time_wait`.
    time_wait_second: u64,
    time_wait_index: FastMap<TimeWaitKey, u64>,
    /// Groups expired so far, to turn absolute positions into indices.
    time_wait_expired: u64,
    /// Sockets from the startup snapshot that no event has named yet.
    seeds: HashMap<Tuple, Seed>,
    /// Exits seen per PID: an owner learned before the latest exit is gone.
    exits: FastMap<u32, u32>,
    /// `exits.len()` after the last pruning (see [`SocketTable::prune_exits`]).
    exits_kept: usize,
}

/// Exits are pruned once this many more were recorded than twice the number kept.
const EXITS_SLACK: usize = 4096;

impl SocketTable {
    pub fn new() -> Self {
        SocketTable::default()
    }

    /// Adds a socket from the startup snapshot. It is matched to the kernel's identity
    /// by its 4-tuple when its first event arrives.
    pub fn seed(&mut self, seed: Seed) {
        self.seeds.insert(seed.tuple, seed);
    }

    /// Applies one event; for a transition, returns the socket's owner afterwards.
    pub fn apply(&mut self, event: &Event) -> Option<SocketOwner> {
        match event {
            Event::Transition(transition) => self.transition(transition),
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

    fn transition(&mut self, event: &Transition) -> Option<SocketOwner> {
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
                    entry.insert(fresh(event, None));
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
                entry.insert_entry(fresh(event, owner))
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
        if event.new_state == TcpState::Close {
            let closed = entry.remove();
            if event.enters_time_wait() {
                self.add_time_wait(tuple, closed.origin, event.ts_ns, closed.owner);
            }
        }
        self.compact_owners();
        owner
    }

    fn add_time_wait(
        &mut self,
        tuple: Tuple,
        origin: Option<Origin>,
        ts_ns: u64,
        owner: Option<OwnerId>,
    ) {
        let tuple = match origin {
            Some(Origin::Passive) => Tuple {
                daddr: unspecified(tuple.daddr),
                dport: 0,
                ..tuple
            },
            _ => Tuple { sport: 0, ..tuple },
        };
        let second = ts_ns / 1_000_000_000;
        if second != self.time_wait_second {
            self.time_wait_second = second;
            self.time_wait_index.clear();
        }
        let key = TimeWaitKey {
            tuple,
            owner: owner.map(|id| self.owners.get(id).process),
        };
        if let Some(&position) = self.time_wait_index.get(&key)
            && let Some(group) = position
                .checked_sub(self.time_wait_expired)
                .and_then(|index| self.time_wait.get_mut(index as usize))
        {
            group.count += 1;
            return;
        }
        let position = self.time_wait_expired + self.time_wait.len() as u64;
        self.time_wait_index.insert(key, position);
        self.time_wait.push_back(StoredTimeWait {
            tuple,
            owner,
            count: 1,
            since_ns: ts_ns,
        });
    }

    fn accepted(&mut self, event: &Accepted) {
        let owner = self.owner_from(&event.owner);
        if let Some(socket) = self.live.get_mut(&event.sock) {
            socket.owner = Some(self.owners.intern(owner));
            self.compact_owners();
        }
    }

    fn exited(&mut self, event: &Exited) {
        *self.exits.entry(event.pid).or_default() += 1;
    }

    fn owner_from(&self, owner: &Owner) -> SocketOwner {
        SocketOwner {
            process: ProcessRef {
                pid: owner.pid,
                generation: self.exits.get(&owner.pid).copied().unwrap_or(0),
            },
            comm: owner.comm,
            cgroup_id: owner.cgroup_id,
            source: owner.source,
        }
    }

    /// Drops the owners no socket refers to any more, once enough were added.
    fn compact_owners(&mut self) {
        if self.owners.wants_compaction() {
            let live = self.live.values_mut().filter_map(|s| s.owner.as_mut());
            let time_wait = self.time_wait.iter_mut().filter_map(|t| t.owner.as_mut());
            self.owners.compact(live.chain(time_wait));
        }
    }

    #[cfg(test)]
    fn owners_len(&self) -> usize {
        self.owners.len()
    }

    /// Whether enough exits were recorded since the last pruning to prune again. The
    /// table's user calls [`SocketTable::prune_exits`] then, with what it refers to.
    pub fn wants_exit_pruning(&self) -> bool {
        self.exits.len() > 2 * self.exits_kept + EXITS_SLACK
    }

    /// Forgets the exits of PIDs nothing refers to: not an owner in the table, not a
    /// holder of a startup socket, not one `also_keep` names (the caller's own
    /// references). A host starts and ends processes all day; without this a long run
    /// would remember every exit. A PID forgotten here counts its lives from 0 again,
    /// which nothing can confuse: no reference to its earlier lives is left.
    pub fn prune_exits(&mut self, also_keep: impl Fn(u32) -> bool) {
        let mut referenced = crate::fast_hash::FastSet::default();
        let live = self.live.values().filter_map(|s| s.owner);
        let time_wait = self.time_wait.iter().filter_map(|t| t.owner);
        for id in live.chain(time_wait) {
            referenced.insert(self.owners.get(id).process.pid);
        }
        for seed in self.seeds.values() {
            referenced.extend(seed.holders.iter().map(|&(pid, _)| pid));
        }
        self.exits
            .retain(|pid, _| referenced.contains(pid) || also_keep(*pid));
        self.exits_kept = self.exits.len();
    }

    #[cfg(test)]
    fn exits_len(&self) -> usize {
        self.exits.len()
    }

    /// False once the process has exited: its PID may belong to another process now.
    pub fn is_alive(&self, process: &ProcessRef) -> bool {
        self.exits.get(&process.pid).copied().unwrap_or(0) == process.generation
    }

    /// Forgets TIME_WAIT sockets older than 60 s at `now_ns`.
    pub fn expire_time_wait(&mut self, now_ns: u64) {
        while let Some(oldest) = self.time_wait.front() {
            if now_ns.saturating_sub(oldest.since_ns) < TIME_WAIT_NS {
                break;
            }
            self.time_wait.pop_front();
            self.time_wait_expired += 1;
        }
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

    /// Live sockets whose owner is unknown or only provisional (a listener's).
    pub fn unresolved(&self) -> usize {
        self.live
            .values()
            .filter(|s| {
                s.owner
                    .is_none_or(|id| !self.owners.get(id).source.is_certain())
            })
            .count()
    }

    /// Names the holders found in /proc for live sockets whose owner the kernel could
    /// not learn for certain (accept(fd, NULL, NULL), a socket passed with
    /// SCM_RIGHTS, ...). `holders` maps a 4-tuple to the PID and comm holding it.
    /// Returns how many sockets got an owner.
    pub fn resolve(&mut self, holders: &HashMap<Tuple, (u32, Comm)>) -> usize {
        let mut resolved = 0;
        for socket in self.live.values_mut() {
            let owner = socket.owner.map(|id| self.owners.get(id));
            if owner.is_some_and(|o| o.source.is_certain()) {
                continue;
            }
            let Some(&(pid, comm)) = holders.get(&socket.tuple) else {
                continue;
            };
            let found = SocketOwner {
                process: ProcessRef {
                    pid,
                    generation: self.exits.get(&pid).copied().unwrap_or(0),
                },
                comm,
                cgroup_id: owner.map_or(0, |o| o.cgroup_id),
                source: OwnerSource::Procfs,
            };
            socket.owner = Some(self.owners.intern(found));
            resolved += 1;
        }
        self.compact_owners();
        resolved
    }
}

/// The "any" address of `addr`'s family.
fn unspecified(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// connect(), listen(), or a new passive socket cloned from its listener: a new socket
/// at this address, whatever the table remembers about the address.
fn starts_life(event: &Transition) -> bool {
    portwatch_common::tcp_state::starts_life(event.old_state.number(), event.new_state.number())
}

/// A socket's entry before its first transition is applied.
fn fresh(event: &Transition, owner: Option<OwnerId>) -> Stored {
    Stored {
        tuple: Tuple::of(event),
        state: event.old_state,
        state_since_exact: false,
        origin: event.origin,
        owner,
        state_since_ns: event.ts_ns,
        opened_ns: event.opened_ns.and_then(NonZeroU64::new),
    }
}

/// The owner a snapshot's seed names: the first process holding it.
fn seeded_owner(seed: Option<&Seed>, exits: &FastMap<u32, u32>) -> Option<SocketOwner> {
    let &(pid, comm) = seed?.holders.first()?;
    Some(SocketOwner {
        process: ProcessRef {
            pid,
            generation: exits.get(&pid).copied().unwrap_or(0),
        },
        comm,
        cgroup_id: 0,
        source: OwnerSource::Procfs,
    })
}

/// Owners learned in the owner's own system call win; a provisional (listener) owner
/// never replaces one found in /proc or learned for certain.
///
/// The same PID and comm again is the same owner: keeping the one learned first keeps
/// its generation, so an owner that has exited stays exited.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Family, Task};

    const SERVER: u32 = 100;
    const CLIENT: u32 = 200;

    fn owner(pid: u32, name: &str, source: OwnerSource) -> Option<Owner> {
        Some(Owner {
            pid,
            comm: Comm::new(name),
            cgroup_id: 1,
            source,
        })
    }

    fn event(sock: u64, ts: u64, old: TcpState, new: TcpState, owner: Option<Owner>) -> Event {
        Event::Transition(Transition {
            ts_ns: ts,
            sock,
            task: Task {
                pid: 0,
                tid: 0,
                comm: Comm::new("swapper/0"),
            },
            by_syscall: false,
            owner,
            origin: Some(Origin::Passive),
            family: Family::Ipv4,
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 8080,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 40000 + (sock as u16),
            old_state: old,
            new_state: new,
            in_state_ns: None,
            opened_ns: Some(ts),
        })
    }

    #[test]
    fn accept_replaces_the_provisional_listener_owner() {
        let mut table = SocketTable::new();
        let parent = owner(SERVER, "parent", OwnerSource::Listener);
        table.apply(&event(1, 10, TcpState::Listen, TcpState::SynRecv, parent));
        let child = owner(SERVER + 1, "child", OwnerSource::Accept).unwrap();
        table.apply(&Event::Accepted(Accepted {
            ts_ns: 20,
            sock: 1,
            owner: child,
        }));
        // A later softirq transition still carries the kernel's (now accepted) owner,
        // but even a stale provisional one must not undo the accept.
        let shown = table
            .apply(&event(
                1,
                30,
                TcpState::Established,
                TcpState::CloseWait,
                parent,
            ))
            .unwrap();
        assert_eq!(shown.process.pid, SERVER + 1);
        assert_eq!(shown.source, OwnerSource::Accept);
        assert_eq!(table.get(1).unwrap().state, TcpState::CloseWait);
    }

    #[test]
    fn seeded_socket_gets_its_snapshot_owner() {
        let mut table = SocketTable::new();
        let tuple = Tuple {
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 8080,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 40007,
        };
        table.seed(Seed {
            tuple,
            state: TcpState::CloseWait,
            holders: vec![(SERVER, Comm::new("leaky"))],
            in_state_at_least_ns: Some(40_000_000_000),
            taken_ns: 5,
        });
        assert_eq!(table.unmatched_seeds().count(), 1);
        // The leaker finally closes: CLOSE_WAIT -> LAST_ACK, unknown to the kernel table.
        let shown = table
            .apply(&event(7, 50, TcpState::CloseWait, TcpState::LastAck, None))
            .unwrap();
        assert_eq!(shown.process.pid, SERVER);
        assert_eq!(shown.source, OwnerSource::Procfs);
        assert_eq!(table.unmatched_seeds().count(), 0);
    }

    #[test]
    fn time_wait_is_charged_to_the_closer_and_expires_after_60s() {
        let mut table = SocketTable::new();
        let client = owner(CLIENT, "client", OwnerSource::Connect);
        table.apply(&event(2, 0, TcpState::Close, TcpState::SynSent, client));
        table.apply(&event(
            2,
            10,
            TcpState::FinWait1,
            TcpState::FinWait2,
            client,
        ));
        table.apply(&event(2, 20, TcpState::FinWait2, TcpState::Close, client));
        assert!(table.get(2).is_none());
        let tw: Vec<_> = table.time_wait().collect();
        assert_eq!(tw.len(), 1);
        assert_eq!((tw[0].owner.unwrap().process.pid, tw[0].count), (CLIENT, 1));
        table.expire_time_wait(20 + TIME_WAIT_NS - 1);
        assert_eq!(table.time_wait().count(), 1);
        table.expire_time_wait(20 + TIME_WAIT_NS);
        assert_eq!(table.time_wait().count(), 0);
    }

    #[test]
    fn time_wait_sockets_are_grouped_per_second_destination_and_owner() {
        let mut table = SocketTable::new();
        let client = owner(CLIENT, "client", OwnerSource::Connect);
        let other = owner(CLIENT + 1, "other", OwnerSource::Connect);
        // 1000 sockets of one client toward one destination in 2 s, interleaved with
        // another client's: four groups, every socket counted.
        for i in 0..1000u64 {
            let ts = i * 2_000_000;
            let sock = 1000 + i;
            let who = if i % 2 == 0 { client } else { other };
            table.apply(&event(sock, ts, TcpState::FinWait2, TcpState::Close, who));
        }
        let groups: Vec<_> = table.time_wait().collect();
        assert_eq!(groups.len(), 4, "{groups:?}");
        assert_eq!(groups.iter().map(|g| g.count).sum::<u32>(), 1000);
        assert!(
            groups.iter().all(|g| g.tuple.sport == 8080),
            "passive: listening port kept"
        );
        // The first second's groups expire 60 s after their first socket entered.
        table.expire_time_wait(TIME_WAIT_NS + 2_000_000);
        assert_eq!(table.time_wait().map(|g| g.count).sum::<u32>(), 500);
        table.expire_time_wait(TIME_WAIT_NS + 2_000_000_000);
        assert_eq!(table.time_wait().count(), 0);
    }

    #[test]
    fn a_new_socket_at_a_stale_address_starts_afresh() {
        let mut table = SocketTable::new();
        // A client socket whose FIN_WAIT2 -> CLOSE the kernel skipped...
        let client = owner(CLIENT, "client", OwnerSource::Connect);
        table.apply(&event(6, 0, TcpState::Close, TcpState::SynSent, client));
        table.apply(&event(
            6,
            1,
            TcpState::Established,
            TcpState::FinWait1,
            client,
        ));
        // ...and a server socket at the same address, with its listener's owner.
        let server = owner(SERVER, "server", OwnerSource::Listener);
        let shown = table
            .apply(&event(6, 2, TcpState::Listen, TcpState::SynRecv, server))
            .unwrap();
        assert_eq!(shown.process.pid, SERVER);
        assert_eq!(shown.source, OwnerSource::Listener);
        assert_eq!(table.get(6).unwrap().state, TcpState::SynRecv);
    }

    #[test]
    fn owners_of_closed_sockets_are_forgotten() {
        let mut table = SocketTable::new();
        // 10,000 short-lived processes, one socket each, gone without TIME_WAIT.
        for pid in 0..10_000u32 {
            let sock = u64::from(pid) + 1;
            let owner = owner(pid + 1, "short", OwnerSource::Connect);
            table.apply(&event(sock, 0, TcpState::Close, TcpState::SynSent, owner));
            table.apply(&event(sock, 1, TcpState::LastAck, TcpState::Close, owner));
        }
        // One that stays, whose owner must survive every compaction.
        let stays = owner(99_999, "stays", OwnerSource::Accept);
        table.apply(&event(
            20_000,
            2,
            TcpState::Established,
            TcpState::CloseWait,
            stays,
        ));
        for pid in 0..3000u32 {
            let sock = 10_001 + u64::from(pid);
            let owner = owner(20_000 + pid, "more", OwnerSource::Connect);
            table.apply(&event(sock, 3, TcpState::Close, TcpState::SynSent, owner));
            table.apply(&event(sock, 4, TcpState::LastAck, TcpState::Close, owner));
        }
        assert!(
            table.owners_len() < 3000,
            "{} owners kept",
            table.owners_len()
        );
        let kept = table.get(20_000).unwrap().owner.unwrap();
        assert_eq!(kept.process.pid, 99_999);
        assert_eq!(kept.comm, Comm::new("stays"));
    }

    #[test]
    fn exits_of_processes_nothing_refers_to_are_forgotten() {
        let mut table = SocketTable::new();
        let exit = |pid| {
            Event::Exited(Exited {
                ts_ns: 1,
                pid,
                comm: Comm::new("x"),
            })
        };
        // A leaker that exits while its socket is still in the table, and a process
        // only the caller refers to (say, a row of the report).
        let leaker = table
            .apply(&event(
                1,
                0,
                TcpState::Established,
                TcpState::CloseWait,
                owner(SERVER, "leaker", OwnerSource::Accept),
            ))
            .unwrap();
        table.apply(&exit(SERVER));
        table.apply(&exit(CLIENT));
        let reported = ProcessRef {
            pid: CLIENT,
            generation: 0,
        };
        // Then 100,000 short-lived processes nothing refers to.
        for pid in 1_000..101_000 {
            table.apply(&exit(pid));
            if table.wants_exit_pruning() {
                table.prune_exits(|pid| pid == CLIENT);
            }
        }
        assert!(
            table.exits_len() < 20_000,
            "{} exits kept",
            table.exits_len()
        );
        assert!(!table.is_alive(&leaker.process), "the leaker stays exited");
        assert!(
            !table.is_alive(&reported),
            "the caller's process stays exited"
        );
        // A new process with the leaker's PID is not the leaker.
        let next = table
            .apply(&event(
                2,
                3,
                TcpState::Close,
                TcpState::SynSent,
                owner(SERVER, "next", OwnerSource::Connect),
            ))
            .unwrap();
        assert!(table.is_alive(&next.process));
        assert_ne!(next.process, leaker.process);
    }

    #[test]
    fn a_reset_from_last_ack_is_not_time_wait() {
        let mut table = SocketTable::new();
        table.apply(&event(3, 0, TcpState::LastAck, TcpState::Close, None));
        assert_eq!(table.time_wait().count(), 0);
    }

    #[test]
    fn exited_owner_is_not_confused_with_a_reused_pid() {
        let mut table = SocketTable::new();
        let first = owner(SERVER, "old", OwnerSource::Accept);
        let before = table
            .apply(&event(
                4,
                0,
                TcpState::Established,
                TcpState::CloseWait,
                first,
            ))
            .unwrap();
        assert!(table.is_alive(&before.process));
        table.apply(&Event::Exited(Exited {
            ts_ns: 1,
            pid: SERVER,
            comm: Comm::new("old"),
        }));
        assert!(!table.is_alive(&before.process), "the owner is gone");
        // A new process gets the same PID and opens a socket of its own.
        let reused = owner(SERVER, "new", OwnerSource::Connect);
        let now = table
            .apply(&event(5, 2, TcpState::Close, TcpState::SynSent, reused))
            .unwrap();
        assert!(table.is_alive(&now.process));
        assert_ne!(now.process, before.process);
        // The orphan's later events still carry the old owner from the kernel table: it
        // stays known to be gone.
        let later = table
            .apply(&event(4, 3, TcpState::CloseWait, TcpState::LastAck, first))
            .unwrap();
        assert!(!table.is_alive(&later.process));
        let orphan = table.get(4).unwrap().owner.unwrap();
        assert_eq!(orphan.comm, Comm::new("old"));
        assert!(!table.is_alive(&orphan.process));
    }

    #[test]
    fn procfs_resolves_a_provisional_owner_but_never_a_certain_one() {
        let mut table = SocketTable::new();
        let listener = owner(SERVER, "primary", OwnerSource::Listener);
        table.apply(&event(
            8,
            0,
            TcpState::SynRecv,
            TcpState::Established,
            listener,
        ));
        let connected = owner(CLIENT, "client", OwnerSource::Connect);
        table.apply(&event(
            9,
            0,
            TcpState::SynSent,
            TcpState::Established,
            connected,
        ));
        assert_eq!(table.unresolved(), 1);
        let tuple = |sock| table.get(sock).unwrap().tuple;
        let holders = HashMap::from([
            (tuple(8), (SERVER + 5, Comm::new("worker"))),
            (tuple(9), (SERVER + 6, Comm::new("impostor"))),
        ]);
        assert_eq!(table.resolve(&holders), 1);
        let worker = table.get(8).unwrap().owner.unwrap();
        assert_eq!(
            (worker.process.pid, worker.source),
            (SERVER + 5, OwnerSource::Procfs)
        );
        assert_eq!(table.get(9).unwrap().owner.unwrap().process.pid, CLIENT);
        assert_eq!(table.unresolved(), 0);
    }
}
