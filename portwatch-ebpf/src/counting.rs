//! The counting path (`COLLECT == Collect::Counts`), for the modes that summarise
//! (`report`, `serve`, `top`): each transition adds to its owner's and destination's
//! counts in `FLOWS`, and a socket in CLOSE_WAIT is kept in `CLOSE_WAITS` for as long
//! as it stays there. Userspace reads both maps on an interval. A healthy short
//! connection sends no record at all.
//!
//! Records still go to the ring buffer for what userspace must see one at a time:
//! listeners, a connect() that found no local port, sockets that did not open under
//! portwatch's eyes (userspace knows them from its startup snapshot), and any
//! transition that could not be counted because a map was full. A socket with one
//! record goes on with records to its CLOSE (`ENTRY_REPORTED`), so userspace's copy of
//! it never goes stale; every transition is counted exactly once, in the kernel or by
//! userspace from its record.
use aya_ebpf::{EbpfContext, bindings::BPF_NOEXIST, helpers::bpf_get_smp_processor_id};
use portwatch_common::{
    CloseWaitEntry, Collect, Counter, ENTRY_CLOSE_WAIT_LEFT, ENTRY_CLOSED_FIRST, ENTRY_ESTABLISHED,
    ENTRY_REPORTED, FlowKey, LIFETIME_BUCKETS, Origin, SocketEntry, lifetime_bucket, tcp_state,
};

use crate::{
    CLOSE_WAITS, Clock, FLOW_SCRATCH, FLOWS, count,
    state::{Change, addr_bytes, established, follow},
};

/// Set at load time; the default (records) serves an object loaded without it.
#[unsafe(no_mangle)]
static COLLECT: u32 = Collect::Records as u32;

#[inline(always)]
pub(crate) fn enabled() -> bool {
    // SAFETY: a plain read of a load-time constant; volatile, so that the compiler does
    // not fold in the default the loader replaces.
    unsafe { core::ptr::read_volatile(&COLLECT) == Collect::Counts as u32 }
}

/// Transitions the counting path needs nothing from, so they cost no read and no
/// lookup:
/// - FIN_WAIT1 -> FIN_WAIT2 counts nothing and changes no owner. (A socket userspace
///   follows record by record then shows FIN_WAIT1 until its CLOSE, whose record says
///   it was in FIN_WAIT2.)
/// - LISTEN -> SYN_RECV: a passive socket's entry is made at SYN_RECV -> ESTABLISHED
///   instead, where it opens and is counted (in the same softirq, microseconds later),
///   with its own addresses (on 5.10 to 6.12 the socket still holds its listener's at
///   LISTEN -> SYN_RECV). One transition of the ten a connection makes.
#[inline(always)]
pub(crate) fn ignores(old_state: u8, new_state: u8) -> bool {
    (old_state == tcp_state::FIN_WAIT1 && new_state == tcp_state::FIN_WAIT2)
        || (old_state == tcp_state::LISTEN && new_state == tcp_state::SYN_RECV)
}

/// Whether a socket seen first at this transition opens here: on the counting path a
/// passive socket's entry is made at SYN_RECV -> ESTABLISHED (see [`ignores`]).
#[inline(always)]
pub(crate) fn opens_passive(old_state: u8, new_state: u8) -> bool {
    enabled() && old_state == tcp_state::SYN_RECV && new_state == tcp_state::ESTABLISHED
}

/// Counts the open of a passive socket whose entry was just made at SYN_RECV ->
/// ESTABLISHED (flagged established). Returns whether it must go to userspace as a
/// record instead (`FLOWS` full), in which case its entry is marked followed.
#[inline(always)]
pub(crate) fn count_passive_open<C: EbpfContext>(
    ctx: &C,
    change: &Change,
    entry: &SocketEntry,
    clock: &Clock,
) -> bool {
    let delta = Delta {
        opened: true,
        ..Delta::default()
    };
    if add(ctx, change, entry, &delta, clock) {
        return false;
    }
    if let Some(entry) = crate::SOCKETS.get_ptr_mut(change.sock) {
        // SAFETY: the map's value, which this socket's transitions alone write (they
        // are serialised by the socket lock).
        follow(unsafe { &mut *entry });
    }
    true
}

