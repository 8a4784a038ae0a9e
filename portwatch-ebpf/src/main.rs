//! portwatch's kernel side. Programs on stable tracepoints only (no kprobes, no fentry):
//! - `state`: `sock:inet_sock_set_state` (BTF-typed or classic), the live socket table
//!   that carries each socket's owner, and either one record per TCP transition or,
//!   on the counting path (`counting`), counts per owner and destination;
//! - `accept`: `syscalls:sys_{enter,exit}_accept{,4}`, which names the process that
//!   accepted a socket;
//! - `connect`: `syscalls:sys_exit_connect`, for connect() failing with EADDRNOTAVAIL;
//! - `exit`: `sched:sched_process_exit`, so userspace never blames a reused PID.
#![no_std]
#![no_main]

mod accept;
mod connect;
mod counting;
mod exit;
mod state;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use aya_log_ebpf::{debug, warn};
use portwatch_common::{
    COMM_LEN, COUNTER_SLOTS, CloseWaitEntry, Counter, FlowCounts, FlowKey, ListenerKey,
    NetnsOffsets, Owner, PeerKey, READER_ASLEEP, SockLayout, SocketEntry,
};

/// Ring buffer to userspace. Its size is set at load time (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Bytes waiting in `EVENTS` from which a record wakes the collector while it drains on
/// its own timer; below it records are submitted without a wakeup. Set at load time
/// (`EbpfLoader::override_global`, see the loader); the default here only serves an
/// object loaded without it.
///
/// Why: the kernel's default (adaptive) wakeup wakes the reader whenever it has caught
/// up, which under churn is nearly every record, and each wakeup is an irq_work
/// self-interrupt (a VM exit in a virtual machine) charged to the traced task: most of
/// this program's cost in a VM. A reader that drains on a timer needs none of them.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;

/// Where the network namespace's inode number is, from the kernel's BTF. Set at load
/// time (see the loader's `netns` module); the default (disabled) makes every `netns` 0.
#[unsafe(no_mangle)]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets {
    enabled: 0,
    sock_net: 0,
    net_inum: 0,
    task_nsproxy: 0,
    nsproxy_net: 0,
    _pad: 0,
};

/// Where the BTF-typed state program finds `sk_protocol`. Set at load time when that
/// program is the one attached.
#[unsafe(no_mangle)]
static SOCK_LAYOUT: SockLayout = SockLayout {
    protocol: 0,
    inet_sport: 0,
};

#[inline(always)]
fn sock_layout() -> SockLayout {
    // SAFETY: as in `netns_offsets`.
    unsafe { core::ptr::read_volatile(&SOCK_LAYOUT) }
}

#[inline(always)]
fn netns_offsets() -> NetnsOffsets {
    // SAFETY: a plain read of a load-time constant; volatile, so that the compiler does
    // not fold in the default the loader replaces.
    unsafe { core::ptr::read_volatile(&NETNS_OFFSETS) }
}

/// Reads a kernel pointer-sized or smaller value, 0 if the read fails. Starts from a
/// written zero, so older verifiers never see a read of uninitialised stack.
#[inline(always)]
fn read_kernel_u64(address: u64) -> u64 {
    let mut value: u64 = 0;
    // SAFETY: bpf_probe_read_kernel checks the kernel address and fails cleanly
    // (zeroing the destination); `value` is 8 writable bytes.
    let failed = unsafe {
        bpf_probe_read_kernel(
            (&mut value as *mut u64).cast(),
            8,
            address as *const core::ffi::c_void,
        )
    };
    if failed != 0 { 0 } else { value }
}

#[inline(always)]
fn read_kernel_u32(address: u64) -> u32 {
    let mut value: u32 = 0;
    // SAFETY: as in `read_kernel_u64`, with 4 writable bytes.
    let failed = unsafe {
        bpf_probe_read_kernel(
            (&mut value as *mut u32).cast(),
            4,
            address as *const core::ffi::c_void,
        )
    };
    if failed != 0 { 0 } else { value }
}

#[inline(always)]
fn read_kernel_u16(address: u64) -> u16 {
    let mut value: u16 = 0;
    // SAFETY: as in `read_kernel_u64`, with 2 writable bytes.
    let failed = unsafe {
        bpf_probe_read_kernel(
            (&mut value as *mut u16).cast(),
            2,
            address as *const core::ffi::c_void,
        )
    };
    if failed != 0 { 0 } else { value }
}

