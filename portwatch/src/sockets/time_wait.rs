//! TIME_WAIT sockets, grouped: the socket table keeps them after their CLOSE, charged to
//! the process whose socket closed first, until the kernel lets them go.
use std::{collections::VecDeque, net::IpAddr};

use super::{
    owners::{OwnerId, SocketOwner},
    tuple::Tuple,
};
use rustc_hash::FxHashMap;

use crate::{event::Origin, process::Process};

/// Linux keeps a socket in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN), not configurable.
pub const TIME_WAIT_NS: u64 = 60_000_000_000;

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
    owner: Option<Process>,
}

/// A TIME_WAIT group as the table stores it (64 bytes, well under [`TimeWait`]'s size).
#[derive(Clone, Copy, Debug)]
pub(super) struct StoredTimeWait {
    pub tuple: Tuple,
    pub owner: Option<OwnerId>,
    pub count: u32,
    pub since_ns: u64,
}

const _: () = assert!(size_of::<StoredTimeWait>() == 64);

/// The groups, oldest first.
#[derive(Debug)]
pub(super) struct TimeWaits {
    /// In the order they entered TIME_WAIT, which is also the order they expire.
    groups: VecDeque<StoredTimeWait>,
    /// The current second's groups: key -> absolute position in `groups`.
    second: u64,
    index: FxHashMap<TimeWaitKey, u64>,
    /// Groups expired (or evicted) so far, to turn absolute positions into indices.
    expired: u64,
    /// At most this many groups are kept. They expire after 60 s, so only a host
    /// closing toward thousands of destinations a second reaches it.
    max_groups: usize,
    /// TIME_WAIT sockets forgotten before their 60 s because `max_groups` was reached.
    evicted: u64,
}

impl Default for TimeWaits {
    fn default() -> Self {
        TimeWaits::new(usize::MAX)
    }
}

impl TimeWaits {
    pub fn new(max_groups: usize) -> Self {
        TimeWaits {
            groups: VecDeque::new(),
            second: 0,
            index: FxHashMap::default(),
            expired: 0,
            max_groups: max_groups.max(1),
            evicted: 0,
        }
    }

    /// Counts a socket that entered TIME_WAIT at `ts_ns`, owned by `owner` (an id in
    /// the table's owners) of `process`.
    pub fn add(
        &mut self,
        tuple: Tuple,
        origin: Option<Origin>,
        ts_ns: u64,
        owner: Option<OwnerId>,
        process: Option<Process>,
    ) {
        self.add_many(tuple, origin, ts_ns, owner, process, 1);
    }

    /// Counts `count` sockets that entered TIME_WAIT at `ts_ns` (as [`TimeWaits::add`]).
    pub fn add_many(
        &mut self,
        tuple: Tuple,
        origin: Option<Origin>,
        ts_ns: u64,
        owner: Option<OwnerId>,
        process: Option<Process>,
        count: u64,
    ) {
        // A group of more than 4 billion in one second: more than a host can make.
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count == 0 {
            return;
        }
        let tuple = match origin {
            Some(Origin::Passive) => Tuple {
                daddr: unspecified(tuple.daddr),
                dport: 0,
                ..tuple
            },
            _ => Tuple { sport: 0, ..tuple },
        };
        let second = ts_ns / 1_000_000_000;
        if second != self.second {
            self.second = second;
            self.index.clear();
        }
        let key = TimeWaitKey {
            tuple,
            owner: process,
        };
        if let Some(&position) = self.index.get(&key)
            && let Some(group) = position
                .checked_sub(self.expired)
                .and_then(|index| self.groups.get_mut(index as usize))
        {
            group.count += count;
            return;
        }
        let position = self.expired + self.groups.len() as u64;
        self.index.insert(key, position);
        self.groups.push_back(StoredTimeWait {
            tuple,
            owner,
            count,
            since_ns: ts_ns,
        });
        if self.groups.len() > self.max_groups {
            self.evict();
        }
    }

    /// Over the limit: forgets the oldest groups, the first to expire anyway, down to
    /// 1/16 below the limit so the next eviction is that many groups away.
    #[cold]
    fn evict(&mut self) {
        let target = self.max_groups - self.max_groups / 16;
        while self.groups.len() > target {
            let Some(oldest) = self.groups.pop_front() else {
                break;
            };
            self.expired += 1;
            self.evicted += u64::from(oldest.count);
        }
    }

    /// TIME_WAIT sockets forgotten early because the limit was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Forgets TIME_WAIT sockets older than 60 s at `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(oldest) = self.groups.front() {
            if now_ns.saturating_sub(oldest.since_ns) < TIME_WAIT_NS {
                break;
            }
            self.groups.pop_front();
            self.expired += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &StoredTimeWait> {
        self.groups.iter()
    }

    /// The owner ids the groups refer to, for the owners' compaction.
    pub fn owners_mut(&mut self) -> impl Iterator<Item = &mut OwnerId> {
        self.groups.iter_mut().filter_map(|t| t.owner.as_mut())
    }
}

/// The "any" address of `addr`'s family.
fn unspecified(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
