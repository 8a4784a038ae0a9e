//! `portwatch report`'s outputs: a screen for people, one JSON object for programs.
use std::io::{self, Write};

use crate::detect::report::{Finding, ProcessReport, Report, Severity};

pub fn json(out: &mut impl Write, report: &Report) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

pub fn text(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let skipped = match report.events.skipped {
        Some(skipped) if skipped > 0 => format!(", {skipped} skipped by the kernel"),
        _ => String::new(),
    };
    writeln!(
        out,
        "portwatch report: {:.1} s window, {} events, {} dropped{skipped}{}",
        report.window_s,
        report.events.seen,
        report.events.dropped,
        if report.events.incomplete {
            " (INCOMPLETE: events were lost, numbers are lower bounds)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "local ports {}-{} ({} per destination), tcp_tw_reuse={}",
        report.port_range.0, report.port_range.1, report.port_capacity, report.tcp_tw_reuse
    )?;
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
        finding.pid, finding.comm
    )?;
    if let Some(workload) = &finding.workload {
        write!(out, " ({workload})")?;
    }
    if !finding.alive {
        write!(out, " [exited]")?;
    }
    writeln!(out)?;
    for line in wrap(&finding.summary, 86) {
        writeln!(out, "          {line}")?;
    }
    let mut advice = wrap(&finding.advice, 84).into_iter();
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
        let pid = if process.pid == 0 {
            "?".to_owned()
        } else {
            process.pid.to_string()
        };
        let comm = if process.pid == 0 {
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
    Ok(())
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

    #[test]
    fn wraps_at_spaces() {
        assert_eq!(wrap("aa bb cc dd", 5), ["aa bb", "cc dd"]);
        assert_eq!(wrap("", 5), Vec::<String>::new());
        assert_eq!(wrap("longword x", 3), ["longword", "x"]);
    }
}
