//! `top` on this host: the tracing loop feeds the live model through a [`Sink`], as it
//! does for `serve`, and the screen's thread takes frames from it under the lock.
use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::Result;

use crate::{
    bpf::KernelCounters,
    clock::monotonic_ns,
    commands::trace::Sink,
    detect::report::Thresholds,
    event::{CloseWaitSocket, Event, FlowCount, decode},
    live::{KernelLoss, LiveModel, NamespaceSettings},
    sockets::table::Seed,
    top::{
        frame::{Frame, Request},
        screen::Clock,
    },
};

use super::ui::Source;

/// What the tracing loop and the screen share.
pub struct Shared {
    pub live: Mutex<LiveModel>,
    /// Read again on the screen's thread as namespaces come and settings change, as
    /// serve does at its scrapes.
    pub settings: Mutex<NamespaceSettings>,
    pub thresholds: Thresholds,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on the other thread leaves the numbers as they were: still worth showing.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tracing loop's end: every record, or the kernel's counts, into the model, as
/// `serve`'s sink does.
pub struct TopSink {
    pub collect: portwatch_common::Collect,
    pub shared: Arc<Shared>,
    /// `--netns`: only this namespace's sockets go into the model.
    pub netns: Option<u32>,
    /// Starts the screen. Run at the loop's first tick, after the tracing loop's last
    /// line on stderr: that line lands on the terminal before the screen takes it.
    pub start_screen: Option<Box<dyn FnOnce() -> Result<()> + Send>>,
    /// Why the screen could not start.
    pub failed: Option<anyhow::Error>,
}

impl Sink for TopSink {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        let seeds = seeds
            .into_iter()
            .filter(|s| self.netns.is_none_or(|netns| netns == s.tuple.netns))
            .collect();
        let mut live = lock(&self.shared.live);
        live.start(start_ns, seeds);
        if self.collect == portwatch_common::Collect::Counts {
            live.model.count_portless_closes_as_failed_connects();
        }
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        if let Some(netns) = self.netns
            && let Ok(Event::Transition(transition)) = decode(bytes)
            && transition.netns != netns
        {
            return;
        }
        // Undecodable records are counted in the model and shown in the header.
        let _ = lock(&self.shared.live).apply(bytes);
    }

    fn collect(&self) -> portwatch_common::Collect {
        self.collect
    }

    fn counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        let mut live = lock(&self.shared.live);
        live.model
            .apply_counts_in(self.netns, from_ns, to_ns, flows, close_waits);
    }

    fn counters_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn counters(&mut self, counters: &KernelCounters) {
        lock(&self.shared.live).kernel = KernelLoss {
            dropped: counters.ring_buffer_full,
            untracked: counters.untracked(),
            skipped: counters.skipped,
        };
        if let Some(start_screen) = self.start_screen.take()
            && let Err(err) = start_screen()
        {
            // Its end wakes `run`, which returns this.
            self.failed = Some(err);
        }
    }
}

/// Frames of the live model, for the screen's thread.
pub struct LiveSource {
    pub shared: Arc<Shared>,
    pub start_ns: u64,
}

impl Source for LiveSource {
    fn start_ns(&self) -> u64 {
        self.start_ns
    }

    fn frame(&mut self, request: Request) -> (Frame, Clock) {
        let shared = &self.shared;
        let now = monotonic_ns();
        let namespaces = lock(&shared.live).namespaces();
        let mut settings = lock(&shared.settings);
        settings.refresh(namespaces);
        let frame = Frame::take(
            &lock(&shared.live),
            now,
            &settings.budget,
            &shared.thresholds,
            request,
        );
        drop(settings);
        let elapsed_s = now.saturating_sub(self.start_ns) as f64 / 1e9;
        (frame, Clock::Live { elapsed_s })
    }

    fn workload(&mut self, pid: u32) -> Option<String> {
        crate::commands::startup::workload(pid)
    }
}
