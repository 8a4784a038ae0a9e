//! The kernel's per-program run-time statistics (`kernel.bpf_stats_enabled`), on or
//! off for one benchmark invocation.
use std::fs;

use anyhow::{Context as _, Result};

use super::procfs;

/// The kernel's per-program run-time statistics, as the invocation wants them while it
/// lives. On (`--bpf-stats`): with a BPF_ENABLE_STATS descriptor where the kernel has it
/// (a reference, which other processes' writes to the sysctl cannot undo), else with
/// kernel.bpf_stats_enabled. Off otherwise: a kernel.bpf_stats_enabled left at 1 by
/// someone else makes every eBPF program read the clock twice per call (in a VM, the
/// paravirtual clock: tens of ns), which would be charged to the agents. Whatever the
/// sysctl said is restored when dropped.
pub enum BpfStats {
    Descriptor(#[allow(dead_code)] std::os::fd::OwnedFd),
    Sysctl { old: String },
    Untouched,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        if let Some(fd) = procfs::enable_bpf_stats() {
            return Ok(BpfStats::Descriptor(fd));
        }
        let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats::Sysctl { old })
    }

    pub fn disable() -> Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS).unwrap_or_default();
        if old.trim() != "1" {
            return Ok(BpfStats::Untouched);
        }
        eprintln!(
            "xtask: bench: kernel.bpf_stats_enabled was 1 (set outside the benchmark): \
             turned off for this invocation, so the agents' programs do not pay for \
             statistics nobody reads; restored at the end"
        );
        fs::write(BPF_STATS, "0").context("disabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats::Sysctl { old })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let BpfStats::Sysctl { old } = self {
            let _ = fs::write(BPF_STATS, old.trim());
        }
    }
}
