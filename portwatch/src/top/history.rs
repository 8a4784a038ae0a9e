//! What successive frames tell that one frame cannot: rates over the last interval,
//! CLOSE_WAIT growth over the last minute, and the host's numbers over the last minutes
//! for the header's sparklines.
//!
//! The model keeps cumulative counts (connections opened, TIME_WAIT made, failed
//! connects, events); a rate is the difference of two frames over the time between
//! them, so redraws cost nothing per event. The first frame is measured against the
//! model's start, when every count was zero.
use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::{live::Sample, process::Process, tcp_state::TcpState};

/// How many frames the sparklines remember: 10 minutes at the default 1 s interval.
pub const MAX_POINTS: usize = 600;

/// The span CLOSE_WAIT growth is measured over.
const GROWTH_SPAN_NS: u64 = 60_000_000_000;

/// The host at one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostPoint {
    pub now_ns: u64,
    pub established: u64,
    pub close_wait: u64,
    pub time_wait: u64,
    /// Every other state (listeners, handshakes, closing).
    pub other: u64,
    pub connections_per_s: f64,
    pub time_wait_per_s: f64,
    pub failed_per_s: f64,
    pub events_per_s: f64,
}

/// One process's rates at the last frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessRates {
    /// Connections opened (either role) per second.
    pub connections_per_s: f64,
    pub time_wait_per_s: f64,
    /// CLOSE_WAIT sockets gained per minute: over the last minute, or, for a process
    /// seen for less, what it gained since (not extrapolated).
    pub close_wait_per_min: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    opened: u64,
    time_wait: u64,
    failed: u64,
    events: u64,
}

#[derive(Clone, Debug, Default)]
struct Trail {
    last: Totals,
    /// (time, CLOSE_WAIT sockets), oldest first, spanning at least the last minute.
    close_wait: VecDeque<(u64, usize)>,
    rates: ProcessRates,
}

#[derive(Clone, Debug, Default)]
pub struct History {
    /// Time and host totals of the last frame; the model's start before any.
    last: Option<(u64, Totals)>,
    points: VecDeque<HostPoint>,
    processes: FxHashMap<Process, Trail>,
}

