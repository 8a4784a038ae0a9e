//! `top --replay FILE`: a recording played into a live model at the pace it was
//! recorded, on a clock the user can pause and step. The same model, frames and screen
//! as a live run; what /proc said comes from the recording (never from this machine).
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{
    detect::{ports::PortBudget, report::Thresholds},
    event::{Event, decode},
    live::{KernelLoss, LiveModel},
    record::Recording,
    sockets::table::Seed,
    top::{
        frame::{Frame, Request},
        screen::Clock,
    },
};

use super::ui::Source;

pub struct ReplaySource {
    recording: Recording,
    /// When each record happened (CLOCK_MONOTONIC ns of the recording host); an
    /// undecodable record takes its predecessor's time.
    times: Vec<u64>,
    live: LiveModel,
    netns: Option<u32>,
    budget: PortBudget,
    thresholds: Thresholds,
    /// Records applied so far.
    next: usize,
    /// The replay's clock, in the recording's time.
    at_ns: u64,
    /// When the clock last moved with the wall clock; None while paused.
    running_since: Option<Instant>,
    ended: bool,
}

impl ReplaySource {
    pub fn new(
        recording: Recording,
        limits: crate::detect::model::Limits,
        thresholds: Thresholds,
        netns: Option<u32>,
    ) -> Result<ReplaySource> {
        let start_ns = recording.header.start_ns;
        let mut last = start_ns;
        let mut undecodable = 0;
        let times = recording
            .records
            .iter()
            .map(|bytes| {
                if let Ok(event) = decode(bytes) {
                    last = match event {
                        Event::Transition(t) => t.ts_ns,
                        Event::Accepted(a) => a.ts_ns,
                        Event::Exited(e) => e.ts_ns,
                        Event::ConnectFailed(c) => c.ts_ns,
                    };
                } else {
                    undecodable += 1;
                }
                last
            })
            .collect();
        let total = recording.records.len();
        if total > 0 && undecodable == total {
            bail!(
                "none of its {total} records could be decoded: it was made by a portwatch \
                 whose records this one does not read; play it with that portwatch"
            );
        }
        let seeds = recording
            .header
            .seeds
            .iter()
            .map(Seed::try_from)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|s| netns.is_none_or(|netns| netns == s.tuple.netns))
            .collect();
        let mut live = LiveModel::new(start_ns, limits);
        live.start(start_ns, seeds);
        let budget = recording.budget();
        Ok(ReplaySource {
            recording,
            times,
            live,
            netns,
            budget,
            thresholds,
            next: 0,
            at_ns: start_ns,
            running_since: Some(Instant::now()),
            ended: false,
        })
    }

    fn end_ns(&self) -> u64 {
        self.recording
            .trailer
            .end_ns
            .max(self.recording.header.start_ns)
    }

    /// Moves the clock to `to_ns` (at most the end), applying the records up to it.
    fn advance_to(&mut self, to_ns: u64) {
        self.at_ns = to_ns.min(self.end_ns()).max(self.at_ns);
        while self.next < self.times.len() && self.times[self.next] <= self.at_ns {
            let _ = self
                .live
                .apply_in(self.netns, &self.recording.records[self.next]);
            self.next += 1;
        }
        if self.at_ns >= self.end_ns() && !self.ended {
            // Records stamped after the trailer's end (the last batch's) count too.
            for bytes in &self.recording.records[self.next..] {
                let _ = self.live.apply_in(self.netns, bytes);
            }
            self.next = self.times.len();
            self.ended = true;
            // As `report --replay` does at the end: owners the kernel could not learn,
            // from the recording's look at /proc, and the losses it counted.
            let trailer = &self.recording.trailer;
            self.live.model.table.resolve(&trailer.holders());
            self.live.kernel = KernelLoss {
                dropped: trailer.dropped,
                untracked: trailer.untracked,
                skipped: trailer.skipped,
            };
        }
    }

    fn clock(&self) -> Clock {
        let start = self.recording.header.start_ns;
        Clock::Replay {
            at_s: self.at_ns.saturating_sub(start) as f64 / 1e9,
            length_s: self.end_ns().saturating_sub(start) as f64 / 1e9,
            ended: self.ended,
        }
    }
}

impl Source for ReplaySource {
    fn start_ns(&self) -> u64 {
        self.recording.header.start_ns
    }

    fn frame(&mut self, request: Request) -> (Frame, Clock) {
        if let Some(since) = self.running_since {
            let now = Instant::now();
            let to = self.at_ns + now.duration_since(since).as_nanos() as u64;
            self.running_since = Some(now);
            self.advance_to(to);
        }
        let frame = Frame::take(
            &self.live,
            self.at_ns,
            &self.budget,
            &self.thresholds,
            request,
        );
        (frame, self.clock())
    }

    fn set_paused(&mut self, paused: bool) {
        self.running_since = if paused { None } else { Some(Instant::now()) };
    }

    fn step(&mut self, by: Duration) {
        let to = self.at_ns + by.as_nanos() as u64;
        self.advance_to(to);
    }

    fn workload(&mut self, pid: u32) -> Option<String> {
        self.recording.trailer.workloads.get(&pid).cloned()
    }
}