/// What one transition adds to its flow's counts.
#[derive(Default)]
struct Delta {
    opened: bool,
    closed: bool,
    closed_first: bool,
    peer_closed_first: bool,
    close_wait_left: bool,
    time_wait: bool,
    /// Lifetime in ns of a closed connection whose open was seen; 0 if none.
    lifetime_ns: u64,
}

impl Delta {
    #[inline(always)]
    fn counts_nothing(&self) -> bool {
        !(self.opened
            || self.closed
            || self.closed_first
            || self.peer_closed_first
            || self.close_wait_left
            || self.time_wait)
            && self.lifetime_ns == 0
    }
}

/// Counts a transition of a socket with an entry. Returns whether it must go to
/// userspace as a record instead.
///
/// Who closed first and leaving CLOSE_WAIT are noted in the entry and counted with the
/// CLOSE, in the flow update it makes anyway. Should that update find `FLOWS` full, the
/// CLOSE goes as a record and those two notes are lost with it (counted as
/// `FlowTableFull`, so the report says its counts may be short).
#[inline(always)]
pub(crate) fn count_change<C: EbpfContext>(
    ctx: &C,
    change: &Change,
    entry: &mut SocketEntry,
    clock: &Clock,
) -> bool {
    if entry.flags & ENTRY_REPORTED != 0 {
        return true;
    }
    use tcp_state::*;
    let mut delta = Delta::default();
    match (change.old_state, change.new_state) {
        (SYN_SENT | SYN_RECV, ESTABLISHED) => {
            entry.flags |= ENTRY_ESTABLISHED;
            delta.opened = true;
        }
        // Counted with the CLOSE (one flow update per socket for its whole close): a
        // flow update costs a hash of its 48-byte key.
        (ESTABLISHED | SYN_RECV, FIN_WAIT1) => {
            entry.flags |= ENTRY_CLOSED_FIRST;
            return false;
        }
        (ESTABLISHED, CLOSE_WAIT) => {
            if !remember_close_wait(ctx, change, entry, clock.now()) {
                follow(entry);
                return true;
            }
            delta.peer_closed_first = true;
        }
        (CLOSE_WAIT, LAST_ACK) => {
            let _ = CLOSE_WAITS.remove(change.sock);
            entry.flags |= ENTRY_CLOSE_WAIT_LEFT;
            return false;
        }
        // connect() found no free local port (EADDRNOTAVAIL): userspace counts it.
        (SYN_SENT, CLOSE) if change.sport == 0 => return true,
        (old, CLOSE) => {
            if old == CLOSE_WAIT {
                let _ = CLOSE_WAITS.remove(change.sock);
                delta.close_wait_left = true;
            }
            delta.closed_first = entry.flags & ENTRY_CLOSED_FIRST != 0;
            delta.close_wait_left |= entry.flags & ENTRY_CLOSE_WAIT_LEFT != 0;
            if established(entry) {
                delta.closed = true;
                if entry.opened_ns != 0 {
                    delta.lifetime_ns = clock.now().saturating_sub(entry.opened_ns);
                }
            }
            delta.time_wait = old == FIN_WAIT2 || old == CLOSING;
            if delta.counts_nothing() {
                // A connect refused or timed out before ESTABLISHED: a flow of zeros
                // would only make userspace show a row of them.
                return false;
            }
        }
        _ => return false,
    }
    if add(ctx, change, entry, &delta, clock) {
        false
    } else {
        follow(entry);
        true
    }
}

