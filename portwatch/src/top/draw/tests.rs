//! Render tests: a known frame drawn into ratatui's `TestBackend`, read back as text
//! and checked cell by cell (by the column a header names), not as a snapshot.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use ratatui::{Terminal, backend::TestBackend};

use super::*;
use crate::{
    detect::{
        model::Destination,
        report::{Evidence, Finding, FindingKind, Peer, Severity},
    },
    event::Comm,
    live::{DestinationSample, ProcessCounters, ProcessSample, Sample},
    output::advice,
    process::Process,
    top::{
        frame::{CloseWaitSocket, DestinationUse, Focus, Frame},
        history::History,
        screen::{Clock, Screen},
        sort::SortKey,
        state::{Action, State, View},
    },
};

const S: u64 = 1_000_000_000;
const LEAKER: u32 = 4242;
const CHURNER: u32 = 777;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn process(pid: u32) -> Process {
    Process::after_exits(pid, 0)
}

fn sample_at(now_ns: u64, churned: u64) -> Sample {
    let leaker = ProcessSample {
        process: process(LEAKER),
        comm: Comm::new("leak-server"),
        alive: true,
        states: BTreeMap::from([("CLOSE_WAIT", 5), ("LISTEN", 1)]),
        close_wait_oldest_s: Some(192.0),
        counters: ProcessCounters::default(),
    };
    let churner = ProcessSample {
        process: process(CHURNER),
        comm: Comm::new("churn-client"),
        alive: true,
        states: BTreeMap::from([("TIME_WAIT", 300), ("ESTABLISHED", 1)]),
        close_wait_oldest_s: None,
        counters: ProcessCounters {
            opened_active: churned,
            time_wait_created: churned,
            ..ProcessCounters::default()
        },
    };
    let mut sample = Sample {
        now_ns,
        processes: vec![leaker, churner],
        destinations: vec![DestinationSample {
            netns: 1,
            port_capacity: 28232,
            saddr: ip("10.0.0.1"),
            daddr: ip("10.0.0.9"),
            dport: 5432,
            ports_in_use: 301,
            eta_s: Some(95.0),
        }],
        ..Sample::default()
    };
    sample.events.seen = churned * 10;
    sample.events.dropped = 3;
    sample
}

fn leak_finding() -> Finding {
    Finding {
        kind: FindingKind::CloseWaitLeak,
        severity: Severity::Critical,
        process: process(LEAKER),
        comm: Comm::new("leak-server"),
        alive: true,
        workload: None,
        evidence: Evidence::Leak {
            close_wait: 5,
            oldest_age_s: 192.0,
            oldest_age_exact: true,
            median_age_s: 100.0,
            growth_per_min: 1.0,
            top_peers: vec![Peer {
                netns: 1,
                daddr: ip("10.0.0.7"),
                dport: None,
                sockets: 5,
            }],
            leaked: 5,
            leak_age_ns: 5 * S,
            show_netns: false,
        },
    }
}

/// A frame at 10 s, with the churner's 3000 connections of the last second.
fn model() -> (Frame, History) {
    let mut history = History::new(0);
    history.observe(&sample_at(9 * S, 1000));
    let sample = sample_at(10 * S, 4000);
    history.observe(&sample);
    let destination = Destination {
        netns: 1,
        saddr: ip("10.0.0.1"),
        daddr: ip("10.0.0.9"),
        dport: 5432,
    };
    let frame = Frame {
        sample,
        findings: vec![leak_finding()],
        median_lifetime_s: [(process(CHURNER), 0.0012)].into_iter().collect(),
        destinations: [(
            destination,
            DestinationUse {
                time_wait: 300,
                top: Some((process(CHURNER), Comm::new("churn-client"), 301)),
            },
        )]
        .into_iter()
        .collect(),
        ..Frame::default()
    };
    (frame, history)
}

fn workload(p: &Process) -> Option<String> {
    (p.pid == LEAKER).then(|| "payments.service".to_owned())
}

/// Draws and returns the screen's lines.
fn render(width: u16, height: u16, frame: &Frame, history: &History, state: &State) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    let screen = Screen::new(
        frame,
        history,
        state,
        Clock::Live { elapsed_s: 10.0 },
        &workload,
        &[],
    );
    terminal
        .draw(|f| {
            draw(f, &screen);
        })
        .unwrap();
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

