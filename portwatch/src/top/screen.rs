//! Everything one redraw shows, put together from the frame, the history and the
//! user's choices: the rows filtered and sorted, the busiest destinations, and where
//! the data's clock stands. Drawing reads this and nothing else.
use crate::top::{
    frame::Frame,
    history::History,
    rows::{self, DestinationRow, ProcessRow, WorkloadOf},
    sort,
    state::State,
};

/// How many destinations the port-budget panel can show at most.
pub const MAX_DESTINATIONS: usize = 8;

/// Where the data comes from, for the title bar.
#[derive(Clone, Debug, PartialEq)]
pub enum Clock {
    /// Tracing this host for this long.
    Live { elapsed_s: f64 },
    /// Playing a recording: where in it, of how long; `ended` once all is played.
    Replay {
        at_s: f64,
        length_s: f64,
        ended: bool,
    },
}

pub struct Screen<'a> {
    pub frame: &'a Frame,
    pub history: &'a History,
    pub state: &'a State,
    pub clock: Clock,
    /// Shown rows, filtered and in order.
    pub rows: Vec<ProcessRow>,
    /// How many rows there are before filtering.
    pub unfiltered: usize,
    pub destinations: Vec<DestinationRow>,
}

impl<'a> Screen<'a> {
    pub fn new(
        frame: &'a Frame,
        history: &'a History,
        state: &'a State,
        clock: Clock,
        workload: WorkloadOf<'_>,
        pids: &[u32],
    ) -> Screen<'a> {
        let mut all = rows::processes(frame, history, workload);
        // --pid: only those processes (the header stays host-wide).
        if !pids.is_empty() {
            all.retain(|r| pids.contains(&r.process.pid));
        }
        let unfiltered = all.len();
        let filter = state.active_filter();
        all.retain(|r| filter.matches(r));
        sort::sort(&mut all, state.sort, state.reverse);
        Screen {
            frame,
            history,
            state,
            clock,
            rows: all,
            unfiltered,
            destinations: rows::destinations(frame, MAX_DESTINATIONS),
        }
    }

    /// The row of `process`, if it is shown.
    pub fn row_of(&self, process: crate::process::Process) -> Option<&ProcessRow> {
        self.rows.iter().find(|r| r.process == process)
    }
}
