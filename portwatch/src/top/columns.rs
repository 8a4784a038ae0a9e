//! The process table's columns, and which of them fit a terminal's width.
//!
//! Each column has a fixed width (its widest value) and a rank: when the terminal is
//! too narrow for all of them, the lowest-ranked go first, so at any width the table
//! keeps what says who leaks and who churns (PID, COMM, CLOSE_WAIT, connections/s)
//! and drops the supporting detail. WORKLOAD alone stretches into what is left.
use crate::top::{format, rows::ProcessRow, sort::SortKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// `!` (critical) or `*` (warning) when a finding about the process is open.
    Marker,
    Pid,
    Comm,
    Workload,
    Established,
    CloseWait,
    Oldest,
    Growth,
    Connections,
    TimeWaitRate,
    TimeWait,
    Lifetime,
    Failed,
}

/// Left to right as drawn.
pub const ALL: [Column; 13] = [
    Column::Marker,
    Column::Pid,
    Column::Comm,
    Column::Workload,
    Column::Established,
    Column::CloseWait,
    Column::Oldest,
    Column::Growth,
    Column::Connections,
    Column::TimeWaitRate,
    Column::TimeWait,
    Column::Lifetime,
    Column::Failed,
];

/// The narrowest WORKLOAD worth showing; it gets whatever is left beyond this.
const WORKLOAD_MIN: u16 = 10;

impl Column {
    pub fn title(self) -> &'static str {
        match self {
            Column::Marker => "",
            Column::Pid => "PID",
            Column::Comm => "COMM",
            Column::Workload => "WORKLOAD",
            Column::Established => "ESTAB",
            Column::CloseWait => "CLOSE_W",
            Column::Oldest => "OLDEST",
            Column::Growth => "CW/min",
            Column::Connections => "CONN/s",
            Column::TimeWaitRate => "TW/s",
            Column::TimeWait => "TW",
            Column::Lifetime => "LIFE",
            Column::Failed => "FAIL",
        }
    }

    /// Width in cells: its title or its widest value, whichever is wider.
    pub fn width(self) -> u16 {
        match self {
            Column::Marker => 1,
            Column::Pid => 7,
            Column::Comm => 15,
            Column::Workload => WORKLOAD_MIN,
            Column::Established => 5,
            Column::CloseWait => 7,
            Column::Oldest => 6,
            Column::Growth => 6,
            Column::Connections => 6,
            Column::TimeWaitRate => 5,
            Column::TimeWait => 5,
            Column::Lifetime => 6,
            Column::Failed => 5,
        }
    }

    /// Lower goes first when space runs out.
    fn rank(self) -> u8 {
        match self {
            Column::Pid => 13,
            Column::CloseWait => 12,
            Column::Comm => 11,
            Column::Connections => 10,
            Column::Marker => 9,
            Column::Oldest => 8,
            Column::TimeWaitRate => 7,
            Column::Growth => 6,
            Column::Established => 5,
            Column::TimeWait => 4,
            Column::Failed => 3,
            Column::Lifetime => 2,
            Column::Workload => 1,
        }
    }

    /// Numbers line up on the right.
    pub fn right_aligned(self) -> bool {
        !matches!(self, Column::Marker | Column::Comm | Column::Workload)
    }

    /// The column a sort key sorts by, to mark its title.
    pub fn of_sort(key: SortKey) -> Option<Column> {
        Some(match key {
            SortKey::CloseWait => Column::CloseWait,
            SortKey::Oldest => Column::Oldest,
            SortKey::Growth => Column::Growth,
            SortKey::Connections => Column::Connections,
            SortKey::TimeWaitRate => Column::TimeWaitRate,
            SortKey::TimeWait => Column::TimeWait,
            SortKey::Established => Column::Established,
            SortKey::Failed => Column::Failed,
            SortKey::Lifetime => Column::Lifetime,
            SortKey::Pid => Column::Pid,
            SortKey::Comm => Column::Comm,
        })
    }

    /// The cell's text for `row`.
    pub fn cell(self, row: &ProcessRow) -> String {
        let opt = |value: Option<f64>, f: fn(f64) -> String| value.map_or("-".to_owned(), f);
        match self {
            Column::Marker => match row.finding {
                Some(crate::detect::report::Severity::Critical) => "!".to_owned(),
                Some(_) => "*".to_owned(),
                None => String::new(),
            },
            Column::Pid => row.pid_text(),
            Column::Comm => row.comm.clone(),
            Column::Workload => row.workload.clone(),
            Column::Established => format::count(row.established as u64),
            Column::CloseWait => format::count(row.close_wait as u64),
            Column::Oldest => opt(row.close_wait_oldest_s, format::age),
            Column::Growth => opt(row.close_wait_per_min, format::growth),
            Column::Connections => format::rate(row.connections_per_s),
            Column::TimeWaitRate => format::rate(row.time_wait_per_s),
            Column::TimeWait => format::count(row.time_wait_held as u64),
            Column::Lifetime => opt(row.median_lifetime_s, format::lifetime),
            Column::Failed => format::count(row.failed_connects),
        }
    }
}

