//! `portwatch report`'s outputs: a screen for people, one JSON object for programs.
use std::{
    borrow::Cow,
    io::{self, Write},
};

use serde::Serialize;

use crate::{
    detect::report::{
        EventCounts, Evidence, Finding, FindingKind, NamespacePorts, ProcessReport, Report,
        Severity,
    },
    event::Comm,
    output::advice,
};

pub fn json(out: &mut impl Write, report: &Report) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &JsonReport::new(report))?;
    writeln!(out)
}

/// The `--format json` document: the report with each finding's words. Field names
/// are a stable interface, documented in docs/report.md: add fields, never rename or remove.
#[derive(Serialize)]
struct JsonReport<'a> {
    window_s: f64,
    events: &'a EventCounts,
    port_range: (u16, u16),
    port_capacity: u32,
    tcp_tw_reuse: u8,
    namespaces: &'a [NamespacePorts],
    findings: Vec<JsonFinding<'a>>,
    processes: &'a [ProcessReport],
}

#[derive(Serialize)]
struct JsonFinding<'a> {
    kind: FindingKind,
    severity: Severity,
    pid: u32,
    comm: Comm,
    alive: bool,
    workload: &'a Option<String>,
    /// The evidence in one line of words and numbers.
    summary: String,
    advice: Cow<'static, str>,
    #[serde(flatten)]
    evidence: &'a Evidence,
}

impl<'a> JsonReport<'a> {
    fn new(report: &'a Report) -> Self {
        JsonReport {
            window_s: report.window_s,
            events: &report.events,
            port_range: report.port_range,
            port_capacity: report.port_capacity,
            tcp_tw_reuse: report.tcp_tw_reuse,
            namespaces: &report.namespaces,
            findings: report.findings.iter().map(JsonFinding::new).collect(),
            processes: &report.processes,
        }
    }
}

impl<'a> JsonFinding<'a> {
    fn new(finding: &'a Finding) -> Self {
        JsonFinding {
            kind: finding.kind,
            severity: finding.severity,
            pid: finding.process.pid,
            comm: finding.comm,
            alive: finding.alive,
            workload: &finding.workload,
            summary: advice::summary(&finding.evidence),
            advice: advice::advice(&finding.evidence),
            evidence: &finding.evidence,
        }
    }
}

pub fn text(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let mut skipped = match report.events.skipped {
        Some(skipped) if skipped > 0 => format!(", {skipped} skipped by the kernel"),
        _ => String::new(),
    };
    if report.events.undecodable > 0 {
        skipped += &format!(", {} undecodable", report.events.undecodable);
    }
    let evicted = &report.events.evicted;
    let evicted = if evicted.total() > 0 {
        format!(
            ", evicted at the limits: {} sockets, {} TIME_WAIT, {} processes, {} destinations",
            evicted.sockets, evicted.time_wait, evicted.processes, evicted.destinations
        )
    } else {
        String::new()
    };
    writeln!(
        out,
        "portwatch report: {:.1} s window, {} events{}, {} dropped{skipped}{evicted}{}",
        report.window_s,
        report.events.seen,
        match (report.events.collect, report.events.state_hook) {
            (Some(collect), Some(hook)) => format!(" ({collect}, {hook} tracepoint)"),
            _ => String::new(),
        },
        report.events.dropped,
        if report.events.incomplete {
            " (INCOMPLETE: events were lost or evicted, numbers are lower bounds)"
        } else {
            ""
        }
    )?;
    // Each namespace has its own ports: when findings concern others than portwatch's
    // own, each one's settings, a line apiece.
    let others: Vec<&NamespacePorts> = report
        .namespaces
        .iter()
        .filter(|ns| ns.netns != report.own_netns)
        .collect();
    let others = if report.own_netns == 0 && report.namespaces.len() < 2 {
        Vec::new()
    } else {
        others
    };
    write!(
        out,
        "local ports {}-{} ({} per destination), tcp_tw_reuse={}",
        report.port_range.0, report.port_range.1, report.port_capacity, report.tcp_tw_reuse
    )?;
    if others.is_empty() {
        writeln!(out)?;
    } else {
        match report.own_netns {
            0 => writeln!(out, " in portwatch's network namespace")?,
            own => writeln!(out, " in portwatch's network namespace ({own})")?,
        }
        for ns in others {
            writeln!(
                out,
                "  netns {}: local ports {}-{} ({} per destination), tcp_tw_reuse={}",
                ns.netns, ns.port_range.0, ns.port_range.1, ns.port_capacity, ns.tcp_tw_reuse
            )?;
        }
    }
    writeln!(out)?;
    if report.findings.is_empty() {
        writeln!(
            out,
            "No findings: no CLOSE_WAIT leak, connection churn or port exhaustion seen."
        )?;
    } else {
        writeln!(out, "FINDINGS (worst first)")?;
        for finding in &report.findings {
            write_finding(out, finding)?;
        }
    }
    writeln!(out)?;
    write_processes(out, &report.processes)
}

