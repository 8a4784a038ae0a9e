//! Rates that match what a process did, not what the window averages to.
//!
//! A client that churned 200 connections/s for 5 s of an 8 s report averages 125/s over
//! the window, and one that starts churning 500/s three seconds before the end of a
//! 30 s report averages 50/s: the window's length says when portwatch looked, not how
//! fast the process went. So each counted occurrence keeps when it first and last
//! happened (the span the process was active over) and how many happened in each of the
//! last seconds (the recent rate, which the exhaustion forecast needs: the ports run out
//! at the rate connections are made now).

/// How far back the recent rate looks.
pub const RECENT_S: u64 = 10;
const NS_PER_S: u64 = 1_000_000_000;
/// A rate is never taken over less than this (unless the whole window is shorter): a
/// burst of 30 short connections within 10 ms is 30 connections, not a sustained
/// 3,000/s, and should not cross a churn threshold of 20/s. Three seconds still measure
/// a churner that began three seconds before the window ended at its own rate.
pub const MIN_SPAN_S: u64 = 3;
const MIN_SPAN_NS: u64 = MIN_SPAN_S * NS_PER_S;

/// The window a model covers, in kernel monotonic nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    pub fn len_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    fn second_of(&self, ts_ns: u64) -> u64 {
        ts_ns.saturating_sub(self.start_ns) / NS_PER_S
    }
}

/// Occurrences of one thing (connections opened, TIME_WAITs made) with when they
/// happened: constant memory however many there are.
#[derive(Clone, Debug, Default)]
pub struct Occurrences {
    count: u64,
    first_ns: u64,
    last_ns: u64,
    /// Counts per second of the window (second `s` lives at `s % RECENT_S`), for the
    /// last `RECENT_S` seconds that had any.
    recent: [Second; RECENT_S as usize],
}

#[derive(Clone, Copy, Debug, Default)]
struct Second {
    /// Seconds since the window's start, plus one (0: never used).
    number: u64,
    count: u64,
}

/// Rates of one kind of occurrence; all per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Over the span the process was active: from its first occurrence to its last, or
    /// from the window's edge where it was active before the window began or still is
    /// at its end.
    pub active_per_s: f64,
    /// That span, in seconds.
    pub active_s: f64,
    /// Over the last `RECENT_S` seconds of the window (or of the active span, if
    /// shorter): what is going on now. 0 for a process that stopped earlier.
    pub recent_per_s: f64,
}

impl Occurrences {
    /// Counts one at `ts_ns`, in a window that began at `window_start_ns`.
    pub fn record(&mut self, ts_ns: u64, window_start_ns: u64) {
        if self.count == 0 {
            self.first_ns = ts_ns;
        }
        self.count += 1;
        self.first_ns = self.first_ns.min(ts_ns);
        self.last_ns = self.last_ns.max(ts_ns);
        let number = ts_ns.saturating_sub(window_start_ns) / NS_PER_S + 1;
        let slot = &mut self.recent[(number % RECENT_S) as usize];
        if slot.number != number {
            // Older than RECENT_S seconds (records arrive nearly in order, and an
            // out-of-order one lands in its own second or a stale slot).
            if slot.number > number {
                return;
            }
            *slot = Second { number, count: 0 };
        }
        slot.count += 1;
    }