/// The network namespace inode of the socket at `sock` (`sk->__sk_common.skc_net.net->
/// ns.inum`); 0 when unknown.
#[inline(always)]
fn sock_netns(sock: u64) -> u32 {
    let offsets = netns_offsets();
    if offsets.enabled == 0 || sock == 0 {
        return 0;
    }
    netns_of(read_kernel_u64(sock + u64::from(offsets.sock_net)))
}

/// The inode of the `struct net` at `net` (`net->ns.inum`); 0 when unknown.
#[inline(always)]
fn netns_of(net: u64) -> u32 {
    let offsets = netns_offsets();
    if offsets.enabled == 0 || net == 0 {
        return 0;
    }
    read_kernel_u32(net + u64::from(offsets.net_inum))
}

/// The current task's network namespace inode (`current->nsproxy->net_ns->ns.inum`);
/// 0 when unknown (or the task is exiting and has no nsproxy).
#[inline(always)]
fn current_netns() -> u32 {
    let offsets = netns_offsets();
    if offsets.enabled == 0 {
        return 0;
    }
    // SAFETY: no preconditions; aya marks raw helpers unsafe.
    let task = unsafe { bpf_get_current_task() };
    if task == 0 {
        return 0;
    }
    let nsproxy = read_kernel_u64(task + u64::from(offsets.task_nsproxy));
    if nsproxy == 0 {
        return 0;
    }
    let net = read_kernel_u64(nsproxy + u64::from(offsets.nsproxy_net));
    if net == 0 {
        return 0;
    }
    read_kernel_u32(net + u64::from(offsets.net_inum))
}

/// Whether the collector is asleep ([`READER_ASLEEP`]): it drains on a timer only while
/// records keep coming, and once a drain finds the ring empty it sets this and waits
/// for the kernel to wake it, so an idle host costs it no wakeups at all.
#[map]
static READER: Array<u32> = Array::with_max_entries(1, 0);

/// The flags for submitting a record: a wakeup when the collector is asleep or has
/// fallen behind by `WAKEUP_BYTES`, none while it drains on its timer.
#[inline(always)]
fn submit_flags() -> u64 {
    if READER.get(0).is_some_and(|state| *state == READER_ASLEEP) {
        return u64::from(BPF_RB_FORCE_WAKEUP);
    }
    // SAFETY: a plain read of a load-time constant; volatile, so that the compiler does
    // not fold in the default the loader replaces.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Per-CPU loss counters, indexed by [`Counter`].
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Live TCP sockets seen by portwatch, keyed by `struct sock` address. A plain hash, not
/// LRU: an LRU would evict exactly the long-idle sockets (leaked CLOSE_WAITs) portwatch
/// exists to find. A full table is counted instead. Size set at load time.
#[map]
static SOCKETS: HashMap<u64, SocketEntry> = HashMap::with_max_entries(65536, 0);

/// Owners of listening sockets by network namespace and local port, so an incoming
/// connection's socket can start with its listener's owner. Userspace seeds it with
/// listeners that predate portwatch, in every namespace.
#[map]
static LISTENERS: HashMap<ListenerKey, Owner> = HashMap::with_max_entries(8192, 0);

/// Passive sockets not yet accepted, by their remote end and namespace: accept() reports the remote
/// end to the process, which is how the accept hook finds the socket. Size set at load.
#[map]
static PEERS: HashMap<PeerKey, u64> = HashMap::with_max_entries(65536, 0);

/// Counting path: counts per owner and destination (see `counting`). A plain hash, not
/// LRU, so no count is ever evicted: a full map sends what it cannot count as records.
/// Size set at load time.
#[map]
static FLOWS: HashMap<FlowKey, FlowCounts> = HashMap::with_max_entries(16384, 0);

/// One zeroed [`FlowCounts`] per CPU to create a flow from: 400 bytes do not fit the
/// eBPF stack beside everything else.
#[map]
static FLOW_SCRATCH: PerCpuArray<FlowCounts> = PerCpuArray::with_max_entries(1, 0);

/// Counting path: sockets in CLOSE_WAIT now, by `struct sock` address. Size set at
/// load time.
#[map]
static CLOSE_WAITS: HashMap<u64, CloseWaitEntry> = HashMap::with_max_entries(65536, 0);

/// Threads inside accept(), with the user buffer that will receive the peer address.
#[map]
static ACCEPTS: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// The time of the transition being handled, read from the clock on first use only.
///
/// The clock is not free: in a VM, `bpf_ktime_get_ns` reads the paravirtual clock, which
/// a perf profile put at a tenth of the state program's cost when read on every
/// transition. The counting path needs the time on about half of them (opens, closes,
/// CLOSE_WAIT, a new flow).
pub(crate) struct Clock {
    ns: core::cell::Cell<u64>,
}

impl Clock {
    #[inline(always)]
    pub(crate) fn new() -> Clock {
        Clock {
            ns: core::cell::Cell::new(0),
        }
    }

    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        if self.ns.get() == 0 {
            // SAFETY: bpf_ktime_get_ns has no preconditions; aya marks all raw helpers
            // unsafe.
            self.ns
                .set(unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() });
        }
        self.ns.get()
    }
}

