//! The process table's order. Every order ends with the same tie-breaks (CLOSE_WAIT,
//! then the oldest, then the PID), so rows with equal keys keep their places from one
//! redraw to the next instead of trading them.
use std::cmp::Ordering;

use crate::top::rows::ProcessRow;

/// A column to sort by (`--sort`, or a key in `top`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Sockets in CLOSE_WAIT, then the oldest: leakers first.
    #[default]
    CloseWait,
    /// The oldest CLOSE_WAIT socket's age.
    Oldest,
    /// CLOSE_WAIT sockets gained per minute.
    Growth,
    /// Connections opened per second: churners first.
    Connections,
    /// TIME_WAIT sockets made per second.
    TimeWaitRate,
    /// TIME_WAIT sockets held now.
    TimeWait,
    /// ESTABLISHED sockets.
    Established,
    /// Connects that failed for want of a local port.
    Failed,
    /// Median connection lifetime, shortest first.
    Lifetime,
    /// Process ID, lowest first.
    Pid,
    /// Command name, alphabetically.
    Comm,
}

impl SortKey {
    /// In the order `s` steps through them.
    pub const ALL: [SortKey; 11] = [
        SortKey::CloseWait,
        SortKey::Oldest,
        SortKey::Growth,
        SortKey::Connections,
        SortKey::TimeWaitRate,
        SortKey::TimeWait,
        SortKey::Established,
        SortKey::Failed,
        SortKey::Lifetime,
        SortKey::Pid,
        SortKey::Comm,
    ];

    pub fn next(self) -> SortKey {
        let at = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    /// What the footer calls it.
    pub fn label(self) -> &'static str {
        match self {
            SortKey::CloseWait => "CLOSE_WAIT",
            SortKey::Oldest => "oldest",
            SortKey::Growth => "CW growth",
            SortKey::Connections => "conn/s",
            SortKey::TimeWaitRate => "TW made/s",
            SortKey::TimeWait => "TW held",
            SortKey::Established => "ESTAB",
            SortKey::Failed => "failed",
            SortKey::Lifetime => "lifetime",
            SortKey::Pid => "PID",
            SortKey::Comm => "COMM",
        }
    }

    /// `a` before `b` in this order (reversed when `reverse`).
    fn compare(self, a: &ProcessRow, b: &ProcessRow) -> Ordering {
        let desc = |x: f64, y: f64| y.total_cmp(&x);
        let opt = |x: Option<f64>| x.unwrap_or(f64::NEG_INFINITY);
        match self {
            SortKey::CloseWait => b.close_wait.cmp(&a.close_wait),
            SortKey::Oldest => desc(opt(a.close_wait_oldest_s), opt(b.close_wait_oldest_s)),
            SortKey::Growth => desc(opt(a.close_wait_per_min), opt(b.close_wait_per_min)),
            SortKey::Connections => desc(a.connections_per_s, b.connections_per_s),
            SortKey::TimeWaitRate => desc(a.time_wait_per_s, b.time_wait_per_s),
            SortKey::TimeWait => b.time_wait_held.cmp(&a.time_wait_held),
            SortKey::Established => b.established.cmp(&a.established),
            SortKey::Failed => b.failed_connects.cmp(&a.failed_connects),
            // Shortest first: churners have the short lives; none at all goes last.
            SortKey::Lifetime => a
                .median_lifetime_s
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.median_lifetime_s.unwrap_or(f64::INFINITY)),
            SortKey::Pid => Ordering::Equal,
            SortKey::Comm => a.comm.cmp(&b.comm),
        }
    }
}

/// Sorts `rows` by `key`, most interesting first (or last, `reverse`).
pub fn sort(rows: &mut [ProcessRow], key: SortKey, reverse: bool) {
    rows.sort_by(|a, b| {
        let primary = key.compare(a, b);
        let ties = SortKey::CloseWait
            .compare(a, b)
            .then(SortKey::Oldest.compare(a, b))
            .then(a.process.cmp(&b.process));
        let order = primary.then(ties);
        if reverse { order.reverse() } else { order }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{process::Process, top::rows::tests::row};

    fn pids(rows: &[ProcessRow]) -> Vec<u32> {
        rows.iter().map(|r| r.process.pid).collect()
    }

    #[test]
    fn default_is_close_wait_then_oldest() {
        let mut rows = vec![
            ProcessRow {
                close_wait: 3,
                close_wait_oldest_s: Some(5.0),
                ..row(1, "a")
            },
            ProcessRow {
                close_wait: 3,
                close_wait_oldest_s: Some(50.0),
                ..row(2, "b")
            },
            ProcessRow {
                close_wait: 7,
                ..row(3, "c")
            },
            row(4, "d"),
        ];
        sort(&mut rows, SortKey::default(), false);
        assert_eq!(pids(&rows), [3, 2, 1, 4]);
        sort(&mut rows, SortKey::default(), true);
        assert_eq!(pids(&rows), [4, 1, 2, 3]);
    }

    #[test]
    fn by_connections_and_lifetime() {
        let mut rows = vec![
            ProcessRow {
                connections_per_s: 2.0,
                median_lifetime_s: Some(3.0),
                ..row(1, "keepalive")
            },
            ProcessRow {
                connections_per_s: 300.0,
                median_lifetime_s: Some(0.001),
                ..row(2, "churn")
            },
            row(3, "idle"),
        ];
        sort(&mut rows, SortKey::Connections, false);
        assert_eq!(pids(&rows), [2, 1, 3]);
        sort(&mut rows, SortKey::Lifetime, false);
        assert_eq!(pids(&rows), [2, 1, 3]);
    }

    #[test]
    fn equal_keys_fall_back_to_close_wait_then_pid() {
        let mut rows = vec![
            row(9, "x"),
            ProcessRow {
                close_wait: 1,
                ..row(8, "x")
            },
            row(7, "x"),
        ];
        sort(&mut rows, SortKey::Comm, false);
        assert_eq!(pids(&rows), [8, 7, 9]);
        sort(&mut rows, SortKey::Pid, false);
        assert_eq!(pids(&rows), [8, 7, 9]);
        rows.retain(|r| r.close_wait == 0);
        sort(&mut rows, SortKey::Pid, false);
        assert_eq!(pids(&rows), [7, 9]);
        assert_eq!(rows[0].process, Process::after_exits(7, 0));
    }

    #[test]
    fn sort_keys_cycle_through_all() {
        let mut key = SortKey::default();
        for _ in 0..SortKey::ALL.len() {
            key = key.next();
        }
        assert_eq!(key, SortKey::default());
    }
}