    /// Counts `n` that happened in `(from_ns, to_ns]` (the counting path reads the
    /// kernel's counts on an interval and knows no finer): taken as evenly spread over
    /// it, so the active span and its rate come out as for `n` separate records, to
    /// within one interval.
    pub fn record_many(&mut self, n: u64, from_ns: u64, to_ns: u64, window_start_ns: u64) {
        if n == 0 {
            return;
        }
        let from_ns = from_ns.min(to_ns);
        let first = from_ns + (to_ns - from_ns) / n;
        if self.count == 0 {
            self.first_ns = first;
        }
        self.count += n;
        self.first_ns = self.first_ns.min(first);
        self.last_ns = self.last_ns.max(to_ns);
        let number = to_ns.saturating_sub(window_start_ns) / NS_PER_S + 1;
        let slot = &mut self.recent[(number % RECENT_S) as usize];
        if slot.number != number {
            if slot.number > number {
                return;
            }
            *slot = Second { number, count: 0 };
        }
        slot.count += n;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The span over which the process was doing this, within `window`.
    fn active_span(&self, window: &Window) -> (u64, u64) {
        if self.count < 2 {
            return (window.start_ns, window.end_ns);
        }
        // The typical gap between two occurrences: a process active before the window
        // began shows its first occurrence about one gap after the start, and one still
        // active shows its last within about one gap of the end.
        let gap = (self.last_ns - self.first_ns) / (self.count - 1);
        let near = 2 * gap;
        let start = if self.first_ns.saturating_sub(window.start_ns) <= near {
            window.start_ns
        } else {
            self.first_ns
        };
        let end = if window.end_ns.saturating_sub(self.last_ns) <= near {
            window.end_ns
        } else {
            self.last_ns
        };
        (start, end.max(start))
    }

    pub fn rates(&self, window: &Window) -> Rates {
        if self.count == 0 {
            return Rates::default();
        }
        let (start, end) = self.active_span(window);
        // Between its first and last occurrence a process made count - 1 gaps' worth of
        // them; a span reaching to an edge holds about count.
        let counted = if start == self.first_ns && end == self.last_ns {
            self.count - 1
        } else {
            self.count
        };
        let span = span_ns(start, end, window);
        let active_per_s = counted as f64 * NS_PER_S as f64 / span as f64;

        // Recent: the last RECENT_S seconds of the window, but not before the activity
        // began (a burst that started 3 s ago is measured over 3 s).
        let last_second = window.second_of(window.end_ns) + 1;
        let first_second = last_second.saturating_sub(RECENT_S - 1).max(1);
        let recent_count: u64 = self
            .recent
            .iter()
            .filter(|s| (first_second..=last_second).contains(&s.number))
            .map(|s| s.count)
            .sum();
        let recent_start = (window.start_ns + (first_second - 1) * NS_PER_S).max(start);
        let recent_span = span_ns(recent_start, window.end_ns, window);
        Rates {
            active_per_s,
            active_s: span as f64 / NS_PER_S as f64,
            recent_per_s: recent_count as f64 * NS_PER_S as f64 / recent_span as f64,
        }
    }
}

/// `end - start`, at least `MIN_SPAN_NS` unless the whole window is shorter, and never 0.
fn span_ns(start: u64, end: u64, window: &Window) -> u64 {
    end.saturating_sub(start)
        .max(MIN_SPAN_NS.min(window.len_ns()))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_S;
    /// Windows start at an arbitrary boot time, as the kernel's clock does.
    const T0: u64 = 5_000 * S;

    fn window(seconds: f64) -> Window {
        Window {
            start_ns: T0,
            end_ns: T0 + (seconds * S as f64) as u64,
        }
    }

    /// `rate` per second, evenly paced, from `from_s` to `to_s` into the window.
    fn paced(rate: u64, from_s: f64, to_s: f64, window: &Window) -> Occurrences {
        let mut occurrences = Occurrences::default();
        pace(&mut occurrences, rate, from_s, to_s, window);
        occurrences
    }

    fn pace(occurrences: &mut Occurrences, rate: u64, from_s: f64, to_s: f64, window: &Window) {
        let gap = S / rate;
        let mut ts = T0 + (from_s * S as f64) as u64 + gap / 2;
        while ts < T0 + (to_s * S as f64) as u64 {
            occurrences.record(ts, window.start_ns);
            ts += gap;
        }
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.02
    }

    #[test]
    fn a_process_active_for_part_of_the_window_is_measured_over_that_part() {
        // The example: 200/s for 5 s of an 8 s report used to say 125/s.
        let w = window(8.0);
        let rates = paced(200, 1.5, 6.5, &w).rates(&w);
        assert!(close(rates.active_per_s, 200.0), "{rates:?}");
        assert!(close(rates.active_s, 5.0), "{rates:?}");
        // It stopped 1.5 s before the end: the recent rate is still most of it, over
        // the 5 s it was active (the window is shorter than RECENT_S).
        assert!(close(rates.recent_per_s, 1000.0 / 6.5), "{rates:?}");
    }

    #[test]
    fn a_burst_at_the_end_is_measured_over_the_burst() {
        // 500/s for the last 3 s of a 30 s report used to say 50/s.
        let w = window(30.0);
        let rates = paced(500, 27.0, 30.0, &w).rates(&w);
        assert!(close(rates.active_per_s, 500.0), "{rates:?}");
        assert!(close(rates.active_s, 3.0), "{rates:?}");
        assert!(close(rates.recent_per_s, 500.0), "{rates:?}");
    }

    #[test]
    fn a_process_that_stops_early_has_no_recent_rate() {
        let w = window(30.0);
        let rates = paced(100, 0.0, 12.0, &w).rates(&w);
        // Active from before the window began (its first connection came one gap in).
        assert!(close(rates.active_per_s, 100.0), "{rates:?}");
        assert!(close(rates.active_s, 12.0), "{rates:?}");
        assert_eq!(rates.recent_per_s, 0.0);
    }

    #[test]
    fn a_process_active_all_along_is_measured_over_the_whole_window() {
        let w = window(30.0);
        let rates = paced(50, 0.0, 30.0, &w).rates(&w);
        assert!(close(rates.active_per_s, 50.0), "{rates:?}");
        assert_eq!(rates.active_s, 30.0);
        assert!(close(rates.recent_per_s, 50.0), "{rates:?}");
    }

    #[test]
    fn a_short_burst_counts_over_the_minimum_span() {
        let w = window(30.0);
        let mut occurrences = Occurrences::default();
        for i in 0..30 {
            occurrences.record(T0 + 10 * S + i * 300_000, w.start_ns);
        }
        let rates = occurrences.rates(&w);
        assert_eq!(rates.active_s, MIN_SPAN_S as f64);
        assert!(close(rates.active_per_s, 29.0 / 3.0), "{rates:?}");
        // A window shorter than the minimum is the span.
        let short = window(2.0);
        assert_eq!(paced(100, 0.0, 0.5, &short).rates(&short).active_s, 2.0);
    }

    #[test]
    fn one_occurrence_or_none() {
        let w = window(10.0);
        assert_eq!(Occurrences::default().rates(&w), Rates::default());
        let mut one = Occurrences::default();
        one.record(T0 + 3 * S, w.start_ns);
        let rates = one.rates(&w);
        assert_eq!(rates.active_s, 10.0);
        assert!(close(rates.active_per_s, 0.1), "{rates:?}");
    }

    #[test]
    fn counts_read_on_an_interval_rate_as_the_records_would() {
        // The counting path: 200/s for 5 s of an 8 s window, read once a second.
        let w = window(8.0);
        let mut counted = Occurrences::default();
        for second in 2..7 {
            counted.record_many(200, T0 + (second - 1) * S, T0 + second * S, w.start_ns);
        }
        let records = paced(200, 1.0, 6.0, &w).rates(&w);
        let rates = counted.rates(&w);
        assert_eq!(counted.count(), 1000);
        assert!(
            close(rates.active_per_s, records.active_per_s),
            "{rates:?} {records:?}"
        );
        assert!(
            close(rates.active_s, records.active_s),
            "{rates:?} {records:?}"
        );
        assert!(
            close(rates.recent_per_s, records.recent_per_s),
            "{rates:?} {records:?}"
        );
        // Nothing counted changes nothing.
        counted.record_many(0, T0, T0 + 8 * S, w.start_ns);
        assert_eq!(counted.count(), 1000);
    }

    #[test]
    fn recent_seconds_are_reused_as_time_goes_on() {
        let w = window(60.0);
        // 10/s for the first 40 s, then 100/s for the last 20 s: recent is 100/s.
        let mut occurrences = paced(10, 0.0, 40.0, &w);
        pace(&mut occurrences, 100, 40.0, 60.0, &w);
        let rates = occurrences.rates(&w);
        assert!(close(rates.recent_per_s, 100.0), "{rates:?}");
    }
}
