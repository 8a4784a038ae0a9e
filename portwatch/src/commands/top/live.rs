//! `top` on this host: the tracing loop feeds the live model through a [`Sink`], as it
//! does for `serve`, and the screen's thread takes frames from it under the lock.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;

use crate::{
    bpf::KernelCounters,
    clock::monotonic_ns,
    commands::{
        live_feed::{LiveFeed, lock},
        trace::Sink,
    },
    detect::report::Thresholds,
    event::{CloseWaitSocket, FlowCount},
    live::{LiveModel, NamespaceSettings},
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

/// The tracing loop's end: every record, or the kernel's counts, into the model, as
/// `serve`'s sink does.
pub struct TopSink {
    pub feed: LiveFeed,
    pub shared: Arc<Shared>,
    /// Starts the screen. Run at the loop's first tick, after the tracing loop's last
    /// line on stderr: that line lands on the terminal before the screen takes it.
    pub start_screen: Option<Box<dyn FnOnce() -> Result<()> + Send>>,
    /// Why the screen could not start.
    pub failed: Option<anyhow::Error>,
}

impl Sink for TopSink {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        self.feed.start(&self.shared.live, start_ns, seeds);
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        self.feed.record(&self.shared.live, bytes);
    }

    fn collect(&self) -> portwatch_common::Collect {
        self.feed.collect
    }

    fn counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        self.feed
            .counts(&self.shared.live, from_ns, to_ns, flows, close_waits);
    }

    fn counters_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn counters(&mut self, counters: &KernelCounters) {
        LiveFeed::counters(&self.shared.live, counters);
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
