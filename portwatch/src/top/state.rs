//! What the user has chosen: the view, the selected process, the order, the filter,
//! pause and interval. Pure: an [`Action`] and the rows on screen in, a new state out;
//! keys are mapped to actions in `keys`, and drawing reads the state.
use std::time::Duration;

use crate::{
    process::Process,
    top::{filter::Filter, rows::ProcessRow, sort::SortKey},
};

/// The intervals `+` and `-` step through.
pub const INTERVALS: [Duration; 7] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Table,
    /// One process's CLOSE_WAIT sockets, destinations, lifetimes and findings.
    Detail(Process),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
    Open,
    Back,
    NextSort,
    SortBy(SortKey),
    Reverse,
    /// `/`: start typing a filter.
    EditFilter,
    FilterChar(char),
    FilterBackspace,
    /// Enter while typing: keep the filter.
    ApplyFilter,
    /// Esc while typing: drop it.
    CancelFilter,
    Pause,
    /// One interval forward (a paused replay).
    Step,
    Faster,
    Slower,
    Help,
    Quit,
}

/// What an action asks of the loop besides a redraw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    pub quit: bool,
    /// The frame must be taken again now (what it copies changed: the focused
    /// process, the port filtered by).
    pub resample: bool,
    /// A paused replay moves one interval forward.
    pub step: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub view: View,
    pub sort: SortKey,
    pub reverse: bool,
    pub filter: Filter,
    /// The filter being typed, shown live but applied on Enter.
    pub editing: Option<String>,
    /// The selected process; None before the first frame.
    pub selected: Option<Process>,
    /// The user moved the selection: it sticks to its process as rows move. Until
    /// then it follows the top row, so the worst process is the one Enter opens.
    pub chosen: bool,
    pub paused: bool,
    pub interval: Duration,
    pub help: bool,
    /// How far the detail view is scrolled.
    pub scroll: u16,
    /// Rows a page moves (the table's height), set by drawing.
    pub page: usize,
}

impl State {
    pub fn new(sort: SortKey, interval: Duration) -> Self {
        State {
            view: View::Table,
            sort,
            reverse: false,
            filter: Filter::default(),
            editing: None,
            selected: None,
            chosen: false,
            paused: false,
            interval,
            help: false,
            scroll: 0,
            page: 10,
        }
    }

    /// The filter in effect: the one being typed, as it is typed.
    pub fn active_filter(&self) -> Filter {
        match &self.editing {
            Some(text) => Filter::new(text),
            None => self.filter.clone(),
        }
    }

    /// Keeps the selection on a row that is shown: the top row until the user moves
    /// it, and again when the chosen process is gone or filtered out.
    pub fn settle(&mut self, rows: &[ProcessRow]) {
        if !self.chosen || !rows.iter().any(|r| Some(r.process) == self.selected) {
            self.chosen = false;
            self.selected = rows.first().map(|r| r.process);
        }
    }

    /// Applies `action`; `rows` are the rows on screen, in order.
    pub fn apply(&mut self, action: Action, rows: &[ProcessRow]) -> Effect {
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return Effect {
                quit: action == Action::Quit,
                ..Effect::default()
            };
        }
        let mut effect = Effect::default();
        match action {
            Action::Quit => effect.quit = true,
            Action::Help => self.help = true,
            Action::Up => self.scroll_or_move(rows, -1),
            Action::Down => self.scroll_or_move(rows, 1),
            Action::PageUp => self.scroll_or_move(rows, -(self.page.max(1) as isize)),
            Action::PageDown => self.scroll_or_move(rows, self.page.max(1) as isize),
            Action::First => self.scroll_or_move(rows, isize::MIN / 2),
            Action::Last => self.scroll_or_move(rows, isize::MAX / 2),
            Action::Open => {
                if let (View::Table, Some(process)) = (self.view, self.selected) {
                    self.view = View::Detail(process);
                    self.scroll = 0;
                    effect.resample = true;
                }
            }
            Action::Back => self.view = View::Table,
            Action::NextSort => self.sort = self.sort.next(),
            Action::SortBy(key) => {
                // The same key again flips the order.
                if self.sort == key {
                    self.reverse = !self.reverse;
                } else {
                    self.sort = key;
                    self.reverse = false;
                }
            }
            Action::Reverse => self.reverse = !self.reverse,
            Action::EditFilter => self.editing = Some(self.filter.text().to_owned()),
            Action::FilterChar(c) => {
                if let Some(text) = &mut self.editing {
                    text.push(c);
                    effect.resample = true;
                }
            }
            Action::FilterBackspace => {
                if let Some(text) = &mut self.editing {
                    text.pop();
                    effect.resample = true;
                }
            }
            Action::ApplyFilter => {
                if let Some(text) = self.editing.take() {
                    self.filter = Filter::new(&text);
                }
            }
            Action::CancelFilter => {
                if self.editing.take().is_some() {
                    effect.resample = true;
                }
            }
            Action::Pause => self.paused = !self.paused,
            Action::Step => effect.step = self.paused,
            Action::Faster => self.interval = step_interval(self.interval, -1),
            Action::Slower => self.interval = step_interval(self.interval, 1),
        }
        effect
    }

    fn scroll_or_move(&mut self, rows: &[ProcessRow], by: isize) {
        match self.view {
            View::Detail(_) => {
                self.scroll = (self.scroll as isize + by).clamp(0, u16::MAX as isize) as u16;
            }
            View::Table => {
                if rows.is_empty() {
                    return;
                }
                let at = rows
                    .iter()
                    .position(|r| Some(r.process) == self.selected)
                    .unwrap_or(0) as isize;
                let to = (at.saturating_add(by)).clamp(0, rows.len() as isize - 1);
                self.selected = Some(rows[to as usize].process);
                self.chosen = true;
            }
        }
    }
}

