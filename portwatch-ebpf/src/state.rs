//! `sock:inet_sock_set_state`: every TCP transition, with the socket's owner.
//!
//! Two hooks run the same code: the BTF-typed tracepoint (`tp_btf`, which hands the
//! program the kernel's `struct sock *` with little glue), and the classic tracepoint
//! (whose record the kernel fills for the program first), for kernels without BTF or
//! whose `struct sock_common` is laid out differently. Userspace attaches one of them.
//!
//! Who owns a socket is learned only where it is certain, and then carried with the
//! socket in `SOCKETS`:
//! - transitions that only a system call on the socket makes (connect: CLOSE ->
//!   SYN_SENT, listen: CLOSE -> LISTEN, close/shutdown: -> FIN_WAIT1, CLOSE_WAIT ->
//!   LAST_ACK, LISTEN -> CLOSE) run in the context of a process holding the socket, so
//!   the current task owns it;
//! - every other transition (packet receive, timers, resets: SYN_RECV -> ESTABLISHED,
//!   ESTABLISHED -> CLOSE_WAIT, LAST_ACK -> CLOSE, ...) may run in softirq context on
//!   whatever task was interrupted, and never changes the owner. (BPF cannot read the
//!   record's common_flags, which would tell the context: the kernel overwrites the
//!   first 8 bytes of the record with a pt_regs pointer for BPF programs.)
//! - a passive socket starts with its listener's owner (provisional), until the accept
//!   hook sees a process accept it.
//!
//! What happens next depends on `COLLECT` (see `counting`): one record per transition,
//! or counts, with records only for what userspace must see one at a time.
use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use portwatch_common::{
    AF_INET6, Counter, ENTRY_ESTABLISHED, ENTRY_REPORTED, EventKind, FLAG_BY_SYSCALL,
    FLAG_IN_STATE_KNOWN, IPPROTO_TCP, ListenerKey, Origin, Owner, OwnerSource, PeerKey,
    SockCommonHead, SocketEntry, StateEvent, tcp_state, tracepoint::InetSockSetState,
};

use crate::{
    Clock, EVENTS, LISTENERS, PEERS, SOCKETS, count, counting, current_owner, field, netns_offsets,
    read_kernel_u16, sock_layout, sock_netns,
};

/// One transition, from either hook.
pub(crate) struct Change {
    pub sock: u64,
    pub old_state: u8,
    pub new_state: u8,
    /// Local port, host order.
    pub sport: u16,
    /// Remote port, host order.
    pub dport: u16,
    pub family: u16,
    /// Addresses as two native words each: an IPv4 address's 4 network-order bytes
    /// first, the rest zero.
    pub saddr: [u64; 2],
    pub daddr: [u64; 2],
    pub netns: u32,
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // The record's layout is checked by userspace against tracefs before loading.
    let args = ctx.as_ptr().cast::<InetSockSetState>().cast_const();
    if field!(args.protocol) != IPPROTO_TCP {
        return 0;
    }
    let (old_state, new_state) = (field!(args.oldstate) as u8, field!(args.newstate) as u8);
    // Before the namespace's two kernel reads: the states alone say it needs nothing.
    if counting::enabled() && counting::ignores(old_state, new_state) {
        return 0;
    }
    let sock = field!(args.skaddr);
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
    let change = Change {
        sock,
        old_state,
        new_state,
        sport: field!(args.sport),
        dport: field!(args.dport),
        family,
        saddr,
        daddr,
        // Two kernel reads per event rather than a copy in SOCKETS: the namespace is
        // needed before the socket's entry is found (a new passive socket's listener)
        // and for sockets the table has no room for.
        netns: sock_netns(sock),
    };
    on_change(&ctx, &change);
    0
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let sock: u64 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    // Before any read of the socket: the arguments alone say it needs nothing.
    if counting::enabled() && counting::ignores(old_state as u8, new_state as u8) {
        return 0;
    }
    if sock == 0 || btf_load::<u16>(sock, sock_layout().protocol as usize) != IPPROTO_TCP {
        return 0;
    }
    // Plain loads through the BTF-typed pointer, which the verifier checks against the
    // kernel's `struct sock` and turns into fault-handling loads: a few ns each, where
    // one bpf_probe_read_kernel costs tens (a helper call, then copy_from_kernel_nofault
    // in a VM, the largest share of this program's time in a perf profile).
    let family = btf_load::<u16>(sock, offset_of!(SockCommonHead, family));
    let (saddr, daddr) = if family == AF_INET6 {
        let saddr = offset_of!(SockCommonHead, v6_rcv_saddr);
        let daddr = offset_of!(SockCommonHead, v6_daddr);
        (
            [btf_load(sock, saddr), btf_load(sock, saddr + 8)],
            [btf_load(sock, daddr), btf_load(sock, daddr + 8)],
        )
    } else {
        (
            [
                u64::from(btf_load::<u32>(sock, offset_of!(SockCommonHead, rcv_saddr))),
                0,
            ],
            [
                u64::from(btf_load::<u32>(sock, offset_of!(SockCommonHead, daddr))),
                0,
            ],
        )
    };
    // What the classic tracepoint reports: `inet_sport`, which `skc_num` equals but
    // while the socket is being unhashed (then one more read: `inet_sport` lies past
    // `struct sock`, where the verifier allows no plain load).
    let num = btf_load::<u16>(sock, offset_of!(SockCommonHead, num));
    let sport = if num != 0 {
        num
    } else {
        u16::from_be(read_kernel_u16(sock + u64::from(sock_layout().inet_sport)))
    };
    let netns = if netns_offsets().enabled == 0 {
        0
    } else {
        let net = btf_load::<u64>(sock, offset_of!(SockCommonHead, net));
        if net == 0 {
            0
        } else {
            btf_load::<u32>(net, netns_offsets().net_inum as usize)
        }
    };
    let change = Change {
        sock,
        old_state: old_state as u8,
        new_state: new_state as u8,
        sport,
        dport: u16::from_be(btf_load(sock, offset_of!(SockCommonHead, dport))),
        family,
        saddr,
        daddr,
        netns,
    };
    on_change(&ctx, &change);
    0
}

