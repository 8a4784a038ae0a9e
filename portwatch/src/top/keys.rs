//! Keys to actions. While a filter is being typed, printable keys are its text; else
//! each key is a command. The help screen (`?`) lists the same table as [`HELP`].
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::top::{sort::SortKey, state::Action};

/// The help screen's lines: key, what it does.
pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "select a process; scroll the detail view"),
    ("PgUp PgDn Home End", "a page up or down; the first or last"),
    ("Enter", "details of the selected process"),
    ("Esc", "back to the table; drop a filter being typed"),
    ("s  r", "next sort column; reverse the order"),
    ("c n t o", "sort by CLOSE_WAIT, conn/s, TW made/s, oldest"),
    ("e f l p", "sort by ESTAB, failed, lifetime, PID"),
    ("/", "filter: command, workload, PID or port"),
    ("space", "pause the screen; data keeps accumulating"),
    (".", "paused: one interval forward (replay)"),
    ("+ -", "longer or shorter interval"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

/// The action `key` stands for, if any; `editing` is true while a filter is typed.
pub fn action(key: KeyEvent, editing: bool) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if editing {
        return match key.code {
            KeyCode::Enter => Some(Action::ApplyFilter),
            KeyCode::Esc => Some(Action::CancelFilter),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) if !ctrl => Some(Action::FilterChar(c)),
            _ => None,
        };
    }
    if ctrl {
        return None;
    }
    Some(match key.code {
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home => Action::First,
        KeyCode::End => Action::Last,
        KeyCode::Enter => Action::Open,
        KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => Action::Back,
        KeyCode::Char(c) => match c {
            'q' => Action::Quit,
            '?' => Action::Help,
            's' => Action::NextSort,
            'r' => Action::Reverse,
            '/' => Action::EditFilter,
            ' ' => Action::Pause,
            '.' => Action::Step,
            '+' | '=' => Action::Slower,
            '-' | '_' => Action::Faster,
            'c' => Action::SortBy(SortKey::CloseWait),
            'n' => Action::SortBy(SortKey::Connections),
            't' => Action::SortBy(SortKey::TimeWaitRate),
            'o' => Action::SortBy(SortKey::Oldest),
            'e' => Action::SortBy(SortKey::Established),
            'f' => Action::SortBy(SortKey::Failed),
            'l' => Action::SortBy(SortKey::Lifetime),
            'p' => Action::SortBy(SortKey::Pid),
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn commands() {
        assert_eq!(action(key(KeyCode::Char('j')), false), Some(Action::Down));
        assert_eq!(action(key(KeyCode::Up), false), Some(Action::Up));
        assert_eq!(action(key(KeyCode::Enter), false), Some(Action::Open));
        assert_eq!(action(key(KeyCode::Esc), false), Some(Action::Back));
        assert_eq!(action(key(KeyCode::Char(' ')), false), Some(Action::Pause));
        assert_eq!(
            action(key(KeyCode::Char('n')), false),
            Some(Action::SortBy(SortKey::Connections))
        );
        assert_eq!(action(key(KeyCode::Char('+')), false), Some(Action::Slower));
        assert_eq!(action(key(KeyCode::Char('q')), false), Some(Action::Quit));
        assert_eq!(action(key(KeyCode::Char('Z')), false), None);
    }

    #[test]
    fn ctrl_c_quits_even_while_typing() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action(ctrl_c, false), Some(Action::Quit));
        assert_eq!(action(ctrl_c, true), Some(Action::Quit));
    }

    #[test]
    fn typing_a_filter_takes_every_printable_key() {
        assert_eq!(
            action(key(KeyCode::Char('q')), true),
            Some(Action::FilterChar('q'))
        );
        assert_eq!(
            action(key(KeyCode::Char('/')), true),
            Some(Action::FilterChar('/'))
        );
        assert_eq!(action(key(KeyCode::Enter), true), Some(Action::ApplyFilter));
        assert_eq!(action(key(KeyCode::Esc), true), Some(Action::CancelFilter));
    }

    #[test]
    fn releases_are_ignored() {
        let mut release = key(KeyCode::Char('q'));
        release.kind = KeyEventKind::Release;
        assert_eq!(action(release, false), None);
    }
}
