//! Least privilege: once its programs are loaded and attached, portwatch keeps only the
//! capabilities it still uses (docs/privileges.md).
//!
//! Loading and attaching need CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), mounting
//! tracefs CAP_SYS_ADMIN, raising RLIMIT_MEMLOCK CAP_SYS_RESOURCE. After that, only the
//! end-of-window look at /proc/<pid>/fd needs privileges: CAP_SYS_PTRACE to read another
//! process's descriptors, CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE) to list another
//! user's. Everything else a root portwatch had goes, from the permitted set too, so it
//! cannot come back.
use caps::{CapSet, Capability, CapsHashSet, errors::CapsError};

use crate::bpf::Tracer;

/// What the rest of a run uses.
const KEEP: [Capability; 3] = [
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_DAC_OVERRIDE,
];

/// What [`drop_after_attach`] kept of what loading needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Nothing: CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and the rest are gone.
    NoLoadingCapability,
    /// CAP_BPF: before Linux 6.5, when `kernel.unprivileged_bpf_disabled` is set, every
    /// bpf() call needs it, also reading and writing the maps of programs already
    /// loaded, which portwatch does until the end of the run.
    Bpf,
}

/// Drops every capability of the calling thread, for good: for helper threads that only
/// read pipes (the demo's readers of its processes' output), started before the
/// capability drop. Best effort: a thread that cannot drop keeps what it had.
pub fn drop_all_in_this_thread() {
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        let _ = caps::clear(None, set);
    }
}

/// Drops every capability but [`KEEP`] (those the process has), for good. Call it after
/// attaching and after writing the listeners' owners into the kernel's map.
///
/// The effective set goes first and a map read (the kind of bpf() call portwatch keeps
/// making) tells whether the kernel still serves it: if not, CAP_BPF comes back and
/// stays. Only then is the permitted set cut, from where nothing returns.
///
/// Capabilities are per thread, and a new thread starts with its creator's: this must
/// run on portwatch's one runtime thread (`main.rs`) before any other thread exists,
/// such as the demo's threads reading its processes' output.
pub fn drop_after_attach(tracer: &Tracer) -> Result<Kept, CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let mut keep: CapsHashSet = KEEP
        .into_iter()
        .filter(|capability| permitted.contains(capability))
        .collect();
    caps::set(None, CapSet::Effective, &keep)?;
    let mut kept = Kept::NoLoadingCapability;
    if tracer.counters().is_err() && permitted.contains(&Capability::CAP_BPF) {
        keep.insert(Capability::CAP_BPF);
        caps::set(None, CapSet::Effective, &keep)?;
        tracer
            .counters()
            .map_err(|err| CapsError::from(format!("reading a map with CAP_BPF: {err:#}")))?;
        kept = Kept::Bpf;
    }
    // Nothing portwatch starts after this needs any (the inheritable set also carries
    // the ambient one).
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(kept)
}
