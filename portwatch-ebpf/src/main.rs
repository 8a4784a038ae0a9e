//! portwatch's kernel side: one program on the `sock:inet_sock_set_state` tracepoint
//! that turns every TCP state transition into a [`StateEvent`] in a ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_comm},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use portwatch_common::{
    AF_INET6, COMM_LEN, COUNTER_SLOTS, Counter, EventKind, FLAG_IN_STATE_KNOWN, IPPROTO_TCP,
    SocketEntry, StateEvent, tcp_state,
};

/// Ring buffer to userspace. Its size is set at load time (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU loss counters, indexed by [`Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Live TCP sockets seen by portwatch, keyed by `struct sock` address. A plain hash, not
/// LRU: an LRU would evict exactly the long-idle sockets (leaked CLOSE_WAITs) portwatch
/// exists to find. A full table is counted instead. Size set at load time.
#[map]
static SOCKETS: HashMap<u64, SocketEntry> = HashMap::with_max_entries(65536, 0);

/// The record of `sock:inet_sock_set_state`, as its format file in tracefs describes it
/// (include/trace/events/sock.h): stable since Linux 4.16, which added `protocol`.
/// Userspace checks these offsets against the running kernel's format file before
/// loading this program. Addresses are declared as integers so that each is read with
/// one aligned load at a constant offset: the verifier rejects reads through a ctx
/// pointer that was moved (what a byte-array copy compiles to).
#[repr(C)]
struct InetSockSetStateArgs {
    _common: u64,
    skaddr: u64,
    oldstate: i32,
    newstate: i32,
    sport: u16,
    dport: u16,
    family: u16,
    protocol: u16,
    saddr: u32,
    daddr: u32,
    saddr_v6: [u64; 2],
    daddr_v6: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<InetSockSetStateArgs>() == 72);

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_inet_sock_set_state(&ctx);
    0
}

/// Reads one field of the tracepoint record with a single load from the context pointer.
macro_rules! field {
    ($args:ident . $($field:tt)+) => {
        // SAFETY: `$args` points at the tracepoint record (see `InetSockSetStateArgs`);
        // the field is naturally aligned and inside the record.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$args).$($field)+)) }
    };
}

fn try_inet_sock_set_state(ctx: &TracePointContext) {
    let args = ctx.as_ptr().cast::<InetSockSetStateArgs>().cast_const();
    if field!(args.protocol) != IPPROTO_TCP {
        return;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions; aya marks all raw helpers unsafe.
    let now = unsafe { bpf_ktime_get_ns() };
    let sock = field!(args.skaddr);
    let new_state = field!(args.newstate) as u8;
    let in_state_ns = track_socket(sock, new_state, now);

    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        count(Counter::RingBufFull);
        return;
    };
    let family = field!(args.family);
    let (saddr, daddr) = if family == AF_INET6 {
        (
            [field!(args.saddr_v6[0]), field!(args.saddr_v6[1])],
            [field!(args.daddr_v6[0]), field!(args.daddr_v6[1])],
        )
    } else {
        // AF_INET: the address's 4 bytes, in network order, first.
        (
            [field!(args.saddr) as u64, 0],
            [field!(args.daddr) as u64, 0],
        )
    };
    let (sport, dport) = (field!(args.sport), field!(args.dport));
    let old_state = field!(args.oldstate) as u8;
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, 8-byte aligned ring-buffer record of
    // size_of::<StateEvent>() bytes that only this program writes until submit. Every
    // field is written, so no stale bytes reach userspace. The address fields sit at
    // 8-byte aligned offsets (40 and 56), so they can be stored as two u64 each.
    unsafe {
        (*event).kind = EventKind::State as u32;
        (*event).flags = if in_state_ns.is_some() {
            FLAG_IN_STATE_KNOWN
        } else {
            0
        };
        (*event).ts_ns = now;
        (*event).sock = sock;
        (*event).in_state_ns = in_state_ns.unwrap_or(0);
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        *(*event).saddr.as_mut_ptr().cast::<[u64; 2]>() = saddr;
        *(*event).daddr.as_mut_ptr().cast::<[u64; 2]>() = daddr;
        let comm = (*event).comm.as_mut_ptr().cast();
        if bpf_get_current_comm(comm, COMM_LEN as u32) != 0 {
            (*event).comm = [0; COMM_LEN];
        }
        (*event).sport = sport;
        (*event).dport = dport;
        (*event).family = family;
        (*event).old_state = old_state;
        (*event).new_state = new_state;
    }
    entry.submit(0);
}

/// Records that `sock` entered `new_state` at `now` and returns how long it spent in
/// the state it left, if portwatch saw it enter that state.
#[inline(always)]
fn track_socket(sock: u64, new_state: u8, now: u64) -> Option<u64> {
    let entry = SOCKETS.get_ptr_mut(sock);
    let in_state_ns = entry.map(|entry| {
        // SAFETY: the map returned a valid pointer to this CPU's view of the value;
        // a concurrent update of the same socket can only make `since` slightly stale.
        let since = unsafe { (*entry).state_since_ns };
        now.saturating_sub(since)
    });
    if new_state == tcp_state::CLOSE {
        // The socket is done (or became a time-wait mini-socket, which this tracepoint
        // never reports): forget it so a reused address starts afresh.
        let _ = SOCKETS.remove(sock);
    } else if let Some(entry) = entry {
        // SAFETY: as above; a single aligned u64 store.
        unsafe { (*entry).state_since_ns = now };
    } else if SOCKETS
        .insert(
            sock,
            SocketEntry {
                state_since_ns: now,
            },
            0,
        )
        .is_err()
    {
        count(Counter::SocketTableFull);
    }
    in_state_ns
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; preemption is disabled
        // while a tracepoint program runs.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