/// Adds `delta` to the socket's flow. False if `FLOWS` had no room for a new flow.
///
/// Keys and values go to the map by reference: passed by value, each would be copied
/// onto the 512-byte stack again (the initial value alone is 408 bytes).
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "by value would copy onto the eBPF stack"
)]
fn add<C: EbpfContext>(
    ctx: &C,
    change: &Change,
    entry: &SocketEntry,
    delta: &Delta,
    clock: &Clock,
) -> bool {
    let passive = entry.owner.origin == Origin::Passive as u8;
    let key = FlowKey {
        saddr: addr_bytes(change.saddr),
        daddr: if passive {
            [0; 16]
        } else {
            addr_bytes(change.daddr)
        },
        netns: change.netns,
        tgid: entry.owner.tgid,
        sport: if passive { change.sport } else { 0 },
        dport: if passive { 0 } else { change.dport },
        family: change.family,
        origin: entry.owner.origin,
        _pad: 0,
        // SAFETY: no preconditions; aya marks raw helpers unsafe.
        cpu: unsafe { bpf_get_smp_processor_id() },
    };
    let counts = match FLOWS.get_ptr_mut(&key) {
        Some(counts) => counts,
        None => {
            let Some(initial) = FLOW_SCRATCH.get_ptr_mut(0) else {
                return false;
            };
            // SAFETY: a per-CPU slot, so only this program on this CPU writes it, and
            // preemption is disabled while a tracepoint program runs. Every field the
            // kernel copies is written (the counts stay zero from the map's creation:
            // nothing writes them).
            unsafe {
                (*initial).cgroup_id = entry.owner.cgroup_id;
                (*initial).comm = entry.owner.comm;
                // A time in the owner's life, which is what userspace uses it for:
                // this CPU's copy of a flow may be made at a close that runs after
                // its process exited (exit closes the files after
                // sched_process_exit), while the socket opened in that life.
                (*initial).created_ns = if entry.opened_ns != 0 {
                    entry.opened_ns
                } else {
                    clock.now()
                };
            }
            // SAFETY: `initial` is a valid FlowCounts for the insert to copy.
            let inserted = FLOWS.insert(&key, unsafe { &*initial }, u64::from(BPF_NOEXIST));
            if inserted.is_err() {
                // Full (no other CPU creates this CPU's key).
                match FLOWS.get_ptr_mut(&key) {
                    Some(counts) => counts,
                    None => {
                        count(ctx, Counter::FlowTableFull);
                        return false;
                    }
                }
            } else {
                match FLOWS.get_ptr_mut(&key) {
                    Some(counts) => counts,
                    None => return false,
                }
            }
        }
    };
    // SAFETY: `counts` points at the map's value, which outlives this program run (hash
    // map values are freed after an RCU grace period). The key names this CPU, and the
    // kernel runs one instance of a program per CPU at a time (a nested call is skipped
    // and counted as a recursion miss), so nothing else writes these counts meanwhile:
    // plain adds are exact. Userspace reads each 8-byte count whole.
    unsafe {
        if delta.opened {
            (*counts).opened += 1;
        }
        if delta.closed {
            (*counts).closed += 1;
        }
        if delta.closed_first {
            (*counts).closed_first += 1;
        }
        if delta.peer_closed_first {
            (*counts).peer_closed_first += 1;
        }
        if delta.close_wait_left {
            (*counts).close_wait_left += 1;
        }
        if delta.time_wait {
            (*counts).time_wait += 1;
        }
        if delta.lifetime_ns != 0 {
            (*counts).lifetime_sum_ns += delta.lifetime_ns;
            let bucket = lifetime_bucket(delta.lifetime_ns);
            if bucket < LIFETIME_BUCKETS {
                (*counts).lifetime_log2[bucket] += 1;
            }
        }
    }
    true
}

/// Keeps a socket that entered CLOSE_WAIT in `CLOSE_WAITS`. False if it had no room.
#[inline(always)]
fn remember_close_wait<C: EbpfContext>(
    ctx: &C,
    change: &Change,
    entry: &SocketEntry,
    now: u64,
) -> bool {
    let value = CloseWaitEntry {
        since_ns: now,
        opened_ns: entry.opened_ns,
        saddr: addr_bytes(change.saddr),
        daddr: addr_bytes(change.daddr),
        sport: change.sport,
        dport: change.dport,
        family: change.family,
        _pad: 0,
        netns: change.netns,
        _pad2: 0,
        owner: entry.owner,
    };
    if CLOSE_WAITS.insert(change.sock, value, 0).is_err() {
        count(ctx, Counter::CloseWaitTableFull);
        return false;
    }
    true
}
