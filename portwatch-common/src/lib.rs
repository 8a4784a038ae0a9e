//! The wire format between portwatch's eBPF programs and its userspace collector.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every type is
//! `#[repr(C)]`, ordered largest field first, with any padding spelled out and the size
//! checked at compile time. Userspace must decode defensively (length check,
//! `read_unaligned`, `TryFrom` for enums); see `portwatch::event`.
#![no_std]

use core::mem::size_of;

/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

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
    /// fields' offsets in the kernel's BTF (see [`NetnsOffsets`]).
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
/// Value type of the `SOCKETS` hash map, keyed by [`StateEvent::sock`].
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
/// connection (counted in [`FlowCounts::closed`] and its lifetime).
pub const ENTRY_ESTABLISHED: u32 = 1 << 1;
/// [`SocketEntry::flags`], counting path: this side closed first (ESTABLISHED or
/// SYN_RECV -> FIN_WAIT1); counted with the socket's CLOSE, in the one flow update the
/// close makes anyway.
pub const ENTRY_CLOSED_FIRST: u32 = 1 << 2;
/// [`SocketEntry::flags`], counting path: the socket left CLOSE_WAIT (-> LAST_ACK);
/// counted with its CLOSE, like [`ENTRY_CLOSED_FIRST`].
pub const ENTRY_CLOSE_WAIT_LEFT: u32 = 1 << 3;

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
    /// Local address, laid out like [`StateEvent::saddr`].
    pub saddr: [u8; 16],
    /// Remote address for an active socket; all zero for a passive one.
    pub daddr: [u8; 16],
    /// Network namespace inode, as in [`StateEvent::netns`].
    pub netns: u32,
    /// The owner's thread group id; 0 when unknown.
    pub tgid: u32,
    /// Local port for a passive socket; 0 for an active one (ephemeral).
    pub sport: u16,
    /// Remote port for an active socket; 0 for a passive one.
    pub dport: u16,
    pub family: u16,
    /// The socket's [`Origin`] as `u8`.
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
    /// Laid out like [`StateEvent::saddr`].
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

/// The first 88 bytes of the kernel's `struct sock_common` (the start of every `struct
/// sock`), as 5.8 through 6.18 lay them out with IPv6 and network namespaces built in.
/// The BTF-typed state program copies them in one read; userspace checks every field
/// it uses against the running kernel's BTF before choosing that program, and uses the
/// classic tracepoint where they differ.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockCommonHead {
    /// `skc_daddr`, network order.
    pub daddr: u32,
    /// `skc_rcv_saddr`, network order.
    pub rcv_saddr: u32,
    pub hash: u32,
    /// `skc_dport`, network order.
    pub dport: u16,
    /// `skc_num`: the local port, host order.
    pub num: u16,
    /// `skc_family`.
    pub family: u16,
    pub state: u8,
    pub bits: u8,
    pub bound_dev_if: i32,
    pub bind_node: [u64; 2],
    pub prot: u64,
    /// `skc_net.net`: the `struct net *`.
    pub net: u64,
    /// `skc_v6_daddr`, network order.
    pub v6_daddr: [u64; 2],
    /// `skc_v6_rcv_saddr`, network order.
    pub v6_rcv_saddr: [u64; 2],
}

const _: () = assert!(size_of::<SockCommonHead>() == 88);

impl SockCommonHead {
    /// The fields the program reads, as `(BTF member path in struct sock, offset here,
    /// size)`, for userspace's check against the kernel's BTF.
    pub const FIELDS: [(&'static str, usize, usize); 8] = [
        (
            "__sk_common.skc_daddr",
            core::mem::offset_of!(SockCommonHead, daddr),
            4,
        ),
        (
            "__sk_common.skc_rcv_saddr",
            core::mem::offset_of!(SockCommonHead, rcv_saddr),
            4,
        ),
        (
            "__sk_common.skc_dport",
            core::mem::offset_of!(SockCommonHead, dport),
            2,
        ),
        (
            "__sk_common.skc_num",
            core::mem::offset_of!(SockCommonHead, num),
            2,
        ),
        (
            "__sk_common.skc_family",
            core::mem::offset_of!(SockCommonHead, family),
            2,
        ),
        (
            "__sk_common.skc_net",
            core::mem::offset_of!(SockCommonHead, net),
            8,
        ),
        (
            "__sk_common.skc_v6_daddr",
            core::mem::offset_of!(SockCommonHead, v6_daddr),
            16,
        ),
        (
            "__sk_common.skc_v6_rcv_saddr",
            core::mem::offset_of!(SockCommonHead, v6_rcv_saddr),
            16,
        ),
    ];
}

/// Where the BTF-typed state program finds what the classic tracepoint's record holds
/// but `struct sock_common`'s head does not. Set at load time (`SOCK_LAYOUT` global).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockLayout {
    /// `struct sock` -> `sk_protocol` (a `u16` since Linux 5.6).
    pub protocol: u32,
    /// `struct inet_sock` -> `inet_sport` (network order): the local port the classic
    /// tracepoint reports. `skc_num` says the same except while the kernel unhashes the
    /// socket, as when it swaps it for a time-wait socket: then it is already 0.
    pub inet_sport: u32,
}

