//! The ring-buffer records: one per transition (or owner hand-off, process exit,
//! failed connect), each starting with its [`EventKind`].
use core::mem::size_of;

use crate::COMM_LEN;

/// The version of the ring-buffer records' layout as a whole: recordings carry it, so a
/// replay never misreads records of another layout as this one's. Bump it whenever any
/// record type below changes size or meaning; the sizes are asserted beside each type.
///
/// 2: [`StateEvent`] carries `netns`.
pub const RECORD_LAYOUT_VERSION: u32 = 2;

/// What a ring-buffer record holds. The first `u32` of every record is its kind, so
/// userspace can tell records apart before it reads the rest. Numbers are part of the
/// wire format: never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`StateEvent`]: one TCP socket changed state.
    State = 1,
    /// An [`OwnerEvent`]: a process accepted a socket, so it is the socket's owner now.
    Owner = 2,
    /// An [`ExitEvent`]: a process exited.
    Exit = 3,
    /// A [`ConnectFailedEvent`]: connect() failed with EADDRNOTAVAIL.
    ConnectFailed = 4,
}

/// [`StateEvent::flags`]: `in_state_ns` is known, i.e. portwatch saw the socket enter
/// its old state. Without it the socket predates portwatch (or its table entry was
/// lost) and `in_state_ns` is meaningless.
pub const FLAG_IN_STATE_KNOWN: u32 = 1 << 0;
/// [`StateEvent::flags`]: only a system call on the socket makes this transition
/// (connect, listen, close, shutdown), so `tgid`/`comm` are a process holding it.
/// Without it the transition may have run in softirq context, on whatever task was
/// interrupted.
pub const FLAG_BY_SYSCALL: u32 = 1 << 1;

/// How portwatch learned a socket's owner. Numbers are part of the wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSource {
    /// Not learned yet.
    Unknown = 0,
    /// The process called connect() (CLOSE -> SYN_SENT ran in its context).
    Connect = 1,
    /// The process called listen() (CLOSE -> LISTEN).
    Listen = 2,
    /// The process accept()ed the socket.
    Accept = 3,
    /// Another transition ran in the process's own system call (close, shutdown, ...).
    Syscall = 4,
    /// Provisional: inherited from the owner of the listening socket that created this
    /// one, until a process accepts it.
    Listener = 5,
    /// Userspace found the process holding the socket's file descriptor in /proc.
    Procfs = 6,
}

/// How a socket came to be. Numbers are part of the wire format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// portwatch did not see the socket open.
    Unknown = 0,
    /// Opened by connect().
    Active = 1,
    /// Created by a listening socket for an incoming connection.
    Passive = 2,
    /// A listening socket.
    Listener = 3,
}

/// The process a socket belongs to, as the kernel learned it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `bpf_get_current_cgroup_id()` of the owner when it was learned (cgroup v2 id).
    pub cgroup_id: u64,
    /// Thread group id (userspace PID); 0 when unknown.
    pub tgid: u32,
    /// An [`OwnerSource`] as `u8`.
    pub source: u8,
    /// The socket's [`Origin`] as `u8`.
    pub origin: u8,
    pub _pad: u16,
    /// The owner's comm, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<Owner>() == 32);

impl Owner {
    pub const UNKNOWN: Owner = Owner {
        cgroup_id: 0,
        tgid: 0,
        source: OwnerSource::Unknown as u8,
        origin: Origin::Unknown as u8,
        _pad: 0,
        comm: [0; COMM_LEN],
    };
}

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
    /// When portwatch saw the socket open (`bpf_ktime_get_ns()`), 0 if it did not.
    pub opened_ns: u64,
    /// Thread group id (the userspace PID) of the task current on the CPU. Without
    /// `FLAG_BY_SYSCALL` this may be whoever was interrupted; see `owner` instead.
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
    /// The socket's network namespace: `sk->__sk_common.skc_net.net->ns.inum`, the inode
    /// number `ls -l /proc/PID/ns/net` shows. 0 when the loader could not find the
    /// fields' offsets in the kernel's BTF (see [`NetnsOffsets`](crate::NetnsOffsets)).
    pub netns: u32,
    pub _pad: u32,
    /// The socket's owner as known after this transition.
    pub owner: Owner,
}

const _: () = assert!(size_of::<StateEvent>() == 144);

/// A process accepted `sock`: it owns it from now on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerEvent {
    /// Always [`EventKind::Owner`] as `u32`.
    pub kind: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub sock: u64,
    pub owner: Owner,
}

const _: () = assert!(size_of::<OwnerEvent>() == 56);

/// A process (thread group leader) exited: sockets it owned outlive it as orphans, and
/// its PID may be reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    /// Always [`EventKind::Exit`] as `u32`.
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<ExitEvent>() == 32);

/// connect() returned -EADDRNOTAVAIL: no free local port for the destination, i.e. port
/// exhaustion that already happened. The destination is in the SYN_SENT -> CLOSE
/// transition with local port 0 that the same thread's connect() made just before.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailedEvent {
    /// Always [`EventKind::ConnectFailed`] as `u32`.
    pub kind: u32,
    /// The error, positive (99 for EADDRNOTAVAIL).
    pub errno: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<ConnectFailedEvent>() == 40);

/// `EADDRNOTAVAIL` (include/uapi/asm-generic/errno.h).
pub const EADDRNOTAVAIL: u32 = 99;