fn state() -> State {
    State::new(SortKey::default(), Duration::from_secs(1))
}

/// The value in the column headed `title` on the row whose words include `pid`.
/// Numeric columns are right-aligned, titles too: a value ends where its title ends.
fn cell(lines: &[String], pid: u32, title: &str) -> String {
    let header = lines
        .iter()
        .find(|l| l.contains(" PID ") && l.contains("COMM"))
        .unwrap_or_else(|| panic!("no table header in {lines:#?}"));
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    // The title as a whole word (" TW", not the start of " TW/s").
    let needle = format!(" {title}");
    let at = header
        .match_indices(&needle)
        .map(|(at, _)| at)
        .find(|at| {
            header[at + needle.len()..].starts_with(' ') || at + needle.len() == header.len()
        })
        .unwrap_or_else(|| panic!("no {title} in {header:?}"));
    let end = header[..at].chars().count() + 1 + title.chars().count();
    let row = lines
        .iter()
        .find(|l| words(l).contains(&pid.to_string()) && !l.contains("PORT"))
        .unwrap_or_else(|| panic!("no row for {pid} in {lines:#?}"));
    let before: Vec<char> = row.chars().take(end).collect();
    let value: String = before.iter().rev().take_while(|c| **c != ' ').collect();
    value.chars().rev().collect()
}

#[test]
fn the_table_at_80_by_24_names_the_leaker_and_the_churner() {
    let (frame, history) = model();
    let lines = render(80, 24, &frame, &history, &state());
    assert_eq!(lines.len(), 24);
    assert!(lines[0].contains("portwatch top"), "{}", lines[0]);
    assert!(lines[0].contains("dropped 3"), "{}", lines[0]);
    // The leaker first (most CLOSE_WAIT), with its exact count and age.
    assert_eq!(cell(&lines, LEAKER, "CLOSE_W"), "5");
    assert_eq!(cell(&lines, LEAKER, "OLDEST"), "3m12s");
    assert_eq!(cell(&lines, CHURNER, "CONN/s"), "3.0k");
    assert_eq!(cell(&lines, CHURNER, "TW"), "300");
    let leaker_line = lines
        .iter()
        .position(|l| l.contains("leak-server"))
        .unwrap();
    let churner_line = lines
        .iter()
        .position(|l| l.contains("churn-client") && !l.contains("PORT"))
        .unwrap();
    assert!(leaker_line < churner_line);
    // Critical finding marker on the leaker's row, before its PID.
    let row = &lines[leaker_line];
    assert_eq!(row.trim_start().chars().next(), Some('!'), "{row}");
    // Host numbers.
    let host = lines[1..5].join("\n");
    assert!(
        host.contains("CLOSE_WAIT") && host.contains("conn/s"),
        "{host}"
    );
    let conn = lines[1..5].iter().find(|l| l.contains("conn/s")).unwrap();
    assert!(conn.contains("3.0k"), "{conn}");
    // The port budget: destination, numbers, TIME_WAIT share, forecast.
    let panel = lines
        .iter()
        .position(|l| l.contains("PORT BUDGET"))
        .unwrap();
    let destination = &lines[panel + 1];
    for part in ["10.0.0.9:5432", "301/28232", "TW 100%", "in 1m35s"] {
        assert!(destination.contains(part), "{part} not in {destination:?}");
    }
    // Nothing is cut off: the footer is the last line.
    assert!(lines[23].contains("q quit"), "{}", lines[23]);
}

#[test]
fn wide_terminals_show_workload_and_the_top_user_of_a_destination() {
    let (frame, history) = model();
    let lines = render(160, 45, &frame, &history, &state());
    let leaker = lines.iter().find(|l| l.contains("leak-server")).unwrap();
    assert!(leaker.contains("payments.service"), "{leaker}");
    assert_eq!(cell(&lines, CHURNER, "LIFE"), "1.2ms");
    let destination = lines.iter().find(|l| l.contains("10.0.0.9:5432")).unwrap();
    assert!(
        destination.contains("churn-client (777) 301"),
        "{destination}"
    );
    // More destinations fit on a taller terminal, but there is only one.
    assert_eq!(lines.iter().filter(|l| l.contains(":5432")).count(), 1);
}

