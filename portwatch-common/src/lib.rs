//! The wire format between portwatch's eBPF programs and its userspace collector.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every type is
//! `#[repr(C)]`, ordered largest field first, with any padding spelled out and the size
//! checked at compile time. Userspace must decode defensively (length check,
//! `read_unaligned`, `TryFrom` for states); see `portwatch::event`.
#![no_std]

use core::mem::size_of;

/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

/// What a ring-buffer record holds. The first `u32` of every record is its kind, so
/// userspace can tell records apart before it reads the rest. Numbers are part of the
/// wire format: never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`StateEvent`]: one TCP socket changed state.
    State = 1,
}

/// Set in [`StateEvent::flags`] when `in_state_ns` is known, i.e. portwatch saw the
/// socket enter its old state. Without it the socket predates portwatch (or its table
/// entry was lost) and `in_state_ns` is meaningless.
pub const FLAG_IN_STATE_KNOWN: u32 = 1 << 0;

/// One call of the `sock:inet_sock_set_state` tracepoint for a TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEvent {
    /// Always [`EventKind::State`] as `u32`.
    pub kind: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, including no suspend time.
    pub ts_ns: u64,
    /// The socket's identity: the kernel address of its `struct sock`. Stable for the
    /// socket's life (it is removed from portwatch's tables at TCP_CLOSE, so a reused
    /// address starts afresh).
    pub sock: u64,
    /// Time the socket spent in `old_state`, valid when `FLAG_IN_STATE_KNOWN` is set.
    pub in_state_ns: u64,
    /// Thread group id (the userspace PID) of the task current on the CPU. In softirq
    /// context this is whoever was interrupted, not necessarily the socket's owner.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Source address: the first 4 bytes for AF_INET, all 16 for AF_INET6.
    pub saddr: [u8; 16],
    /// Destination address, laid out like `saddr`.
    pub daddr: [u8; 16],
    /// The current task's comm, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// The kernel's `TCP_*` state number before the transition.
    pub old_state: u8,
    /// The kernel's `TCP_*` state number after the transition.
    pub new_state: u8,
}

const _: () = assert!(size_of::<StateEvent>() == 96);

/// Indexes into the per-CPU `COUNTERS` array, where the kernel counts what it could
/// not deliver. Userspace sums them over CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event was lost because the ring buffer was full.
    RingBufFull = 0,
    /// A socket could not be added to the kernel socket table because it was full:
    /// its later events carry no `in_state_ns`.
    SocketTableFull = 1,
}

/// Number of slots in the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = 2;

/// What the kernel remembers about a socket between two of its transitions.
/// Value type of the `SOCKETS` hash map, keyed by [`StateEvent::sock`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    /// When the socket entered its current state (`bpf_ktime_get_ns()`).
    pub state_since_ns: u64,
}

const _: () = assert!(size_of::<SocketEntry>() == 8);

/// Names of the maps and programs in the eBPF object, shared so a rename cannot
/// silently break the loader.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SOCKETS: &str = "SOCKETS";
    pub const PROG_INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
}

/// Kernel `TCP_*` state numbers (include/net/tcp_states.h), stable since Linux 2.x.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

#[cfg(feature = "user")]
mod user {
    use super::{SocketEntry, StateEvent};

    // SAFETY: plain-old-data, `#[repr(C)]`, no padding (size asserted above), every bit
    // pattern valid.
    unsafe impl aya::Pod for StateEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketEntry {}
}
