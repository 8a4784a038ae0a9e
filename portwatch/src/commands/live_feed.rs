//! What `serve`'s and `top`'s tracing loops do with what the kernel hands over: records
//! and the kernel's counts go into the live model under its lock, and the kernel's loss
//! counters beside them, every second. Their sinks differ only in what they start (an
//! HTTP server, a screen) and in what reads the model (a scrape, a frame).
use std::sync::{Mutex, MutexGuard, PoisonError};

use portwatch_common::Collect;

use crate::{
    bpf::KernelCounters,
    event::{CloseWaitSocket, FlowCount},
    live::{KernelLoss, LiveModel},
    sockets::table::Seed,
};

/// Locks the live model (or what is shared with it). A panic on another thread leaves
/// the numbers as they were: still worth showing.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct LiveFeed {
    pub collect: Collect,
    /// `--netns` (top): only this namespace's sockets go into the model.
    pub netns: Option<u32>,
}

impl LiveFeed {
    pub fn start(&self, live: &Mutex<LiveModel>, start_ns: u64, seeds: Vec<Seed>) {
        let seeds = seeds
            .into_iter()
            .filter(|seed| self.netns.is_none_or(|netns| netns == seed.tuple.netns))
            .collect();
        let mut live = lock(live);
        live.start(start_ns, seeds);
        if self.collect == Collect::Counts {
            live.model.count_portless_closes_as_failed_connects();
        }
    }

    pub fn record(&self, live: &Mutex<LiveModel>, bytes: &[u8]) {
        // Undecodable records are counted in the model, which shows how many.
        let _ = lock(live).apply_in(self.netns, bytes);
    }

    pub fn counts(
        &self,
        live: &Mutex<LiveModel>,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        lock(live)
            .model
            .apply_counts_in(self.netns, from_ns, to_ns, flows, close_waits);
    }

    pub fn counters(live: &Mutex<LiveModel>, counters: &KernelCounters) {
        lock(live).kernel = KernelLoss {
            dropped: counters.ring_buffer_full,
            untracked: counters.untracked(),
            skipped: counters.skipped,
        };
    }
}
