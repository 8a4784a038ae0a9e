//! When each connection (or request) of a paced run starts.
//!
//! Slot `i` starts at `start + i × period`, computed from `i` each time: sleeping a period
//! after each connection would add every oversleep and every connection's own duration
//! to the schedule, and a run meant to last 1 s would last longer. A slot that is already
//! due starts at once, so a run that fell behind catches up, but no slot ever starts
//! before its time, so catching up never overshoots the rate.
use std::time::Duration;

/// The slots of one run and when it ends. Times are offsets from the run's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Nanoseconds between consecutive slots; 0 runs flat out.
    period_ns: f64,
    count: Option<u64>,
    duration: Option<Duration>,
}

/// What to do about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start it at this offset from the run's start: its slot, or now if that has passed.
    StartAt(Duration),
    /// The run is over: the count is reached or the duration has passed.
    Stop,
}

impl Schedule {
    /// `rate` slots per second; 0 (or less) runs flat out.
    pub fn per_second(rate: f64) -> Schedule {
        let period_ns = if rate > 0.0 { 1e9 / rate } else { 0.0 };
        Schedule {
            period_ns,
            count: None,
            duration: None,
        }
    }

    /// One slot every `interval`.
    pub fn every(interval: Duration) -> Schedule {
        Schedule {
            period_ns: interval.as_nanos() as f64,
            count: None,
            duration: None,
        }
    }

    /// Stop after `count` slots.
    pub fn with_count(self, count: Option<u64>) -> Schedule {
        Schedule { count, ..self }
    }

    /// Start no slot at or after `duration`.
    pub fn with_duration(self, duration: Option<Duration>) -> Schedule {
        Schedule { duration, ..self }
    }

    /// When slot `index` is due.
    pub fn slot(&self, index: u64) -> Duration {
        // One multiplication from the index: rounding cannot accumulate across slots.
        Duration::from_nanos((index as f64 * self.period_ns).round() as u64)
    }

    /// What to do about slot `index` when `now` has passed since the start.
    pub fn next(&self, index: u64, now: Duration) -> Step {
        if self.count.is_some_and(|count| index >= count) {
            return Step::Stop;
        }
        let slot = self.slot(index);
        if let Some(duration) = self.duration
            && (slot >= duration || now >= duration)
        {
            return Step::Stop;
        }
        Step::StartAt(slot.max(now))
    }