const _: () = assert!(size_of::<SockLayout>() == 8);

/// Key of the `PEERS` map: the remote end of a passive socket that has not been
/// accepted yet, as accept() reports it to the process, in the socket's network
/// namespace (two namespaces can each have a peer 127.0.0.1:40000).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKey {
    /// Laid out like [`StateEvent::daddr`].
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    /// Network namespace inode, as in [`StateEvent::netns`].
    pub netns: u32,
}

const _: () = assert!(size_of::<PeerKey>() == 24);

/// Key of the `LISTENERS` map: a listening port in one network namespace (pods in
/// different namespaces listen on the same port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    /// Network namespace inode, as in [`StateEvent::netns`].
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<ListenerKey>() == 8);

/// Where the programs find a network namespace's inode number, in bytes, from the
/// running kernel's BTF (aya-ebpf 0.2 has no CO-RE relocations, so userspace resolves
/// them at load time and sets the `NETNS_OFFSETS` global). `enabled == 0` when they could
/// not be found: every `netns` is then 0 (one namespace as far as portwatch can tell).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetnsOffsets {
    /// 1 when the offsets below are valid.
    pub enabled: u32,
    /// `struct sock` -> `__sk_common.skc_net.net` (a `struct net *`).
    pub sock_net: u32,
    /// `struct net` -> `ns.inum` (an `unsigned int`).
    pub net_inum: u32,
    /// `struct task_struct` -> `nsproxy` (a `struct nsproxy *`).
    pub task_nsproxy: u32,
    /// `struct nsproxy` -> `net_ns` (a `struct net *`).
    pub nsproxy_net: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<NetnsOffsets>() == 24);

/// `READER[0]` while the collector waits for the kernel to wake it: every record then
/// wakes it at once. While it is 0 the collector drains the ring on its own timer.
pub const READER_ASLEEP: u32 = 1;

/// Names of the maps and programs in the eBPF object, shared so a rename cannot
/// silently break the loader.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SOCKETS: &str = "SOCKETS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const PEERS: &str = "PEERS";
    pub const ACCEPTS: &str = "ACCEPTS";
    pub const READER: &str = "READER";
    /// The load-time global: ring-buffer bytes pending before a record wakes userspace.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// The load-time global: a [`NetnsOffsets`](super::NetnsOffsets).
    pub const NETNS_OFFSETS: &str = "NETNS_OFFSETS";
    /// The load-time global: a [`Collect`](super::Collect) as `u32`.
    pub const COLLECT: &str = "COLLECT";
    /// The load-time global: a [`SockLayout`](super::SockLayout).
    pub const SOCK_LAYOUT: &str = "SOCK_LAYOUT";
    pub const FLOWS: &str = "FLOWS";
    pub const CLOSE_WAITS: &str = "CLOSE_WAITS";
    pub const PROG_INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    /// The same program on the BTF-typed (`tp_btf`) tracepoint.
    pub const PROG_INET_SOCK_SET_STATE_BTF: &str = "inet_sock_set_state_btf";
    pub const PROG_ACCEPT_ENTER: &str = "accept_enter";
    pub const PROG_ACCEPT_EXIT: &str = "accept_exit";
    pub const PROG_PROCESS_EXIT: &str = "process_exit";
    pub const PROG_CONNECT_EXIT: &str = "connect_exit";
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

    /// Transitions that begin a socket's life: connect(), listen(), and a new passive
    /// socket cloned from its listener. Whatever the tables remember about the socket's
    /// address belongs to an earlier socket (its last transitions were missed). Both
    /// the kernel's table and userspace's rely on this.
    #[inline(always)]
    pub const fn starts_life(old_state: u8, new_state: u8) -> bool {
        matches!(
            (old_state, new_state),
            (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (LISTEN, SYN_RECV)
        )
    }
}

/// The records of the kernel tracepoints portwatch's programs read, defined once: the
/// eBPF programs read them through these structs, and userspace checks each struct's
/// [`Field`] table (derived from the struct with `offset_of!`/`size_of`, so it cannot
/// drift from it) against the running kernel's tracefs `format` file before loading.
///
/// Only the fields a program reads are in a table; the first 8 bytes (`common_type`,
/// `common_flags`, `common_preempt_count`, `common_pid`) are in every record and are not
/// readable from BPF (the kernel puts a pt_regs pointer there for BPF programs).
/// Integer types are chosen for aligned single loads from the context pointer (the
/// verifier rejects anything else on a tracepoint context), not to match the C types.
pub mod tracepoint {
    use core::mem::{offset_of, size_of};

