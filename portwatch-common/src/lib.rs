//! The wire format between portwatch's eBPF programs and its userspace collector.
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every type is
//! `#[repr(C)]`, ordered largest field first, with any padding spelled out and the size
//! checked at compile time. Userspace must decode defensively (length check,
//! `read_unaligned`, `TryFrom` for enums); see `portwatch::event`.
#![no_std]

/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;

mod counting;
mod kernel_layout;
mod records;
mod tables;
pub mod tcp_state;
pub mod tracepoint;

pub use counting::*;
pub use kernel_layout::*;
pub use records::*;
pub use tables::*;

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