    /// How long a finished run lasts: until the end of its last slot (so that made ÷
    /// elapsed is the rate when the run kept up), or its duration. None: it never ends.
    pub fn end(&self) -> Option<Duration> {
        let by_count = self.count.map(|count| self.slot(count));
        match (by_count, self.duration) {
            (Some(by_count), Some(duration)) => Some(by_count.min(duration)),
            (by_count, duration) => by_count.or(duration),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slots_follow_the_rate() {
        let schedule = Schedule::per_second(200.0);
        assert_eq!(schedule.slot(0), Duration::ZERO);
        assert_eq!(schedule.slot(1), 5 * MS);
        assert_eq!(schedule.slot(199), 995 * MS);
        assert_eq!(schedule.slot(200), Duration::from_secs(1));
        assert_eq!(Schedule::every(100 * MS).slot(10), Duration::from_secs(1));
    }

    #[test]
    fn slots_do_not_drift() {
        // A third of a second is no whole number of nanoseconds; adding it up would drift.
        let schedule = Schedule::per_second(3.0);
        assert_eq!(schedule.slot(1), Duration::from_nanos(333_333_333));
        assert_eq!(schedule.slot(2), Duration::from_nanos(666_666_667));
        assert_eq!(schedule.slot(3), Duration::from_secs(1));
        assert_eq!(schedule.slot(3_000_000), Duration::from_secs(1_000_000));
    }

    #[test]
    fn a_slot_never_starts_early_and_a_late_one_starts_at_once() {
        let schedule = Schedule::per_second(200.0);
        // Early: wait for the slot.
        assert_eq!(schedule.next(10, 20 * MS), Step::StartAt(50 * MS));
        // Late: start now.
        assert_eq!(schedule.next(10, 73 * MS), Step::StartAt(73 * MS));
    }

    /// One thread, one connection at a time: a slow connection makes the run late, the
    /// run catches up by starting due slots at once, and then it is back on the exact
    /// schedule, never ahead of it.
    #[test]
    fn catching_up_stops_at_the_schedule() {
        let schedule = Schedule::per_second(200.0).with_count(Some(40));
        let took = |index: u64| if index == 5 { 23 * MS } else { MS };
        let mut now = Duration::ZERO;
        let mut starts = Vec::new();
        let mut index = 0;
        while let Step::StartAt(start) = schedule.next(index, now) {
            starts.push(start);
            now = start + took(index);
            index += 1;
        }
        assert_eq!(starts.len(), 40);
        for (index, start) in (0..).zip(&starts) {
            assert!(*start >= schedule.slot(index), "slot {index} started early");
        }
        // Slot 5 ran from 25 ms to 48 ms: slots 6..=10 (30..=50 ms) were due by then and
        // start back to back, 1 ms apart; slot 11 (55 ms) is back on time.
        assert_eq!(starts[6..10], [48 * MS, 49 * MS, 50 * MS, 51 * MS]);
        assert_eq!(starts[10..13], [52 * MS, 55 * MS, 60 * MS]);
        assert!(
            starts[13..]
                .iter()
                .zip(13..)
                .all(|(s, i)| *s == schedule.slot(i))
        );
    }

    /// However late the run is, it never has started more slots than the rate allows by
    /// then: it catches up with the schedule and stops there.
    #[test]
    fn never_more_than_the_rate_allows() {
        let schedule = Schedule::per_second(1000.0).with_count(Some(500));
        // A stall of 100 ms in the middle, otherwise 0.3 ms per connection.
        let took = |index: u64| if index == 100 { 100 * MS } else { MS * 3 / 10 };
        let mut now = Duration::ZERO;
        let mut index = 0;
        while let Step::StartAt(start) = schedule.next(index, now) {
            let allowed = start.as_nanos() / 1_000_000 + 1;
            assert!(
                u128::from(index) < allowed,
                "slot {index} at {start:?} is ahead"
            );
            now = start + took(index);
            index += 1;
        }
        assert_eq!(index, 500);
        assert_eq!(now, schedule.slot(499) + MS * 3 / 10, "back on schedule");
    }

    #[test]
    fn count_and_duration_stop_the_run() {
        let counted = Schedule::per_second(200.0).with_count(Some(200));
        assert_eq!(counted.next(199, 995 * MS), Step::StartAt(995 * MS));
        assert_eq!(counted.next(200, 995 * MS), Step::Stop);
        assert_eq!(counted.end(), Some(Duration::from_secs(1)));

        let timed = Schedule::per_second(100.0).with_duration(Some(500 * MS));
        assert_eq!(timed.next(49, 490 * MS), Step::StartAt(490 * MS));
        assert_eq!(
            timed.next(50, Duration::ZERO),
            Step::Stop,
            "slot at the deadline"
        );
        assert_eq!(
            timed.next(30, 500 * MS),
            Step::Stop,
            "late past the deadline"
        );
        assert_eq!(timed.end(), Some(500 * MS));

        let both = timed.with_count(Some(10));
        assert_eq!(both.next(10, Duration::ZERO), Step::Stop);
        assert_eq!(both.end(), Some(100 * MS));

        assert_eq!(Schedule::per_second(200.0).end(), None);
    }

    #[test]
    fn flat_out_starts_everything_now() {
        let schedule = Schedule::per_second(0.0)
            .with_count(Some(1000))
            .with_duration(Some(Duration::from_secs(2)));
        assert_eq!(schedule.slot(999), Duration::ZERO);
        assert_eq!(schedule.next(999, 7 * MS), Step::StartAt(7 * MS));
        assert_eq!(schedule.next(1000, 7 * MS), Step::Stop);
        assert_eq!(schedule.next(5, Duration::from_secs(2)), Step::Stop);
        assert_eq!(
            schedule.end(),
            Some(Duration::ZERO),
            "no waiting at the end"
        );
    }
}