impl History {
    /// A history of a model that started (every count zero) at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        History {
            last: Some((start_ns, Totals::default())),
            ..History::default()
        }
    }

    /// Adds a frame. A frame no later than the last one adds nothing (a paused replay
    /// redrawing the same instant).
    pub fn observe(&mut self, sample: &Sample) {
        let now = sample.now_ns;
        let (last_ns, last_totals) = self.last.unwrap_or((now, Totals::default()));
        if now <= last_ns && !self.points.is_empty() {
            return;
        }
        let dt_s = now.saturating_sub(last_ns) as f64 / 1e9;
        let per_s = |now: u64, before: u64| {
            if dt_s > 0.0 {
                now.saturating_sub(before) as f64 / dt_s
            } else {
                0.0
            }
        };

        let mut host = Totals {
            events: sample.events.seen,
            ..Totals::default()
        };
        let mut point = HostPoint {
            now_ns: now,
            ..HostPoint::default()
        };
        let mut seen = FxHashMap::default();
        for p in &sample.processes {
            let c = &p.counters;
            let totals = Totals {
                opened: c.opened_active + c.opened_passive,
                time_wait: c.time_wait_created,
                failed: c.failed_connects,
                events: 0,
            };
            host.opened += totals.opened;
            host.time_wait += totals.time_wait;
            host.failed += totals.failed;
            for (state, n) in &p.states {
                let n = *n as u64;
                match *state {
                    s if s == TcpState::Established.name() => point.established += n,
                    s if s == TcpState::CloseWait.name() => point.close_wait += n,
                    s if s == TcpState::TimeWait.name() => point.time_wait += n,
                    _ => point.other += n,
                }
            }
            // A process not in the last frame did all it counts since then, from
            // zero sockets.
            let mut trail = self.processes.remove(&p.process).unwrap_or_else(|| Trail {
                close_wait: VecDeque::from([(last_ns, 0)]),
                ..Trail::default()
            });
            trail.rates.connections_per_s = per_s(totals.opened, trail.last.opened);
            trail.rates.time_wait_per_s = per_s(totals.time_wait, trail.last.time_wait);
            trail.last = totals;
            trail.close_wait.push_back((now, p.close_wait()));
            // Keep one point at or beyond the span, so growth covers a whole minute.
            while trail
                .close_wait
                .get(1)
                .is_some_and(|(t, _)| now.saturating_sub(*t) >= GROWTH_SPAN_NS)
            {
                trail.close_wait.pop_front();
            }
            // The gain over the last minute: over a shorter span (a process seen
            // for seconds) it is not extrapolated to a minute, which would make a
            // burst of 7 sockets read as hundreds a minute.
            trail.rates.close_wait_per_min =
                match (trail.close_wait.front(), trail.close_wait.back()) {
                    (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                        let minutes = (t1 - t0).max(GROWTH_SPAN_NS) as f64 / 60e9;
                        Some((n1 as f64 - n0 as f64) / minutes)
                    }
                    _ => None,
                };
            seen.insert(p.process, trail);
        }
        // Processes the model no longer knows are dropped with their trails.
        self.processes = seen;
        point.connections_per_s = per_s(host.opened, last_totals.opened);
        point.time_wait_per_s = per_s(host.time_wait, last_totals.time_wait);
        point.failed_per_s = per_s(host.failed, last_totals.failed);
        point.events_per_s = per_s(host.events, last_totals.events);
        self.points.push_back(point);
        if self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
        self.last = Some((now, host));
    }

    /// The host's numbers, oldest first.
    pub fn points(&self) -> &VecDeque<HostPoint> {
        &self.points
    }

    pub fn latest(&self) -> HostPoint {
        self.points.back().copied().unwrap_or_default()
    }

    pub fn rates(&self, process: &Process) -> ProcessRates {
        self.processes
            .get(process)
            .map(|trail| trail.rates)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        event::Comm,
        live::{ProcessCounters, ProcessSample},
    };

    const S: u64 = 1_000_000_000;

    fn process(pid: u32, opened: u64, close_wait: usize) -> ProcessSample {
        ProcessSample {
            process: Process::after_exits(pid, 0),
            comm: Comm::new("p"),
            alive: true,
            states: BTreeMap::from([("CLOSE_WAIT", close_wait), ("ESTABLISHED", 2)]),
            close_wait_oldest_s: None,
            counters: ProcessCounters {
                opened_active: opened,
                ..ProcessCounters::default()
            },
        }
    }

    fn sample(now_ns: u64, events: u64, processes: Vec<ProcessSample>) -> Sample {
        let mut sample = Sample {
            now_ns,
            processes,
            ..Sample::default()
        };
        sample.events.seen = events;
        sample
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let mut history = History::new(0);
        history.observe(&sample(2 * S, 100, vec![process(7, 10, 0)]));
        // The first frame is measured from the model's start.
        let p = Process::after_exits(7, 0);
        assert_eq!(history.rates(&p).connections_per_s, 5.0);
        assert_eq!(history.latest().events_per_s, 50.0);
        history.observe(&sample(3 * S, 400, vec![process(7, 40, 0)]));
        assert_eq!(history.rates(&p).connections_per_s, 30.0);
        let host = history.latest();
        assert_eq!(host.connections_per_s, 30.0);
        assert_eq!(host.events_per_s, 300.0);
        assert_eq!((host.established, host.close_wait), (2, 0));
    }

    #[test]
    fn the_same_instant_twice_changes_nothing() {
        let mut history = History::new(0);
        history.observe(&sample(S, 10, vec![process(7, 10, 0)]));
        history.observe(&sample(S, 10, vec![process(7, 10, 0)]));
        assert_eq!(history.points().len(), 1);
        assert_eq!(
            history.rates(&Process::after_exits(7, 0)).connections_per_s,
            10.0
        );
    }

    #[test]
    fn close_wait_growth_spans_the_last_minute() {
        let mut history = History::new(0);
        let p = Process::after_exits(7, 0);
        // 1 more CLOSE_WAIT socket every 10 s: 6 a minute.
        for step in 1..=12u64 {
            history.observe(&sample(
                step * 10 * S,
                0,
                vec![process(7, 0, step as usize)],
            ));
        }
        let growth = history.rates(&p).close_wait_per_min.unwrap();
        assert!((growth - 6.0).abs() < 1e-9, "{growth}");
        // Flat for a minute: 0, though it grew before.
        for step in 13..=19u64 {
            history.observe(&sample(step * 10 * S, 0, vec![process(7, 0, 12)]));
        }
        assert_eq!(history.rates(&p).close_wait_per_min, Some(0.0));
    }

    #[test]
    fn a_new_process_grew_from_nothing_and_a_gone_one_is_forgotten() {
        let mut history = History::new(0);
        history.observe(&sample(S, 0, vec![]));
        history.observe(&sample(2 * S, 0, vec![process(8, 4, 3)]));
        let p = Process::after_exits(8, 0);
        assert_eq!(history.rates(&p).connections_per_s, 4.0);
        // 3 gained in its first second: 3 in the last minute, not 180 a minute.
        assert_eq!(history.rates(&p).close_wait_per_min, Some(3.0));
        history.observe(&sample(3 * S, 0, vec![]));
        assert_eq!(history.rates(&p), ProcessRates::default());
    }

    #[test]
    fn points_are_bounded() {
        let mut history = History::new(0);
        for step in 1..=(MAX_POINTS as u64 + 10) {
            history.observe(&sample(step * S, step, vec![]));
        }
        assert_eq!(history.points().len(), MAX_POINTS);
        assert_eq!(history.points()[0].now_ns, 11 * S);
    }
}
