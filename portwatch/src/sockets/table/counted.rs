//! What the counting path tells the socket table, where the records path sends a
//! record per transition: the sockets in the kernel's `CLOSE_WAITS` map at each
//! reading, and TIME_WAIT sockets made, counted per owner and destination.
use std::num::NonZeroU64;

use rustc_hash::{FxHashMap, FxHashSet};

use super::{SocketTable, Stored, should_replace};
use crate::{
    event::{CloseWaitSocket, Origin},
    process::Process,
    sockets::{owners::SocketOwner, tuple::Tuple},
    tcp_state::TcpState,
};

impl SocketTable {
    /// Counting path: the sockets in CLOSE_WAIT now, as the kernel's `CLOSE_WAITS` map
    /// holds them, replace those the previous reading put in the table (gone from the
    /// map: they left CLOSE_WAIT, which the kernel counted). An owner found in /proc
    /// since is kept, as for sockets followed by records.
    ///
    /// `recent_exits` are when each PID exited, for exits recorded since the previous
    /// reading: the owner of a socket that entered CLOSE_WAIT before one is its
    /// earlier life.
    pub fn sync_close_waits(
        &mut self,
        sockets: &[CloseWaitSocket],
        recent_exits: &FxHashMap<u32, Vec<u64>>,
        now_ns: u64,
    ) {
        let mut current = FxHashSet::default();
        for socket in sockets {
            current.insert(socket.sock);
            let learned = socket.owner.map(|owner| {
                let mut learned = self.owner_from(&owner);
                let exited = recent_exits.get(&owner.pid).map_or(0, |times| {
                    times.iter().filter(|&&exit| exit > socket.since_ns).count() as u32
                });
                if let crate::process::Life::AfterExits(exits) = learned.process.life {
                    learned.process = Process::after_exits(owner.pid, exits.saturating_sub(exited));
                }
                learned
            });
            let tuple = Tuple {
                netns: socket.netns,
                saddr: socket.saddr,
                sport: socket.sport,
                daddr: socket.daddr,
                dport: socket.dport,
            };
            let existing = self.live.get(&socket.sock).copied();
            let mut owner = existing.and_then(|s| s.owner);
            if let Some(learned) = learned
                && should_replace(owner.map(|id| self.owners.get(id)).as_ref(), &learned)
            {
                owner = Some(self.owners.intern(learned));
            }
            self.live.insert(
                socket.sock,
                Stored {
                    tuple,
                    state: TcpState::CloseWait,
                    state_since_exact: true,
                    origin: socket.origin,
                    owner,
                    state_since_ns: socket.since_ns,
                    opened_ns: socket.opened_ns.and_then(NonZeroU64::new),
                    // The kernel's CLOSE_WAITS holds only sockets it saw open.
                    predates_start: false,
                },
            );
        }
        for sock in self.counted_close_waits.drain() {
            if !current.contains(&sock) {
                self.live.remove(&sock);
            }
        }
        self.counted_close_waits = current;
        if self.live.len() > self.max_sockets {
            self.evict(now_ns);
        }
        self.compact_owners();
    }

    /// Counting path: `count` sockets of `owner` that entered TIME_WAIT by `ts_ns`,
    /// grouped as [`SocketTable::apply`] groups them.
    pub fn add_time_waits(
        &mut self,
        tuple: Tuple,
        origin: Option<Origin>,
        ts_ns: u64,
        owner: Option<SocketOwner>,
        count: u64,
    ) {
        let id = owner.map(|owner| self.owners.intern(owner));
        let process = owner.map(|owner| owner.process);
        self.time_wait
            .add_many(tuple, origin, ts_ns, id, process, count);
        self.compact_owners();
    }

    /// Whether a reading of the kernel's CLOSE_WAIT sockets put this socket here (rather
    /// than a record).
    pub fn is_counted(&self, sock: u64) -> bool {
        self.counted_close_waits.contains(&sock)
    }
}
