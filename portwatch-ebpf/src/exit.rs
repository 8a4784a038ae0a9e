//! `sched:sched_process_exit`: a process is gone, so its PID may be reused.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use portwatch_common::{Counter, EventKind, ExitEvent};

use crate::{EVENTS, count};

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // Only the thread group leader's exit ends the process as a PID's owner.
    if tgid != tid {
        return 0;
    }
    let Some(mut record) = EVENTS.reserve::<ExitEvent>(0) else {
        count(&ctx, Counter::RingBufFull);
        return 0;
    };
    let event = record.as_mut_ptr();
    // SAFETY: `event` points at a reserved record of size_of::<ExitEvent>() bytes that
    // only this program writes until submit; every field is written.
    unsafe {
        (*event).kind = EventKind::Exit as u32;
        (*event).tgid = tgid;
        (*event).ts_ns = bpf_ktime_get_ns();
        crate::current_comm(&mut (*event).comm);
    }
    record.submit(crate::submit_flags());
    0
}