/// A plain load of a `T` at `offset` bytes into the kernel object at `base`, a pointer
/// the verifier knows the BTF type of (the BTF-typed tracepoint's `struct sock *`, or a
/// pointer loaded from one). The verifier rejects the program unless `offset` is a
/// constant it can see (a literal, or a frozen load-time global) and a `T` there lies
/// within one field of that type; a faulting load yields 0. Userspace checked every
/// offset used against the kernel's BTF before loading.
#[inline(always)]
fn btf_load<T>(base: u64, offset: usize) -> T {
    // SAFETY: see above: the verifier rewrites this load into one that cannot fault
    // the kernel, after checking it against the type; `T` is a plain integer.
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const T) }
}

#[inline(always)]
fn on_change<C: EbpfContext>(ctx: &C, change: &Change) {
    let clock = Clock::new();
    // Both programs have returned already for a transition the counting path ignores.
    let (old_state, new_state) = (change.old_state, change.new_state);
    let listener = ListenerKey {
        netns: change.netns,
        port: change.sport,
        _pad: 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let by_syscall = made_by_syscall(old_state, new_state);
    // The process acting on the socket in a system call; 0 if none.
    let actor_tgid = if by_syscall {
        (pid_tgid >> 32) as u32
    } else {
        0
    };

    let tracked = track(ctx, change, &listener, &clock, actor_tgid);
    if new_state == tcp_state::LISTEN {
        remember_listener(ctx, &listener, &tracked.owner);
    } else if old_state == tcp_state::LISTEN && new_state == tcp_state::CLOSE {
        let _ = LISTENERS.remove(listener);
    }
    if !counting::enabled() {
        // Only the accept hook (attached with records) reads PEERS.
        remember_peer(ctx, change, &tracked.owner);
    } else if !tracked.report {
        return;
    }

    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        count(ctx, Counter::RingBufFull);
        return;
    };
    let event = entry.as_mut_ptr();
    let mut flags = 0;
    if tracked.in_state_known {
        flags |= FLAG_IN_STATE_KNOWN;
    }
    if by_syscall {
        flags |= FLAG_BY_SYSCALL;
    }
    // SAFETY: `event` points at a reserved, 8-byte aligned ring-buffer record of
    // size_of::<StateEvent>() bytes that only this program writes until submit. Every
    // field is written, so no stale bytes reach userspace. The address fields sit at
    // 8-byte aligned offsets (48 and 64), so they can be stored as two u64 each.
    unsafe {
        (*event).kind = EventKind::State as u32;
        (*event).flags = flags;
        (*event).ts_ns = clock.now();
        (*event).sock = change.sock;
        (*event).in_state_ns = tracked.in_state_ns;
        (*event).opened_ns = tracked.opened_ns;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        *(*event).saddr.as_mut_ptr().cast::<[u64; 2]>() = change.saddr;
        *(*event).daddr.as_mut_ptr().cast::<[u64; 2]>() = change.daddr;
        crate::current_comm(&mut (*event).comm);
        (*event).sport = change.sport;
        (*event).dport = change.dport;
        (*event).family = change.family;
        (*event).old_state = old_state;
        (*event).new_state = new_state;
        (*event).netns = change.netns;
        (*event)._pad = 0;
        (*event).owner = tracked.owner;
    }
    entry.submit(crate::submit_flags());
}