#[test]
fn narrow_terminals_fold_columns_and_panels_but_keep_the_leaker() {
    let (frame, history) = model();
    let lines = render(44, 16, &frame, &history, &state());
    assert_eq!(cell(&lines, LEAKER, "CLOSE_W"), "5");
    assert!(!lines.iter().any(|l| l.contains("OLDEST")), "{lines:#?}");
    // No room for the port panel below 20 lines.
    assert!(!lines.iter().any(|l| l.contains("PORT BUDGET")));
    // Tiny: the title, the table's title and header, and nothing panics.
    let lines = render(20, 5, &frame, &history, &state());
    assert!(lines[0].contains("portwatch"), "{lines:#?}");
}

#[test]
fn sorting_by_connections_puts_the_churner_first() {
    let (frame, history) = model();
    let mut state = state();
    state.apply(Action::SortBy(SortKey::Connections), &[]);
    let lines = render(80, 24, &frame, &history, &state);
    let first_row = lines
        .iter()
        .skip_while(|l| !(l.contains(" PID ") && l.contains("COMM")))
        .nth(1)
        .unwrap();
    assert!(first_row.contains(&CHURNER.to_string()), "{first_row}");
    assert!(lines.iter().any(|l| l.contains("by conn/s")), "{lines:#?}");
}

#[test]
fn a_filter_hides_rows_and_says_so_when_nothing_matches() {
    let (frame, history) = model();
    let mut state = state();
    state.filter = crate::top::filter::Filter::new("churn");
    let lines = render(80, 24, &frame, &history, &state);
    assert!(!lines.iter().any(|l| l.contains("leak-server")));
    assert!(
        lines.iter().any(|l| l.contains("PROCESSES 1 of 2")),
        "{lines:#?}"
    );
    state.filter = crate::top::filter::Filter::new("nginx");
    let lines = render(80, 24, &frame, &history, &state);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no process matches the filter")),
        "{lines:#?}"
    );
}

#[test]
fn the_detail_view_lists_sockets_and_gives_report_advice() {
    let (mut frame, history) = model();
    frame.focus = Some(Focus {
        process: process(LEAKER),
        close_waits: vec![CloseWaitSocket {
            local: (ip("10.0.0.1"), 8080),
            peer: (ip("10.0.0.7"), 51234),
            age_s: 192.0,
            exact: true,
        }],
        close_wait_total: 1,
        destinations: Vec::new(),
    });
    let mut state = state();
    state.view = View::Detail(process(LEAKER));
    let lines = render(100, 40, &frame, &history, &state);
    let text = lines.join("\n");
    assert!(
        text.contains("PID 4242  leak-server  workload payments.service"),
        "{text}"
    );
    assert!(text.contains("[critical] close wait leak"), "{text}");
    let socket = lines.iter().find(|l| l.contains("10.0.0.7:51234")).unwrap();
    assert!(
        socket.contains("10.0.0.1:8080") && socket.contains("3m12s"),
        "{socket}"
    );
    // The report's advice, word for word (wrapped: compare its first words).
    let advice = advice::advice(&leak_finding().evidence);
    let opening: String = advice
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.contains(&opening), "{opening:?} not in {text}");
    assert!(lines.iter().any(|l| l.contains("Esc back")));
}

#[test]
fn help_lists_the_keys_over_the_table() {
    let (frame, history) = model();
    let mut state = state();
    state.apply(Action::Help, &[]);
    let lines = render(80, 24, &frame, &history, &state);
    let text = lines.join("\n");
    assert!(text.contains(" keys "), "{text}");
    assert!(
        text.contains("q  Ctrl-C") && text.contains("quit"),
        "{text}"
    );
    assert!(
        text.contains("pause the screen; data keeps accumulating"),
        "{text}"
    );
}

#[test]
fn a_destination_with_every_port_taken_is_full_whatever_its_rate() {
    let (mut frame, history) = model();
    let destination = &mut frame.sample.destinations[0];
    destination.port_capacity = 4;
    destination.ports_in_use = 8;
    destination.eta_s = None;
    let lines = render(80, 24, &frame, &history, &state());
    let line = lines.iter().find(|l| l.contains("10.0.0.9:5432")).unwrap();
    assert!(line.contains("8/4 100%") && line.contains("FULL"), "{line}");
}