/// The current task as a socket owner.
#[inline(always)]
fn current_owner(source: portwatch_common::OwnerSource, origin: u8) -> Owner {
    // The name goes through 8-byte words: zeroing or copying a byte array compiles to a
    // call of a byte-by-byte memset/memcpy loop (36 iterations per owner, measured as
    // a tenth of the state program's time at every connect), 8-byte-aligned words to two
    // stores each.
    let mut comm = [0u64; 2];
    zero_words(&mut comm);
    // SAFETY: `comm` is COMM_LEN writable bytes.
    let failed = unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    if failed != 0 {
        zero_words(&mut comm);
    }
    Owner {
        // SAFETY: no preconditions; aya marks raw helpers unsafe.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        source: source as u8,
        origin,
        _pad: 0,
        // SAFETY: two u64 are COMM_LEN bytes, and any bytes are a valid [u8; COMM_LEN].
        comm: unsafe { core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>(comm) },
    }
}

/// Zeroes `words` with one store each. Written as volatile stores, because LLVM merges
/// plain ones into a memset, which the BPF target compiles to a byte-by-byte loop.
#[inline(always)]
pub(crate) fn zero_words<const N: usize>(words: &mut [u64; N]) {
    for word in words.iter_mut() {
        // SAFETY: `word` is a valid, aligned, writable u64.
        unsafe { core::ptr::write_volatile(word, 0) };
    }
}

/// Writes the current task's name into `comm`, or zeroes it if the helper fails, so no
/// stale bytes ever reach userspace.
#[inline(always)]
fn current_comm(comm: &mut [u8; COMM_LEN]) {
    // SAFETY: `comm` is a writable COMM_LEN-byte buffer.
    let failed = unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    if failed != 0 {
        *comm = [0; COMM_LEN];
    }
}

/// Counts a loss, and says so in the eBPF log (`--ebpf-log`). Only called where
/// something was lost, so the log calls add nothing to the path every event takes; and
/// with the log off (the default) the loader sets `AYA_LOG_LEVEL` to 0 in the frozen
/// .rodata, so the verifier sees each log branch as dead and removes it.
///
/// A full ring buffer drops every event while it stays full, so it is logged at debug
/// only: at warn the log would add work exactly when the host is busiest.
#[inline(always)]
fn count<C: EbpfContext>(ctx: &C, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; preemption is disabled
        // while a tracepoint program runs.
        unsafe { *slot += 1 };
    }
    match counter {
        Counter::RingBufFull => {
            debug!(
                ctx,
                "ring buffer full: an event was dropped (see --ring-buffer-size)"
            );
        }
        Counter::SocketTableFull => {
            warn!(
                ctx,
                "socket table full: a socket goes untracked (see --max-sockets)"
            );
        }
        Counter::OwnerTableFull => {
            warn!(
                ctx,
                "listener, accept or peer table full: an owner may be missed"
            );
        }
        Counter::FlowTableFull => {
            debug!(
                ctx,
                "flow table full: a transition goes to the ring buffer instead"
            );
        }
        Counter::CloseWaitTableFull => {
            warn!(
                ctx,
                "CLOSE_WAIT table full: a socket goes to the ring buffer instead"
            );
        }
    }
}

/// Reads one field of a tracepoint record with a single load from the context pointer:
/// the verifier rejects reads through a context pointer that was moved, which is what
/// copying a byte array out of it compiles to.
macro_rules! field {
    ($args:ident . $($field:tt)+) => {
        // SAFETY: `$args` points at the tracepoint record that its struct in
        // `portwatch_common::tracepoint` describes (userspace checks the struct's
        // `FIELDS` against tracefs before loading); the field is naturally aligned and
        // inside the record.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$args).$($field)+)) }
    };
}
pub(crate) use field;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
