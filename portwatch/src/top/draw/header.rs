//! The host's numbers: sockets per state and the rates, each with a sparkline of the
//! frames the history holds (the last minutes). Two columns of four; without the
//! sparklines below 60 columns.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Sparkline},
};

use crate::top::{format, history::HostPoint, screen::Screen};

pub const HEIGHT: u16 = 4;

/// Label and value take this much of a metric's cell; the sparkline the rest.
const LABEL_WIDTH: u16 = 11;
const VALUE_WIDTH: u16 = 7;
/// Below this width a cell shows no sparkline.
const SPARKLINE_MIN_TERMINAL: u16 = 60;

struct Metric {
    label: &'static str,
    value: fn(&HostPoint) -> f64,
    text: fn(f64) -> String,
}

const COUNT: fn(f64) -> String = |v| format::count(v as u64);

const METRICS: [Metric; 8] = [
    Metric {
        label: "ESTAB",
        value: |p| p.established as f64,
        text: COUNT,
    },
    Metric {
        label: "CLOSE_WAIT",
        value: |p| p.close_wait as f64,
        text: COUNT,
    },
    Metric {
        label: "TIME_WAIT",
        value: |p| p.time_wait as f64,
        text: COUNT,
    },
    Metric {
        label: "other",
        value: |p| p.other as f64,
        text: COUNT,
    },
    Metric {
        label: "conn/s",
        value: |p| p.connections_per_s,
        text: format::rate,
    },
    Metric {
        label: "TW made/s",
        value: |p| p.time_wait_per_s,
        text: format::rate,
    },
    Metric {
        label: "failed/s",
        value: |p| p.failed_per_s,
        text: format::rate,
    },
    Metric {
        label: "records/s",
        value: |p| p.events_per_s,
        text: format::rate,
    },
];

pub fn draw(f: &mut Frame<'_>, area: Rect, screen: &Screen<'_>) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let sparklines = area.width >= SPARKLINE_MIN_TERMINAL;
    let latest = screen.history.latest();
    for (i, metric) in METRICS.iter().enumerate() {
        let column = if i < 4 { left } else { right };
        let line = Rect {
            y: column.y + (i % 4) as u16,
            height: 1,
            ..column
        };
        if line.y >= area.bottom() {
            continue;
        }
        let value = (metric.text)((metric.value)(&latest));
        let text = Line::from(vec![
            Span::raw(format!(
                " {:<w$}",
                metric.label,
                w = LABEL_WIDTH as usize - 1
            )),
            Span::styled(
                format!("{value:>w$} ", w = VALUE_WIDTH as usize - 1),
                Style::default().add_modifier(Modifier::BOLD),
            ),
        ]);
        f.render_widget(Paragraph::new(text), line);
        let spark = Rect {
            x: line.x + LABEL_WIDTH + VALUE_WIDTH,
            width: line.width.saturating_sub(LABEL_WIDTH + VALUE_WIDTH + 1),
            ..line
        };
        if sparklines && spark.width > 0 {
            let points = screen.history.points();
            let skip = points.len().saturating_sub(spark.width as usize);
            // Tenths, so that rates below 1/s still show.
            let data: Vec<u64> = points
                .iter()
                .skip(skip)
                .map(|p| ((metric.value)(p) * 10.0).round().max(0.0) as u64)
                .collect();
            f.render_widget(Sparkline::default().data(data), spark);
        }
    }
}