    /// A field of a tracepoint record, as tracefs's `format` file describes it:
    /// `field:<type> <name>;\toffset:<offset>;\tsize:<size>;`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Field {
        pub name: &'static str,
        pub offset: usize,
        pub size: usize,
    }

    /// The size of the field `field` selects; a function pointer only so the field's
    /// type is inferred in a constant.
    const fn field_size<R, F>(_field: fn(&R) -> &F) -> usize {
        size_of::<F>()
    }

    /// `[Field; N]` for the named fields of a record, from the struct itself: the Rust
    /// field names are tracefs's.
    macro_rules! fields {
        ($record:ty { $($field:ident),+ $(,)? }) => {
            [$(Field {
                name: stringify!($field),
                offset: offset_of!($record, $field),
                size: field_size(|record: &$record| &record.$field),
            }),+]
        };
    }

    /// `sock:inet_sock_set_state` (include/trace/events/sock.h). Since Linux 4.16,
    /// which renamed `tcp:tcp_set_state` and added `protocol`; the layout below is
    /// what 4.16 through 6.18 have (checked on 5.10, 6.1, 6.12 and 6.18). `saddr` and
    /// `daddr` are `__u8[4]` and the `_v6` ones `__u8[16]` in C: here integers, read
    /// whole, in network byte order.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct InetSockSetState {
        pub common: u64,
        /// `const void *`: the socket's `struct sock` address.
        pub skaddr: u64,
        pub oldstate: i32,
        pub newstate: i32,
        /// Host byte order.
        pub sport: u16,
        /// Host byte order.
        pub dport: u16,
        pub family: u16,
        pub protocol: u16,
        pub saddr: u32,
        pub daddr: u32,
        pub saddr_v6: [u64; 2],
        pub daddr_v6: [u64; 2],
    }

    const _: () = assert!(size_of::<InetSockSetState>() == 72);

    impl InetSockSetState {
        /// Every field the state program reads.
        pub const FIELDS: [Field; 11] = fields!(InetSockSetState {
            skaddr,
            oldstate,
            newstate,
            sport,
            dport,
            family,
            protocol,
            saddr,
            daddr,
            saddr_v6,
            daddr_v6,
        });
    }

    /// `syscalls:sys_enter_accept` and `syscalls:sys_enter_accept4` (same leading
    /// fields; accept4 adds `flags` after them). Syscall tracepoints need
    /// CONFIG_FTRACE_SYSCALLS; their layout (`int __syscall_nr` at 8, then each
    /// argument as an 8-byte slot from 16) dates from Linux 2.6.33 and is unchanged
    /// through 6.18.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct SysEnterAccept {
        pub common: u64,
        /// `__syscall_nr` in tracefs; 4 bytes, then 4 of padding.
        pub syscall_nr: i32,
        pub _pad: u32,
        pub fd: u64,
        /// `struct sockaddr *`: the user buffer accept() writes the peer address to.
        pub upeer_sockaddr: u64,
        pub upeer_addrlen: u64,
    }

    const _: () = assert!(size_of::<SysEnterAccept>() == 40);

    impl SysEnterAccept {
        /// Every field the accept-entry program reads.
        pub const FIELDS: [Field; 1] = fields!(SysEnterAccept { upeer_sockaddr });
    }

    /// `syscalls:sys_exit_*` (here accept, accept4 and connect): the system call's
    /// return value. Layout as for [`SysEnterAccept`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct SysExit {
        pub common: u64,
        /// `__syscall_nr` in tracefs; 4 bytes, then 4 of padding.
        pub syscall_nr: i32,
        pub _pad: u32,
        /// `long`: the return value, a negative errno on failure.
        pub ret: i64,
    }

    const _: () = assert!(size_of::<SysExit>() == 24);

    impl SysExit {
        /// Every field the accept-exit and connect-exit programs read.
        pub const FIELDS: [Field; 1] = fields!(SysExit { ret });
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

#[cfg(feature = "user")]
mod user {
    use super::{
        CloseWaitEntry, FlowCounts, FlowKey, ListenerKey, NetnsOffsets, Owner, PeerKey, SockLayout,
        SocketEntry,
    };

    // SAFETY (all of them): plain-old-data, `#[repr(C)]`, no implicit padding (sizes
    // asserted above), every bit pattern valid.
    // SAFETY: see above.
    unsafe impl aya::Pod for SocketEntry {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Owner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ListenerKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for NetnsOffsets {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SockLayout {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for FlowCounts {}
    // SAFETY: see above.
    unsafe impl aya::Pod for CloseWaitEntry {}
}
