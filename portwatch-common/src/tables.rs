//! Keys and values of the kernel's own tables (the socket table, listeners, peers
//! awaiting accept()), and its loss counters.
use core::mem::size_of;

use crate::Owner;

/// Indexes into the per-CPU `COUNTERS` array, where the kernel counts what it could
/// not deliver or remember. Userspace sums them over CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event was lost because the ring buffer was full.
    RingBufFull = 0,
    /// A socket could not be added to the kernel socket table because it was full:
    /// its later events carry no `in_state_ns` and no owner.
    SocketTableFull = 1,
    /// A listener, accept or peer entry found its table full: an owner may be missed.
    OwnerTableFull = 2,
    /// Counting path: a transition could not be counted in `FLOWS` (full), so it went
    /// to the ring buffer as a record instead: nothing lost, but it cost a record.
    FlowTableFull = 3,
    /// Counting path: a socket entering CLOSE_WAIT found `CLOSE_WAITS` full, so it (and
    /// every later transition of it) went to the ring buffer as records instead.
    CloseWaitTableFull = 4,
}

/// Number of slots in the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = 5;

/// What the kernel remembers about a socket between two of its transitions.
/// Value type of the `SOCKETS` hash map, keyed by [`StateEvent::sock`](crate::StateEvent::sock).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    /// When the socket entered its current state (`bpf_ktime_get_ns()`).
    pub state_since_ns: u64,
    /// When portwatch saw it open, 0 if it did not.
    pub opened_ns: u64,
    pub owner: Owner,
    /// `ENTRY_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<SocketEntry>() == 56);

/// [`SocketEntry::flags`], counting path: userspace follows this socket record by
/// record (a count or a CLOSE_WAIT entry had no room), so every later transition of it
/// goes to the ring buffer too, or userspace's copy would never see it close.
pub const ENTRY_REPORTED: u32 = 1 << 0;
/// [`SocketEntry::flags`]: the socket reached ESTABLISHED, so its CLOSE ends a
/// connection (counted in [`FlowCounts::closed`](crate::FlowCounts::closed) and its lifetime).
pub const ENTRY_ESTABLISHED: u32 = 1 << 1;
/// [`SocketEntry::flags`], counting path: this side closed first (ESTABLISHED or
/// SYN_RECV -> FIN_WAIT1); counted with the socket's CLOSE, in the one flow update the
/// close makes anyway.
pub const ENTRY_CLOSED_FIRST: u32 = 1 << 2;
/// [`SocketEntry::flags`], counting path: the socket left CLOSE_WAIT (-> LAST_ACK);
/// counted with its CLOSE, like [`ENTRY_CLOSED_FIRST`].
pub const ENTRY_CLOSE_WAIT_LEFT: u32 = 1 << 3;

/// Key of the `PEERS` map: the remote end of a passive socket that has not been
/// accepted yet, as accept() reports it to the process, in the socket's network
/// namespace (two namespaces can each have a peer 127.0.0.1:40000).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    /// Laid out like [`StateEvent::daddr`](crate::StateEvent::daddr).
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    /// Network namespace inode, as in [`StateEvent::netns`](crate::StateEvent::netns).
    pub netns: u32,
}

const _: () = assert!(size_of::<PeerKey>() == 24);

/// Key of the `LISTENERS` map: a listening port in one network namespace (pods in
/// different namespaces listen on the same port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    /// Network namespace inode, as in [`StateEvent::netns`](crate::StateEvent::netns).
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<ListenerKey>() == 8);

/// `READER[0]` while the collector waits for the kernel to wake it: every record then
/// wakes it at once. While it is 0 the collector drains the ring on its own timer.
pub const READER_ASLEEP: u32 = 1;
