//! Where the programs find kernel fields, resolved from the running kernel's BTF by
//! userspace and set as load-time globals.
use core::mem::size_of;

/// The first 88 bytes of the kernel's `struct sock_common` (the start of every `struct
/// sock`), as 5.8 through 6.18 lay them out with IPv6 and network namespaces built in.
/// The BTF-typed state program loads the fields it needs at these offsets, through the
/// tracepoint's typed `struct sock *`; userspace checks every field it uses against the
/// running kernel's BTF before choosing that program, and uses the classic tracepoint
/// where they differ.
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
