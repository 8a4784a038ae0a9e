//! The clocks portwatch reads: CLOCK_MONOTONIC, which the kernel stamps events with
//! (bpf_ktime_get_ns), and its offset to wall-clock time for showing those stamps.
//!
//! The tracing loop takes its window's bounds from here; outputs only convert stamps.
use std::fmt;

/// CLOCK_MONOTONIC, the kernel's bpf_ktime_get_ns() clock.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to local wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, sampled once.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        WallClock {
            offset_ns: realtime - monotonic,
        }
    }

    /// `HH:MM:SS.micros` in local time.
    pub fn time_of_day(&self, monotonic_ns: u64) -> TimeOfDay {
        let unix_ns = (monotonic_ns as i128 + self.offset_ns).max(0);
        let secs = (unix_ns / 1_000_000_000) as libc::time_t;
        let micros = ((unix_ns % 1_000_000_000) / 1_000) as u32;
        // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid
        // for the call. localtime_r is the thread-safe variant.
        let tm = unsafe {
            let mut tm = std::mem::zeroed::<libc::tm>();
            libc::localtime_r(&secs, &mut tm);
            tm
        };
        TimeOfDay {
            hour: tm.tm_hour as u8,
            minute: tm.tm_min as u8,
            second: tm.tm_sec as u8,
            micros,
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micros: u32,
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}:{:02}.{:06}",
            self.hour, self.minute, self.second, self.micros
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_format() {
        let t = TimeOfDay {
            hour: 3,
            minute: 4,
            second: 5,
            micros: 60,
        };
        assert_eq!(t.to_string(), "03:04:05.000060");
    }

    #[test]
    fn wall_clock_tracks_monotonic_time() {
        let clock = WallClock::now();
        let now = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        let a = clock.time_of_day(now);
        let b = clock.time_of_day(now + 1_000_000);
        let micros = |t: TimeOfDay| t.second as u64 * 1_000_000 + t.micros as u64;
        assert_eq!((micros(b) + 60_000_000 - micros(a)) % 60_000_000, 1_000);
    }
}
