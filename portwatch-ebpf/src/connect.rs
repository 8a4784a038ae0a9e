//! `syscalls:sys_exit_connect`: connect() failing with EADDRNOTAVAIL is port exhaustion
//! that has already happened. Only failures are sent; the cost for every other connect
//! is one load and one compare.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use portwatch_common::{
    ConnectFailedEvent, Counter, EADDRNOTAVAIL, EventKind, tracepoint::SysExit,
};

use crate::{EVENTS, count, field};

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    let args = ctx.as_ptr().cast::<SysExit>().cast_const();
    if field!(args.ret) != -i64::from(EADDRNOTAVAIL) {
        return 0;
    }
    let Some(mut record) = EVENTS.reserve::<ConnectFailedEvent>(0) else {
        count(&ctx, Counter::RingBufFull);
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = record.as_mut_ptr();
    // SAFETY: `event` points at a reserved record of size_of::<ConnectFailedEvent>()
    // bytes that only this program writes until submit; every field is written.
    unsafe {
        (*event).kind = EventKind::ConnectFailed as u32;
        (*event).errno = EADDRNOTAVAIL;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        crate::current_comm(&mut (*event).comm);
    }
    record.submit(crate::submit_flags());
    0
}
