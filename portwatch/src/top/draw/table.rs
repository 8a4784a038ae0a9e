//! The process table: the columns that fit, the selected row highlighted and kept in
//! view, the sorted column's title underlined.
use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use crate::{
    detect::report::Severity,
    top::{
        columns::{self, Column},
        format,
        screen::Screen,
    },
};

/// Draws the table; returns how many rows it has room for.
pub fn draw(f: &mut Frame<'_>, area: Rect, screen: &Screen<'_>) -> usize {
    let [title, table_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    f.render_widget(Paragraph::new(title_line(screen)), title);

    let fitted = columns::fit(table_area.width);
    let sorted = Column::of_sort(screen.state.sort);
    let header = Row::new(fitted.iter().map(|&(column, width)| {
        let mut style = Style::default().add_modifier(Modifier::BOLD);
        if Some(column) == sorted {
            style = style.add_modifier(Modifier::UNDERLINED);
        }
        aligned(column, column.title(), width).style(style)
    }));
    let rows = screen.rows.iter().map(|row| {
        Row::new(fitted.iter().map(|&(column, width)| {
            let cell = aligned(column, &column.cell(row), width);
            match (column, row.finding) {
                (Column::Marker, Some(Severity::Critical)) => {
                    cell.style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD))
                }
                (Column::Marker, Some(_)) => cell.style(Style::default().fg(Color::Yellow)),
                _ => cell,
            }
        }))
    });
    let table = Table::new(rows, fitted.iter().map(|&(_, w)| Constraint::Length(w)))
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let selected = screen
        .state
        .selected
        .and_then(|p| screen.rows.iter().position(|r| r.process == p));
    let mut table_state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, table_area, &mut table_state);
    if screen.rows.is_empty() {
        let message = if screen.unfiltered > 0 {
            " no process matches the filter (/ to change it, Esc while typing to drop it)"
        } else {
            " no process holds a TCP socket or opened a connection yet"
        };
        let below_header = Rect {
            y: table_area.y + 1,
            height: table_area.height.saturating_sub(1).min(1),
            ..table_area
        };
        f.render_widget(Paragraph::new(message), below_header);
    }
    table_area.height.saturating_sub(1) as usize
}

fn aligned<'a>(column: Column, text: &str, width: u16) -> Cell<'a> {
    let text = format::clip(text, width as usize);
    let line = Line::from(text);
    Cell::from(if column.right_aligned() {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

fn title_line(screen: &Screen<'_>) -> Line<'static> {
    let state = screen.state;
    let filter = state.active_filter();
    let mut title = format!(
        " PROCESSES {} of {}, by {}{}",
        screen.rows.len(),
        screen.unfiltered,
        state.sort.label(),
        if state.reverse { " (reversed)" } else { "" },
    );
    if !filter.is_empty() {
        title.push_str(&format!(", filter \"{}\"", filter.text()));
    }
    let open = screen.frame.findings.len();
    let mut spans = vec![Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if open > 0 {
        spans.push(Span::raw(format!(
            "   ! critical  * warning: {open} open finding{}",
            if open == 1 { "" } else { "s" }
        )));
    }
    Line::from(spans)
}