/// Keeps `PEERS`, which the accept hook finds a not-yet-accepted socket by.
#[inline(always)]
fn remember_peer<C: EbpfContext>(ctx: &C, change: &Change, owner: &Owner) {
    let peer = PeerKey {
        addr: addr_bytes(change.daddr),
        port: change.dport,
        family: change.family,
        netns: change.netns,
    };
    if learns_peer(change.old_state, change.new_state, change.dport, owner) {
        if PEERS.insert(peer, change.sock, 0).is_err() {
            count(ctx, Counter::OwnerTableFull);
        }
    } else if change.new_state == tcp_state::CLOSE
        && owner.origin == Origin::Passive as u8
        && owner.source != OwnerSource::Accept as u8
    {
        // A socket that was accepted left PEERS then (see `accept`); only one never
        // seen accepted may still be there.
        let _ = PEERS.remove(peer);
    }
}

/// What the socket table says about a socket after a transition.
///
/// A value and a flag rather than an `Option<u64>`: LLVM reads an Option's payload even
/// when it is `None` (and then ignores it), and older verifiers reject any read of a
/// stack slot that was never written ("invalid read from stack"): with an Option, the
/// program did not load on 5.10 or 6.1 (6.12 accepts it).
struct Tracked {
    /// 0 unless `in_state_known`.
    in_state_ns: u64,
    in_state_known: bool,
    opened_ns: u64,
    owner: Owner,
    /// Counting path: whether this transition goes to userspace as a record (it could
    /// not be counted, or userspace follows the socket record by record).
    report: bool,
}

/// Updates the socket's entry in `SOCKETS` for a transition at `clock`'s time and
/// returns what the event should carry.
#[inline(always)]
fn track<C: EbpfContext>(
    ctx: &C,
    change: &Change,
    listener: &ListenerKey,
    clock: &Clock,
    actor_tgid: u32,
) -> Tracked {
    let actor = actor_tgid != 0;
    let (sock, old_state, new_state) = (change.sock, change.old_state, change.new_state);
    // A socket that is opening cannot have an entry (its last one went at CLOSE), so
    // the lookup is skipped: two of the ten a loopback connection costs. Should a
    // stale entry remain (its CLOSE never seen), the insert below replaces it, rather
    // than the new socket inheriting its owner and times.
    let opening = tcp_state::starts_life(old_state, new_state);
    let existing = if opening {
        None
    } else {
        SOCKETS.get_ptr_mut(sock)
    };
    if let Some(entry) = existing {
        // SAFETY: the map returned a valid pointer to the value; tracepoints for one
        // socket are serialised by the socket lock, so nothing else writes it now.
        let entry = unsafe { &mut *entry };
        // Records carry how long the socket was in its last state; on the counting
        // path only a socket userspace follows record by record keeps that time, so
        // the clock is read only where a count needs it. One that starts being
        // followed here says in its first record that the time is unknown.
        let timed = !counting::enabled() || entry.flags & ENTRY_REPORTED != 0;
        if actor && !owner_is_certain(&entry.owner) {
            if entry.owner.tgid == actor_tgid {
                // The process that listened is the one acting (a server that accepts
                // its own connections, the usual case): only the source changes, and
                // its name and cgroup need no reading again.
                entry.owner.source = OwnerSource::Syscall as u8;
            } else {
                let origin = entry.owner.origin;
                entry.owner = current_owner(OwnerSource::Syscall, origin);
            }
        }
        let report = if counting::enabled() {
            counting::count_change(ctx, change, entry, clock)
        } else {
            true
        };
        let tracked = Tracked {
            in_state_ns: if timed {
                clock.now().saturating_sub(entry.state_since_ns)
            } else {
                0
            },
            in_state_known: timed,
            opened_ns: entry.opened_ns,
            owner: entry.owner,
            report,
        };
        if new_state == tcp_state::CLOSE {
            // The socket is done (or became a time-wait mini-socket, which this
            // tracepoint never reports; the event carries its owner to userspace).
            let _ = SOCKETS.remove(sock);
        } else if report {
            entry.state_since_ns = clock.now();
        }
        return tracked;
    }

    // First sight of this socket: either it is new, or it predates portwatch.
    let now = clock.now();
    let passive_open = counting::opens_passive(old_state, new_state);
    let (origin, opened_ns) = match (old_state, new_state) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => (Origin::Active, now),
        (tcp_state::CLOSE, tcp_state::LISTEN) => (Origin::Listener, now),
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => (Origin::Passive, now),
        _ if passive_open => (Origin::Passive, now),
        // Accepted, with its LISTEN -> SYN_RECV missed (see above). (A simultaneous
        // open also passes through SYN_RECV, but is too rare to guess for.)
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => (Origin::Passive, 0),
        _ => (Origin::Unknown, 0),
    };
    let owner = if actor {
        let source = match new_state {
            tcp_state::SYN_SENT => OwnerSource::Connect,
            tcp_state::LISTEN => OwnerSource::Listen,
            _ => OwnerSource::Syscall,
        };
        current_owner(source, origin as u8)
    } else if origin == Origin::Passive {
        inherited_from_listener(listener)
    } else {
        Owner {
            origin: origin as u8,
            ..Owner::UNKNOWN
        }
    };
    // Counting: userspace follows record by record every socket that did not open
    // under portwatch's eyes (it knows them from its startup snapshot), and listeners
    // (few, and it keeps them to charge never-accepted sockets to).
    let followed = !(opening || passive_open) || new_state == tcp_state::LISTEN;
    let mut report = true;
    if new_state != tcp_state::CLOSE {
        let entry = SocketEntry {
            state_since_ns: now,
            opened_ns,
            owner,
            flags: if followed {
                ENTRY_REPORTED
            } else if passive_open {
                ENTRY_ESTABLISHED
            } else {
                0
            },
            _pad: 0,
        };
        if SOCKETS.insert(sock, entry, 0).is_err() {
            count(ctx, Counter::SocketTableFull);
        } else if passive_open {
            report = counting::count_passive_open(ctx, change, &entry, clock);
        } else if !followed {
            report = false;
        }
    }
    Tracked {
        in_state_ns: 0,
        in_state_known: false,
        opened_ns,
        owner,
        report,
    }
}

