//! `syscalls:sys_{enter,exit}_accept{,4}`: the process that accepts a socket owns it.
//!
//! The exit tracepoint gives the new fd but not the socket. Rather than walk
//! task->files->fdt (kernel-version-specific offsets), we use what accept() itself
//! reports to the process: the peer's address, written to the user buffer passed on
//! entry. `PEERS` maps a not-yet-accepted passive socket's remote end to the socket.
//! When the caller passes no buffer (accept(fd, NULL, NULL)), the owner stays the
//! listener's (provisional) until the process acts on the socket itself, and userspace
//! can resolve it from /proc.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use portwatch_common::{
    AF_INET, AF_INET6, Counter, EventKind, Origin, OwnerEvent, OwnerSource, PeerKey,
    tracepoint::{SysEnterAccept, SysExit},
};

use crate::{ACCEPTS, EVENTS, PEERS, SOCKETS, count, current_netns, current_owner, field};

/// `struct sockaddr_in6`, which also covers `sockaddr_in`'s first 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn6 {
    family: u16,
    /// Network byte order.
    port: u16,
    /// sockaddr_in: the IPv4 address; sockaddr_in6: flow info.
    addr4_or_flowinfo: [u8; 4],
    addr6: [u8; 16],
    _scope_id: u32,
}

/// Attached to both sys_enter_accept and sys_enter_accept4.
#[tracepoint]
pub fn accept_enter(ctx: TracePointContext) -> u32 {
    let args = ctx.as_ptr().cast::<SysEnterAccept>().cast_const();
    let buffer = field!(args.upeer_sockaddr);
    if buffer != 0
        && ACCEPTS
            .insert(bpf_get_current_pid_tgid(), buffer, 0)
            .is_err()
    {
        count(&ctx, Counter::OwnerTableFull);
    }
    0
}

/// Attached to both sys_exit_accept and sys_exit_accept4.
#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

fn on_accept_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once; only this thread writes its entry.
    let Some(&buffer) = (unsafe { ACCEPTS.get(pid_tgid) }) else {
        return;
    };
    let _ = ACCEPTS.remove(pid_tgid);
    let args = ctx.as_ptr().cast::<SysExit>().cast_const();
    if field!(args.ret) < 0 {
        return;
    }
    // SAFETY: bpf_probe_read_user checks the user address and fails cleanly.
    let Ok(peer) = (unsafe { bpf_probe_read_user(buffer as *const SockaddrIn6) }) else {
        return;
    };
    // The accepting process is in its listener's namespace (a socket's namespace is
    // fixed when it is created, by its creator's; a process that setns()s between
    // listen() and accept() is not seen accepting).
    let mut key = PeerKey {
        addr: [0; 16],
        port: u16::from_be(peer.port),
        family: peer.family,
        netns: current_netns(),
    };
    match peer.family {
        AF_INET => key.addr[..4].copy_from_slice(&peer.addr4_or_flowinfo),
        AF_INET6 => key.addr = peer.addr6,
        _ => return,
    }
    // SAFETY: the value is copied out at once.
    let Some(&sock) = (unsafe { PEERS.get(key) }) else {
        return;
    };
    let _ = PEERS.remove(key);
    let owner = current_owner(OwnerSource::Accept, Origin::Passive as u8);
    if let Some(entry) = SOCKETS.get_ptr_mut(sock) {
        // SAFETY: valid map value pointer; a concurrent transition of this socket can
        // at worst write the same owner fields.
        unsafe { (*entry).owner = owner };
    }
    let Some(mut record) = EVENTS.reserve::<OwnerEvent>(0) else {
        count(ctx, Counter::RingBufFull);
        return;
    };
    record.write(OwnerEvent {
        kind: EventKind::Owner as u32,
        _pad: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sock,
        owner,
    });
    record.submit(crate::submit_flags());
}
