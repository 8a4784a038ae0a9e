//! The records of the kernel tracepoints portwatch's programs read, defined once: the
//! eBPF programs read them through these structs, and userspace checks each struct's
//! [`Field`] table (derived from the struct with `offset_of!`/`size_of`, so it cannot
//! drift from it) against the running kernel's tracefs `format` file before loading.
//!
//! Only the fields a program reads are in a table; the first 8 bytes (`common_type`,
//! `common_flags`, `common_preempt_count`, `common_pid`) are in every record and are not
//! readable from BPF (the kernel puts a pt_regs pointer there for BPF programs).
//! Integer types are chosen for aligned single loads from the context pointer (the
//! verifier rejects anything else on a tracepoint context), not to match the C types.
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