/// Transitions only a system call on the socket makes (include/net/tcp_states.h and
/// net/ipv4/tcp.c: tcp_v4_connect, inet_csk_listen_start, tcp_close_state). Each runs
/// in the calling process, so its current task holds the socket.
#[inline(always)]
fn made_by_syscall(old_state: u8, new_state: u8) -> bool {
    matches!(
        (old_state, new_state),
        (tcp_state::CLOSE, tcp_state::SYN_SENT)
            | (tcp_state::CLOSE, tcp_state::LISTEN)
            | (tcp_state::LISTEN, tcp_state::CLOSE)
            | (tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1)
            | (tcp_state::SYN_RECV, tcp_state::FIN_WAIT1)
            | (tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK)
    )
}

/// Whether this transition names a not-yet-accepted passive socket's remote end, which
/// the accept hook finds it by.
///
/// `LISTEN -> SYN_RECV` does only on recent kernels (6.18 does): on 5.10, 6.1 and 6.12
/// inet_csk_clone_lock() sets the new socket's state before copying its addresses, so
/// the record holds the listener's (remote address unspecified, port 0).
/// `SYN_RECV -> ESTABLISHED` has them everywhere, and always precedes accept()
/// returning the socket: the handshake runs with the socket locked, and inet_accept()
/// locks it before returning. Both are kept: a TCP Fast Open socket is accepted while
/// still in SYN_RECV. Where both apply they write the same entry.
#[inline(always)]
fn learns_peer(old_state: u8, new_state: u8, dport: u16, owner: &Owner) -> bool {
    match (old_state, new_state) {
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => dport != 0,
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => owner.origin == Origin::Passive as u8,
        _ => false,
    }
}

/// Learned in the owner's own system call, as opposed to unknown or provisional.
#[inline(always)]
fn owner_is_certain(owner: &Owner) -> bool {
    owner.source != OwnerSource::Unknown as u8 && owner.source != OwnerSource::Listener as u8
}

#[inline(always)]
fn inherited_from_listener(listener: &ListenerKey) -> Owner {
    // SAFETY: the value is copied out at once; a concurrent update of the same
    // listener can only make it one owner staler.
    match unsafe { LISTENERS.get(listener) } {
        Some(listener) => Owner {
            source: OwnerSource::Listener as u8,
            origin: Origin::Passive as u8,
            ..*listener
        },
        None => Owner {
            origin: Origin::Passive as u8,
            ..Owner::UNKNOWN
        },
    }
}

#[inline(always)]
fn remember_listener<C: EbpfContext>(ctx: &C, listener: &ListenerKey, owner: &Owner) {
    if owner.tgid != 0 && LISTENERS.insert(listener, *owner, 0).is_err() {
        count(ctx, Counter::OwnerTableFull);
    }
}

#[inline(always)]
pub(crate) fn addr_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
    bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
    bytes
}

/// Marks the entry as followed by userspace record by record from now on.
#[inline(always)]
pub(crate) fn follow(entry: &mut SocketEntry) {
    entry.flags |= ENTRY_REPORTED;
}

/// Whether the entry's socket reached ESTABLISHED.
#[inline(always)]
pub(crate) fn established(entry: &SocketEntry) -> bool {
    entry.flags & ENTRY_ESTABLISHED != 0
}
