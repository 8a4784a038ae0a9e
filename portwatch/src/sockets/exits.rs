//! Exits seen per PID, so that an owner learned before its process exited is not
//! mistaken for a later process with the same PID.
use rustc_hash::FxHashMap;

use crate::process::Process;

/// Exits are pruned once this many more were recorded than twice the number kept.
const EXITS_SLACK: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Exits {
    /// Exits seen per PID: an owner learned before the latest exit is gone.
    counts: FxHashMap<u32, u32>,
    /// `counts.len()` after the last pruning (see [`Exits::retain`]).
    kept: usize,
}

impl Exits {
    pub fn record(&mut self, pid: u32) {
        *self.counts.entry(pid).or_default() += 1;
    }

    /// The process running as `pid` now, as far as the exits seen tell.
    pub fn process(&self, pid: u32) -> Process {
        Process::after_exits(pid, self.counts.get(&pid).copied().unwrap_or(0))
    }

    /// False once the process has exited: its PID may belong to another process now.
    pub fn is_alive(&self, process: &Process) -> bool {
        self.process(process.pid) == *process
    }

    /// Whether enough exits were recorded since the last pruning to prune again.
    pub fn wants_pruning(&self) -> bool {
        self.counts.len() > 2 * self.kept + EXITS_SLACK
    }

    /// Keeps the exits of the PIDs `keep` names, and forgets the others.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.counts.retain(|pid, _| keep(*pid));
        self.kept = self.counts.len();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.counts.len()
    }
}
