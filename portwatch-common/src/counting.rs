//! The counting path's maps: counts per owner and destination (`FLOWS`) and the
//! sockets in CLOSE_WAIT now (`CLOSE_WAITS`).
use core::mem::size_of;

use crate::{COMM_LEN, Owner};

/// How the state program hands transitions to userspace, chosen at load time (the
/// `COLLECT` global): the path a mode does not use costs nothing.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collect {
    /// One ring-buffer record per transition (`stream`, `record`).
    Records = 0,
    /// Counts per owner and destination in `FLOWS`, live CLOSE_WAIT sockets in
    /// `CLOSE_WAITS`, and records only for what userspace must see one at a time
    /// (`report`, `serve`, `top`).
    Counts = 1,
}

/// Buckets of [`FlowCounts::lifetime_log2`]: bucket `i` holds lifetimes in
/// `[2^(i + LIFETIME_MIN_LOG2), 2^(i + 1 + LIFETIME_MIN_LOG2))` ns; the first also holds
/// everything shorter (under 2 us), the last everything longer (over 6.5 days).
pub const LIFETIME_BUCKETS: usize = 40;
/// log2 of the first bucket's lower bound, in ns (1.024 us).
pub const LIFETIME_MIN_LOG2: u32 = 10;

/// The bucket of a lifetime in ns: `floor(log2(ns)) - LIFETIME_MIN_LOG2`, clamped.
/// Written as a branchy binary search, which the eBPF verifier accepts everywhere
/// (no loops, no `ctlz` instruction before BPF v4).
#[inline(always)]
pub const fn lifetime_bucket(ns: u64) -> usize {
    let mut log2 = 0u32;
    let mut value = ns;
    if value >= 1 << 32 {
        value >>= 32;
        log2 += 32;
    }
    if value >= 1 << 16 {
        value >>= 16;
        log2 += 16;
    }
    if value >= 1 << 8 {
        value >>= 8;
        log2 += 8;
    }
    if value >= 1 << 4 {
        value >>= 4;
        log2 += 4;
    }
    if value >= 1 << 2 {
        value >>= 2;
        log2 += 2;
    }
    if value >= 1 << 1 {
        log2 += 1;
    }
    if log2 <= LIFETIME_MIN_LOG2 {
        0
    } else if log2 - LIFETIME_MIN_LOG2 >= LIFETIME_BUCKETS as u32 {
        LIFETIME_BUCKETS - 1
    } else {
        (log2 - LIFETIME_MIN_LOG2) as usize
    }
}

/// Key of the `FLOWS` map: one owner's connections toward one destination (sockets it
/// opened: the remote address and port, with the local address, whose ephemeral ports
/// they use) or at one local address and port (sockets a listener created), in one
/// network namespace. The same grouping as userspace's TIME_WAIT groups.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Local address, laid out like [`StateEvent::saddr`](crate::StateEvent::saddr).
    pub saddr: [u8; 16],
    /// Remote address for an active socket; all zero for a passive one.
    pub daddr: [u8; 16],
    /// Network namespace inode, as in [`StateEvent::netns`](crate::StateEvent::netns).
    pub netns: u32,
    /// The owner's thread group id; 0 when unknown.
    pub tgid: u32,
    /// Local port for a passive socket; 0 for an active one (ephemeral).
    pub sport: u16,
    /// Remote port for an active socket; 0 for a passive one.
    pub dport: u16,
    pub family: u16,
    /// The socket's [`Origin`](crate::Origin) as `u8`.
    pub origin: u8,
    pub _pad: u8,
    /// The CPU that counted: each CPU keeps its own counts of a flow, which only the
    /// program running on that CPU writes, so it adds without atomic instructions and
    /// without the flow's counts bouncing between CPUs' caches (two CPUs adding to one
    /// 400-byte value cost the state program a fifth of its time). Userspace adds the
    /// CPUs' counts up.
    pub cpu: u32,
}

const _: () = assert!(size_of::<FlowKey>() == 52);

/// Value of the `FLOWS` map: monotonic counts since the key was created, each key
/// written by one CPU only (see [`FlowKey::cpu`]). Userspace takes differences.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCounts {
    /// Connections that reached ESTABLISHED.
    pub opened: u64,
    /// Connections that reached CLOSE after ESTABLISHED.
    pub closed: u64,
    /// This side closed first (ESTABLISHED or SYN_RECV -> FIN_WAIT1).
    pub closed_first: u64,
    /// The peer closed first (ESTABLISHED -> CLOSE_WAIT).
    pub peer_closed_first: u64,
    /// CLOSE_WAIT -> LAST_ACK or CLOSE.
    pub close_wait_left: u64,
    /// Sockets that became TIME_WAIT (FIN_WAIT2 or CLOSING -> CLOSE).
    pub time_wait: u64,
    /// Lifetimes (ESTABLISHED to CLOSE, ns) of closed connections whose open was seen:
    /// the count per log2 bucket (see [`lifetime_bucket`]) and the exact sum.
    pub lifetime_sum_ns: u64,
    pub lifetime_log2: [u64; LIFETIME_BUCKETS],
    /// The owner's cgroup and comm when the key was created.
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// When the first socket this key counted opened (`bpf_ktime_get_ns()`; the key's
    /// creation if that is unknown): a time in its owner's life, which tells which life
    /// of a PID the counts belong to when it exited, and another process got it, in
    /// one interval.
    pub created_ns: u64,
}

const _: () = assert!(size_of::<FlowCounts>() == 8 * 7 + 8 * LIFETIME_BUCKETS + 8 + 16 + 8);

impl FlowCounts {
    pub const ZERO: FlowCounts = FlowCounts {
        opened: 0,
        closed: 0,
        closed_first: 0,
        peer_closed_first: 0,
        close_wait_left: 0,
        time_wait: 0,
        lifetime_sum_ns: 0,
        lifetime_log2: [0; LIFETIME_BUCKETS],
        cgroup_id: 0,
        comm: [0; COMM_LEN],
        created_ns: 0,
    };
}

/// Value of the `CLOSE_WAITS` map, keyed by the socket's `struct sock` address: a
/// socket in CLOSE_WAIT now, as the counting path knows it. Userspace reads the whole
/// map on an interval: sockets that stay are leak candidates, and the map holds few
/// others (a healthy one stays microseconds).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseWaitEntry {
    /// When it entered CLOSE_WAIT (`bpf_ktime_get_ns()`).
    pub since_ns: u64,
    /// When portwatch saw it open, 0 if it did not.
    pub opened_ns: u64,
    /// Laid out like [`StateEvent::saddr`](crate::StateEvent::saddr).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub _pad: u16,
    pub netns: u32,
    pub _pad2: u32,
    pub owner: Owner,
}

const _: () = assert!(size_of::<CloseWaitEntry>() == 96);