/// The columns that fit `width` cells (one space between columns), left to right,
/// with their widths: WORKLOAD stretched over what the others leave.
pub fn fit(width: u16) -> Vec<(Column, u16)> {
    let mut by_rank = ALL;
    by_rank.sort_by_key(|c| std::cmp::Reverse(c.rank()));
    let mut kept = Vec::new();
    let mut used: u16 = 0;
    for column in by_rank {
        let need = column.width() + u16::from(!kept.is_empty());
        // A strict prefix of the ranking: a column never shows at a narrower width
        // that did not show at a wider one.
        if used + need > width {
            break;
        }
        used += need;
        kept.push(column);
    }
    let spare = width - used;
    ALL.iter()
        .filter(|c| kept.contains(c))
        .map(|&c| {
            let w = if c == Column::Workload {
                c.width() + spare.min(30)
            } else {
                c.width()
            };
            (c, w)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(width: u16) -> Vec<Column> {
        fit(width).into_iter().map(|(c, _)| c).collect()
    }

    fn total(width: u16) -> u16 {
        let fitted = fit(width);
        fitted.iter().map(|(_, w)| w).sum::<u16>() + fitted.len().saturating_sub(1) as u16
    }

    #[test]
    fn wide_shows_every_column_and_stretches_workload() {
        assert_eq!(columns(160), ALL);
        let workload = fit(160)
            .into_iter()
            .find(|(c, _)| *c == Column::Workload)
            .unwrap()
            .1;
        assert!(workload > WORKLOAD_MIN, "{workload}");
    }

    #[test]
    fn eighty_columns_keep_what_names_leakers_and_churners() {
        let kept = columns(80);
        for needed in [
            Column::Pid,
            Column::Comm,
            Column::CloseWait,
            Column::Oldest,
            Column::Growth,
            Column::Connections,
            Column::TimeWaitRate,
            Column::Marker,
            Column::Established,
        ] {
            assert!(kept.contains(&needed), "{needed:?} missing at 80: {kept:?}");
        }
        assert!(total(80) <= 80);
    }

    #[test]
    fn narrower_folds_lowest_rank_first_and_keeps_order() {
        let mut previous = columns(200);
        for width in (20..200).rev() {
            let now = columns(width);
            assert!(total(width) <= width, "{width}: {now:?}");
            // Nothing comes back as the width shrinks.
            assert!(now.iter().all(|c| previous.contains(c)), "{width}");
            // Left-to-right order is kept.
            let order: Vec<usize> = now
                .iter()
                .map(|c| ALL.iter().position(|a| a == c).unwrap())
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{width}: {now:?}");
            previous = now;
        }
        assert_eq!(
            columns(40),
            [
                Column::Marker,
                Column::Pid,
                Column::Comm,
                Column::CloseWait,
                Column::Connections
            ]
        );
        assert_eq!(columns(24), [Column::Pid, Column::CloseWait]);
    }

    #[test]
    fn cells() {
        let row = ProcessRow {
            close_wait: 5,
            close_wait_oldest_s: Some(192.0),
            close_wait_per_min: Some(3.0),
            connections_per_s: 350.4,
            median_lifetime_s: Some(0.0012),
            finding: Some(crate::detect::report::Severity::Critical),
            alive: false,
            ..crate::top::rows::tests::row(0, "x")
        };
        assert_eq!(Column::Pid.cell(&row), "?");
        assert_eq!(Column::CloseWait.cell(&row), "5");
        assert_eq!(Column::Oldest.cell(&row), "3m12s");
        assert_eq!(Column::Growth.cell(&row), "+3.0");
        assert_eq!(Column::Connections.cell(&row), "350");
        assert_eq!(Column::Lifetime.cell(&row), "1.2ms");
        assert_eq!(Column::Marker.cell(&row), "!");
        assert_eq!(Column::Comm.cell(&row), "x");
        for column in ALL {
            assert!(
                column.title().len() <= column.width() as usize,
                "{column:?}"
            );
        }
    }
}
