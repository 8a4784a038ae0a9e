//! The detail view of one process: its numbers, its open findings with the advice
//! `report` gives, its CLOSE_WAIT sockets (oldest first, with addresses and age), the
//! destinations it connects to, and a histogram of its connections' lifetimes.
use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Wrap},
};

use crate::{
    detect::report::Severity,
    live::LIFETIME_BUCKETS_S,
    output::{advice, format::Endpoint},
    process::Process,
    top::{format, screen::Screen},
};

/// The widest histogram bar.
const BAR_WIDTH: usize = 30;

pub fn draw(f: &mut Frame<'_>, area: Rect, screen: &Screen<'_>, process: Process) {
    let paragraph = Paragraph::new(lines(screen, process))
        .wrap(Wrap { trim: false })
        .scroll((screen.state.scroll, 0));
    f.render_widget(paragraph, area);
}

fn heading(text: String) -> Line<'static> {
    Line::from(Span::styled(
        text,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

/// The view's lines, before wrapping.
pub fn lines(screen: &Screen<'_>, process: Process) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let sample = screen
        .frame
        .sample
        .processes
        .iter()
        .find(|p| p.process == process);
    let Some(row) = screen.row_of(process) else {
        lines.push(heading(format!(" PID {}", process.pid)));
        lines.push(Line::from(
            " not shown now: it holds no socket and opened no connection in the last \
             interval, or the filter hides it. Esc goes back.",
        ));
        return lines;
    };

    lines.push(heading(format!(
        " PID {}  {}  workload {}{}",
        row.pid_text(),
        row.comm,
        row.workload,
        if row.alive {
            ""
        } else {
            "  (exited: its sockets live on)"
        }
    )));
    lines.push(Line::from(format!(
        " CLOSE_WAIT {} (oldest {}, {}/min)  ESTAB {}  TIME_WAIT {}  conn/s {}  TW made/s {}  failed connects {}",
        row.close_wait,
        row.close_wait_oldest_s.map_or("-".to_owned(), format::age),
        row.close_wait_per_min.map_or("-".to_owned(), format::growth),
        row.established,
        row.time_wait_held,
        format::rate(row.connections_per_s),
        format::rate(row.time_wait_per_s),
        row.failed_connects,
    )));
    lines.push(Line::from(""));

    // Findings about this process, and exhaustion findings of destinations it uses.
    let destinations: Vec<_> = screen
        .frame
        .focus
        .as_ref()
        .filter(|f| f.process == process)
        .map(|f| {
            f.destinations
                .iter()
                .map(|d| (d.0.daddr, d.0.dport))
                .collect()
        })
        .unwrap_or_default();
    let findings: Vec<_> = screen
        .frame
        .findings
        .iter()
        .filter(|f| match &f.evidence {
            crate::detect::report::Evidence::Exhaustion { daddr, dport, .. } => {
                destinations.contains(&(*daddr, *dport))
            }
            _ => f.process == process,
        })
        .collect();
    lines.push(heading(format!(" FINDINGS ({})", findings.len())));
    if findings.is_empty() {
        lines.push(Line::from(" none open"));
    }
    for finding in findings {
        let (name, color) = match finding.severity {
            Severity::Critical => ("critical", Color::Red),
            Severity::Warning => ("warning", Color::Yellow),
            Severity::Info => ("info", Color::Reset),
        };
        lines.push(Line::from(vec![
            Span::styled(
                format!(" [{name}] "),
                Style::default().fg(color).add_modifier(Modifier::BOLD),
            ),
            Span::styled(
                crate::live::kind_name(finding.kind).replace('_', " "),
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(": {}", advice::summary(&finding.evidence))),
        ]));
        lines.push(Line::from(Span::styled(
            format!("   {}", advice::advice(&finding.evidence)),
            Style::default().add_modifier(Modifier::ITALIC),
        )));
    }
    lines.push(Line::from(""));

    let focus = screen.frame.focus.as_ref().filter(|f| f.process == process);
    if let Some(focus) = focus {
        lines.push(heading(format!(
            " CLOSE_WAIT SOCKETS ({}, oldest first{})",
            focus.close_wait_total,
            if focus.close_waits.len() < focus.close_wait_total {
                format!("; the {} oldest", focus.close_waits.len())
            } else {
                String::new()
            }
        )));
        if !focus.close_waits.is_empty() {
            lines.push(Line::from(format!(
                "   {:<28} {:<28} {:>7}",
                "LOCAL", "PEER", "AGE"
            )));
        }
        for socket in &focus.close_waits {
            lines.push(Line::from(format!(
                "   {:<28} {:<28} {:>7}",
                Endpoint(socket.local.0, socket.local.1).to_string(),
                Endpoint(socket.peer.0, socket.peer.1).to_string(),
                format!(
                    "{}{}",
                    if socket.exact { "" } else { "≥" },
                    format::age(socket.age_s)
                ),
            )));
        }
        lines.push(Line::from(""));
        lines.push(heading(format!(
            " DESTINATIONS ({})",
            focus.destinations.len()
        )));
        if !focus.destinations.is_empty() {
            lines.push(Line::from(format!(
                "   {:<28} {:>9} {:>11}",
                "DESTINATION", "OPENED", "PORTS HELD"
            )));
        }
        for (destination, opened, held) in focus.destinations.iter().take(20) {
            lines.push(Line::from(format!(
                "   {:<28} {:>9} {:>11}",
                Endpoint(destination.daddr, destination.dport).to_string(),
                format::count(*opened),
                format::count(*held as u64),
            )));
        }
        lines.push(Line::from(""));
    }

    if let Some(sample) = sample {
        let lifetime = &sample.counters.lifetime;
        lines.push(heading(format!(
            " CONNECTION LIFETIMES ({} closed{})",
            lifetime.count,
            row.median_lifetime_s
                .map(|m| format!(", median {}", format::lifetime(m)))
                .unwrap_or_default()
        )));
        // Cumulative counts below each bound, to counts per bucket, then the rest.
        let mut counts = Vec::with_capacity(LIFETIME_BUCKETS_S.len() + 1);
        let mut previous = 0;
        for (le, below) in LIFETIME_BUCKETS_S.iter().zip(lifetime.below) {
            counts.push((
                format!("< {}", format::lifetime(*le)),
                below.saturating_sub(previous),
            ));
            previous = below;
        }
        let last = LIFETIME_BUCKETS_S[LIFETIME_BUCKETS_S.len() - 1];
        counts.push((
            format!("≥ {}", format::lifetime(last)),
            lifetime.count.saturating_sub(previous),
        ));
        let most = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
        if most > 0 {
            for (label, n) in counts {
                let bar = (n as f64 / most as f64 * BAR_WIDTH as f64).ceil() as usize;
                lines.push(Line::from(format!(
                    "   {label:>8} {:<BAR_WIDTH$} {}",
                    "█".repeat(bar),
                    format::count(n)
                )));
            }
        }
    }
    lines
}