fn write_finding(out: &mut impl Write, finding: &Finding) -> io::Result<()> {
    let severity = match finding.severity {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Info => "INFO",
    };
    let kind = serde_json::to_value(finding.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    write!(
        out,
        "{severity:<9} {kind:<17} pid {} {}",
        finding.process.pid, finding.comm
    )?;
    if let Some(workload) = &finding.workload {
        write!(out, " ({workload})")?;
    }
    if !finding.alive {
        write!(out, " [exited]")?;
    }
    writeln!(out)?;
    for line in wrap(&advice::summary(&finding.evidence), 86) {
        writeln!(out, "          {line}")?;
    }
    let mut advice = wrap(&advice::advice(&finding.evidence), 84).into_iter();
    if let Some(first) = advice.next() {
        writeln!(out, "          → {first}")?;
    }
    for line in advice {
        writeln!(out, "            {line}")?;
    }
    writeln!(out)
}

fn write_processes(out: &mut impl Write, processes: &[ProcessReport]) -> io::Result<()> {
    writeln!(out, "PROCESSES")?;
    if processes.is_empty() {
        return writeln!(
            out,
            "(none held a TCP socket or opened or closed a connection)"
        );
    }
    writeln!(
        out,
        "{:>7} {:<16} {:>6} {:>10} {:>9} {:>6} {:>9} {:>9} {:>9} {:>7}",
        "PID",
        "COMM",
        "ESTAB",
        "CLOSE_WAIT",
        "TIME_WAIT",
        "OTHER",
        "OPENED/s",
        "CLOSED/s",
        "p50 LIFE",
        "SHORT%"
    )?;
    for process in processes {
        let count = |state: &str| process.states.get(state).copied().unwrap_or(0);
        let (established, close_wait, time_wait) = (
            count("ESTABLISHED"),
            count("CLOSE_WAIT"),
            count("TIME_WAIT"),
        );
        let other: usize =
            process.states.values().sum::<usize>() - established - close_wait - time_wait;
        let pid = if process.process.pid == 0 {
            "?".to_owned()
        } else {
            process.process.pid.to_string()
        };
        let comm = if process.process.pid == 0 {
            "(unknown owner)".to_owned()
        } else if process.alive {
            process.comm.to_string()
        } else {
            format!("{}\u{2020}", process.comm)
        };
        writeln!(
            out,
            "{:>7} {:<16} {:>6} {:>10} {:>9} {:>6} {:>9.1} {:>9.1} {:>9} {:>7}",
            pid,
            comm,
            established,
            close_wait,
            time_wait,
            other,
            process.opened_per_s,
            process.closed_per_s,
            process
                .lifetime_ms
                .p50
                .map_or("-".into(), |ms| format!("{ms:.1}ms")),
            process
                .short_lived_share
                .map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
        )?;
    }
    // Said once, because a window's average is what a reader would otherwise assume.
    writeln!(
        out,
        "(rates per second over the time each process was opening or closing connections, not the whole window)"
    )
}

/// Splits text into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::report::tests::{
            churn_at_100_per_s, failed_connects, seven_leaks, two_namespace_leaks,
        },
        output::doc_schema::{fields, keys},
    };

    fn json_of(report: &Report) -> serde_json::Value {
        let mut out = Vec::new();
        json(&mut out, report).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_leak_finding_in_json_has_its_kind_numbers_and_advice() {
        let json = json_of(&seven_leaks());
        assert_eq!(json["findings"][0]["kind"], "close_wait_leak");
        assert_eq!(json["findings"][0]["close_wait"], 7);
        assert!(
            json["findings"][0]["advice"]
                .as_str()
                .unwrap()
                .contains("close()")
        );
    }

    #[test]
    fn a_churn_finding_in_json_has_its_fields() {
        let json = json_of(&churn_at_100_per_s());
        let churn = json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "connection_churn")
            .unwrap();
        for field in [
            "rate_per_s",
            "active_s",
            "recent_rate_per_s",
            "median_lifetime_ms",
            "destinations",
            "advice",
            "pid",
            "comm",
        ] {
            assert!(churn.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn the_json_has_exactly_the_fields_docs_report_md_lists() {
        let doc = include_str!("../../../docs/report.md");
        let every_finding = fields(doc, "### Every finding");
        for mut report in [
            seven_leaks(),
            churn_at_100_per_s(),
            failed_connects(),
            two_namespace_leaks(),
        ] {
            if report.namespaces.is_empty() {
                // The fixtures' events carry namespace 0, which is never listed.
                report.namespaces.push(NamespacePorts {
                    netns: 4026531840,
                    port_range: report.port_range,
                    port_capacity: report.port_capacity,
                    tcp_tw_reuse: report.tcp_tw_reuse,
                });
            }
            let json = json_of(&report);
            assert_eq!(keys(&json), fields(doc, "### Top level"));
            assert_eq!(keys(&json["events"]), fields(doc, "### `events`"));
            assert_eq!(
                keys(&json["events"]["evicted"]),
                fields(doc, "### `events.evicted`")
            );
            let findings = json["findings"].as_array().unwrap();
            assert!(!findings.is_empty());
            for finding in findings {
                let kind = finding["kind"].as_str().unwrap();
                let mut documented = every_finding.clone();
                documented.extend(fields(doc, &format!("### `{kind}`")));
                assert_eq!(keys(finding), documented, "{kind}");
            }
            for process in json["processes"].as_array().unwrap() {
                assert_eq!(keys(process), fields(doc, "### `processes[]`"));
            }
            let namespaces = json["namespaces"].as_array().unwrap();
            assert!(!namespaces.is_empty(), "findings concern a namespace");
            for ns in namespaces {
                assert_eq!(keys(ns), fields(doc, "### `namespaces[]`"));
            }
        }
    }

    #[test]
    fn other_namespaces_get_their_port_range_and_their_peers_are_named() {
        let report = two_namespace_leaks();
        let mut out = Vec::new();
        text(&mut out, &report).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "local ports 32768-60999 (28232 per destination), tcp_tw_reuse=2 in portwatch's \
             network namespace (111)",
            "{text}"
        );
        assert_eq!(
            lines[2], "  netns 222: local ports 40000-40003 (4 per destination), tcp_tw_reuse=2",
            "{text}"
        );
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("top peer 10.0.0.2 in netns 222 (2 sockets)"),
            "{text}"
        );
        assert!(
            words.contains("top peer 10.0.0.2 in netns 111 (3 sockets)"),
            "{text}"
        );
        let json = json_of(&report);
        assert_eq!(json["namespaces"][1]["port_capacity"], 4);
        let peers: Vec<&serde_json::Value> = json["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| &f["top_peers"][0]["netns"])
            .collect();
        assert_eq!(peers, [111, 222]);

        // One namespace: the header is one line, the peer has no namespace.
        let mut out = Vec::new();
        super::text(&mut out, &seven_leaks()).unwrap();
        let single = String::from_utf8(out).unwrap();
        assert!(!single.contains("netns"), "{single}");
        assert!(single.lines().nth(2).unwrap().is_empty(), "{single}");
    }

    #[test]
    fn a_window_with_no_process_says_so_instead_of_an_empty_table() {
        let empty = crate::detect::report::tests::report_of(
            &crate::detect::model::tests::Script::new(),
            1_000_000_000,
            0,
        );
        let mut out = Vec::new();
        text(&mut out, &empty).unwrap();
        let text = String::from_utf8(out).unwrap();
        let table = text.split_once("PROCESSES\n").unwrap().1;
        assert_eq!(
            table, "(none held a TCP socket or opened or closed a connection)\n",
            "{text}"
        );
    }

    #[test]
    fn wraps_at_spaces() {
        assert_eq!(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrap("", 5), Vec::<String>::new());
        assert_eq!(wrap("longword x", 3), ["longword", "x"]);
    }
}