/// The next interval of [`INTERVALS`] up (`1`) or down (`-1`) from `now`.
fn step_interval(now: Duration, direction: isize) -> Duration {
    let next = match INTERVALS.iter().position(|i| *i == now) {
        Some(at) => at as isize + direction,
        // An interval between two steps (from --interval) goes to its neighbour.
        None => {
            let above = INTERVALS
                .iter()
                .position(|i| *i > now)
                .unwrap_or(INTERVALS.len()) as isize;
            if direction > 0 { above } else { above - 1 }
        }
    };
    INTERVALS[next.clamp(0, INTERVALS.len() as isize - 1) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::rows::tests::row;

    fn rows() -> Vec<ProcessRow> {
        vec![row(1, "a"), row(2, "b"), row(3, "c")]
    }

    fn state() -> State {
        let mut state = State::new(SortKey::default(), Duration::from_secs(1));
        state.settle(&rows());
        state
    }

    #[test]
    fn selection_follows_the_top_row_until_moved() {
        let mut s = state();
        assert_eq!(s.selected.map(|p| p.pid), Some(1));
        s.settle(&[row(2, "b"), row(1, "a")]);
        assert_eq!(s.selected.map(|p| p.pid), Some(2));
    }

    #[test]
    fn selection_moves_within_the_rows_and_sticks_to_its_process() {
        let rows = rows();
        let mut s = state();
        assert_eq!(s.selected.map(|p| p.pid), Some(1));
        s.apply(Action::Up, &rows);
        assert_eq!(s.selected.map(|p| p.pid), Some(1));
        s.apply(Action::Down, &rows);
        s.apply(Action::Down, &rows);
        s.apply(Action::Down, &rows);
        assert_eq!(s.selected.map(|p| p.pid), Some(3));
        s.apply(Action::First, &rows);
        assert_eq!(s.selected.map(|p| p.pid), Some(1));
        s.apply(Action::Last, &rows);
        assert_eq!(s.selected.map(|p| p.pid), Some(3));
        // Re-sorted: the selection follows process 3 wherever it is.
        let reordered = vec![row(3, "c"), row(1, "a")];
        s.settle(&reordered);
        assert_eq!(s.selected.map(|p| p.pid), Some(3));
        // Gone: the first row.
        s.settle(&[row(1, "a")]);
        assert_eq!(s.selected.map(|p| p.pid), Some(1));
    }

    #[test]
    fn enter_opens_the_selected_process_and_esc_goes_back() {
        let rows = rows();
        let mut s = state();
        s.apply(Action::Down, &rows);
        let effect = s.apply(Action::Open, &rows);
        assert!(effect.resample);
        assert_eq!(s.view, View::Detail(rows[1].process));
        // Arrows scroll the detail view, they do not change the selection.
        s.apply(Action::Down, &rows);
        assert_eq!((s.scroll, s.selected), (1, Some(rows[1].process)));
        s.apply(Action::Back, &rows);
        assert_eq!(s.view, View::Table);
    }

    #[test]
    fn filter_is_typed_live_and_kept_or_dropped() {
        let mut s = state();
        s.apply(Action::EditFilter, &[]);
        for c in "leak".chars() {
            s.apply(Action::FilterChar(c), &[]);
        }
        assert_eq!(s.active_filter(), Filter::new("leak"));
        assert!(s.filter.is_empty());
        s.apply(Action::ApplyFilter, &[]);
        assert_eq!(s.filter, Filter::new("leak"));
        assert_eq!(s.editing, None);
        s.apply(Action::EditFilter, &[]);
        s.apply(Action::FilterBackspace, &[]);
        assert_eq!(s.active_filter(), Filter::new("lea"));
        s.apply(Action::CancelFilter, &[]);
        assert_eq!(s.active_filter(), Filter::new("leak"));
    }

    #[test]
    fn sort_keys_pick_and_flip() {
        let mut s = state();
        s.apply(Action::SortBy(SortKey::Connections), &[]);
        assert_eq!((s.sort, s.reverse), (SortKey::Connections, false));
        s.apply(Action::SortBy(SortKey::Connections), &[]);
        assert!(s.reverse);
        s.apply(Action::NextSort, &[]);
        assert_eq!(s.sort, SortKey::Connections.next());
    }

    #[test]
    fn intervals_step_and_stop_at_the_ends() {
        let mut s = state();
        s.apply(Action::Slower, &[]);
        assert_eq!(s.interval, Duration::from_secs(2));
        s.apply(Action::Faster, &[]);
        s.apply(Action::Faster, &[]);
        s.apply(Action::Faster, &[]);
        s.apply(Action::Faster, &[]);
        assert_eq!(s.interval, Duration::from_millis(250));
        assert_eq!(
            step_interval(Duration::from_secs(30), 1),
            Duration::from_secs(30)
        );
        // From an interval between steps, to its neighbours.
        assert_eq!(
            step_interval(Duration::from_secs(3), 1),
            Duration::from_secs(5)
        );
        assert_eq!(
            step_interval(Duration::from_secs(3), -1),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn help_swallows_the_next_key_but_not_quit() {
        let mut s = state();
        s.apply(Action::Help, &[]);
        assert!(s.help);
        let effect = s.apply(Action::Down, &rows());
        assert!(!s.help && !effect.quit);
        assert_eq!(s.selected.map(|p| p.pid), Some(1));
        s.apply(Action::Help, &[]);
        assert!(s.apply(Action::Quit, &[]).quit);
    }

    #[test]
    fn step_only_when_paused() {
        let mut s = state();
        assert!(!s.apply(Action::Step, &[]).step);
        s.apply(Action::Pause, &[]);
        assert!(s.apply(Action::Step, &[]).step);
    }
}
