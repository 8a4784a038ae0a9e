//! Drawing one [`Screen`] with ratatui: where each part goes at this terminal's size,
//! the title bar and the footer. The parts are drawn by their own modules.
//!
//! Layout at 80×24: a title bar, 4 lines of host numbers with sparklines, the process
//! table, a port-budget panel of 3 destinations and a footer of keys. Smaller terminals
//! lose the panel first, then the sparklines, then the host numbers: the table of
//! processes is what `top` is for.
mod detail;
mod header;
mod ports;
mod table;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
};

pub use detail::lines as detail_lines;

use crate::top::{
    format,
    keys::HELP,
    screen::{Clock, Screen},
    state::View,
};

/// Below this height the port-budget panel goes.
const PORTS_MIN_HEIGHT: u16 = 20;
/// Below this height the host numbers go.
const HEADER_MIN_HEIGHT: u16 = 12;

pub fn draw(f: &mut Frame<'_>, screen: &Screen<'_>) -> DrawnLayout {
    let area = f.area();
    let header_lines = if area.height >= HEADER_MIN_HEIGHT {
        header::HEIGHT
    } else {
        0
    };
    let ports_lines = match screen.state.view {
        View::Table if area.height >= PORTS_MIN_HEIGHT && !screen.destinations.is_empty() => {
            1 + screen.destinations.len().min(ports_rows(area.height)) as u16
        }
        _ => 0,
    };
    let [title, header_area, body, ports_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(header_lines),
        Constraint::Min(1),
        Constraint::Length(ports_lines),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(title_line(screen, title.width)), title);
    if header_lines > 0 {
        header::draw(f, header_area, screen);
    }
    let mut drawn = DrawnLayout::default();
    match screen.state.view {
        View::Table => drawn.table_rows = table::draw(f, body, screen),
        View::Detail(process) => detail::draw(f, body, screen, process),
    }
    if ports_lines > 0 {
        ports::draw(f, ports_area, screen);
    }
    f.render_widget(Paragraph::new(footer_line(screen)), footer);
    if screen.state.help {
        help(f, area);
    }
    drawn
}

/// What drawing learned that the keys need: how many rows a page holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct DrawnLayout {
    pub table_rows: usize,
}

/// Destinations shown: 3 at 24 lines, more on taller terminals.
fn ports_rows(height: u16) -> usize {
    (3 + height.saturating_sub(24) as usize / 8).min(crate::top::screen::MAX_DESTINATIONS)
}

fn title_line(screen: &Screen<'_>, width: u16) -> Line<'static> {
    let style = Style::default().add_modifier(Modifier::REVERSED);
    let clock = match &screen.clock {
        Clock::Live { elapsed_s } => format!("live {}", format::age(*elapsed_s)),
        Clock::Replay {
            at_s,
            length_s,
            ended,
        } => format!(
            "replay {} of {}{}",
            format::age(*at_s),
            format::age(*length_s),
            if *ended { " (ended)" } else { "" }
        ),
    };
    let events = &screen.frame.sample.events;
    let losses = format!(
        "dropped {}  skipped {}",
        format::count(events.dropped),
        events.skipped.map_or("-".to_owned(), format::count),
    );
    let mut left = format!(
        " portwatch top │ {clock} │ every {}",
        humantime::format_duration(screen.state.interval)
    );
    if screen.state.paused {
        left.push_str(" │ PAUSED");
    }
    // Losses on the right; they give way to the left part on a narrow terminal.
    let width = width as usize;
    let used = left.chars().count();
    let line = if used + losses.len() + 2 <= width {
        format!("{left}{:>pad$} ", losses, pad = width - used - 1)
    } else {
        format!("{left:<width$}")
    };
    let mut spans = vec![Span::styled(line, style)];
    if events.dropped > 0 || events.undecodable > 0 {
        spans[0].style = style.add_modifier(Modifier::BOLD);
    }
    Line::from(spans)
}

fn footer_line(screen: &Screen<'_>) -> Line<'static> {
    let state = screen.state;
    if let Some(text) = &state.editing {
        return Line::from(vec![
            Span::styled(" filter: ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{text}▏")),
            Span::raw("  command, workload, PID or port · Enter keep · Esc drop"),
        ]);
    }
    let keys = match state.view {
        View::Table => format!(
            " q quit  ? help  Enter details  s sort: {}{}  / filter  space pause",
            state.sort.label(),
            if state.reverse { " (reversed)" } else { "" },
        ),
        View::Detail(_) => " Esc back  ↑↓ scroll  space pause  q quit  ? help".to_owned(),
    };
    Line::from(Span::styled(
        keys,
        Style::default().add_modifier(Modifier::DIM),
    ))
}

fn help(f: &mut Frame<'_>, area: Rect) {
    let width = area.width.min(78);
    let height = (HELP.len() as u16 + 4).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let key_width = HELP
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut lines: Vec<Line<'_>> = HELP
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{key:<key_width$}  "),
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(
        "Any key closes this help. Columns and numbers: docs/top.md",
    ));
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests;
