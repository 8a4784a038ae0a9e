//! The port-budget panel: the destinations nearest running out of local ports, each
//! with a gauge of ports in use against its capacity, the TIME_WAIT share of them, the
//! forecast and the process holding most. Parts drop out right to left as the terminal
//! narrows; the destination, gauge and numbers stay.
use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
};

use crate::{
    output::format::Endpoint,
    top::{format, rows::DestinationRow, screen::Screen},
};

/// The destination's width; with a namespace's inode after it, wider.
const DESTINATION_WIDTH: usize = 21;
const DESTINATION_WITH_NAMESPACE: usize = 32;
const NUMBERS_WIDTH: usize = 17;
const TIME_WAIT_WIDTH: usize = 8;
const FORECAST_WIDTH: usize = 10;
const TOP_WIDTH: usize = 32;
const GAUGE_MIN: usize = 8;

pub fn draw(f: &mut Frame<'_>, area: Rect, screen: &Screen<'_>) {
    let mut lines = vec![Line::from(Span::styled(
        " PORT BUDGET  ports in use of capacity · TIME_WAIT share · forecast · top user",
        Style::default().add_modifier(Modifier::BOLD),
    ))];
    let width = area.width as usize;
    // Namespaces are named only when two are shown: each has its own ports, but the
    // common case is one, and its inode would crowd out the address.
    let first = screen.destinations.first().map(|d| d.netns);
    let namespaces = screen.destinations.iter().any(|d| Some(d.netns) != first);
    for row in screen
        .destinations
        .iter()
        .take(area.height.saturating_sub(1) as usize)
    {
        lines.push(line(row, width, namespaces));
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn line(row: &DestinationRow, width: usize, namespaces: bool) -> Line<'static> {
    // What fits, in the order parts are given up.
    let destination_width = if namespaces {
        DESTINATION_WITH_NAMESPACE
    } else {
        DESTINATION_WIDTH
    };
    let mut fixed = 1 + destination_width + 1 + NUMBERS_WIDTH;
    let with_tw = fixed + TIME_WAIT_WIDTH + FORECAST_WIDTH + GAUGE_MIN <= width;
    if with_tw {
        fixed += TIME_WAIT_WIDTH + FORECAST_WIDTH;
    }
    let with_top = with_tw && fixed + TOP_WIDTH + GAUGE_MIN + 2 <= width;
    if with_top {
        fixed += TOP_WIDTH + 2;
    }
    let gauge_width = width.saturating_sub(fixed + 2).min(40);

    let destination = match row.netns {
        netns if namespaces && netns != 0 => {
            format!("{} ns{netns}", Endpoint(row.daddr, row.dport))
        }
        _ => Endpoint(row.daddr, row.dport).to_string(),
    };
    let share = row.share();
    let color = match row.eta_s {
        _ if share >= 1.0 => Color::Red,
        Some(_) => Color::Red,
        None if share >= 0.8 => Color::Yellow,
        None => Color::Green,
    };
    let mut spans = vec![Span::raw(format!(
        " {:<w$} ",
        format::clip(&destination, destination_width),
        w = destination_width
    ))];
    if gauge_width > 0 {
        let filled = ((share * gauge_width as f64).ceil() as usize).min(gauge_width);
        let filled = if row.in_use > 0 { filled.max(1) } else { 0 };
        spans.push(Span::raw("["));
        spans.push(Span::styled("█".repeat(filled), Style::default().fg(color)));
        spans.push(Span::raw(format!("{}]", "·".repeat(gauge_width - filled))));
    }
    spans.push(Span::raw(format!(
        " {:>w$}",
        format!(
            "{}/{} {}",
            format::count(row.in_use as u64),
            format::count(u64::from(row.capacity)),
            format::percent(share)
        ),
        w = NUMBERS_WIDTH - 1
    )));
    if with_tw {
        spans.push(Span::raw(format!(
            " {:>w$}",
            format!("TW {}", format::percent(row.time_wait_share())),
            w = TIME_WAIT_WIDTH - 1
        )));
        spans.push(Span::styled(
            format!(" {:>w$}", forecast(row), w = FORECAST_WIDTH - 1),
            Style::default().fg(color),
        ));
    }
    if with_top && let Some((pid, comm, held)) = &row.top {
        spans.push(Span::raw(format!(
            "  {}",
            format::clip(&format!("{comm} ({pid}) {held}"), TOP_WIDTH)
        )));
    }
    Line::from(spans)
}

/// The forecast, and `FULL` when every port is taken now: the recent rate may be
/// sustainable (nothing opened lately) while nothing is left.
fn forecast(row: &DestinationRow) -> String {
    if row.capacity > 0 && row.in_use >= row.capacity as usize {
        return format::forecast(Some(0.0));
    }
    format::forecast(row.eta_s)
}
