//! `portwatch stream`'s line formats: aligned text for people, JSON lines for programs.
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    event::{Family, Transition},
    output::format::{Endpoint, HumanDuration, WallClock},
    tcp_state::TcpState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Text,
    /// JSON (schema in README.md): one object per line for `stream`, one in all for
    /// `snapshot`.
    Json,
}

pub struct StreamPrinter<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
}

/// One `--format json` line. Field names are a stable interface: README.md documents
/// them; add fields, never rename or remove.
#[derive(Serialize)]
pub struct JsonTransition<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub family: Family,
    pub saddr: std::net::IpAddr,
    pub sport: u16,
    pub daddr: std::net::IpAddr,
    pub dport: u16,
    pub old_state: TcpState,
    pub new_state: TcpState,
    /// Hex, so JSON parsers that read numbers as doubles keep every bit.
    pub sock: Hex,
    pub in_state_ns: Option<u64>,
}

impl<'a> From<&'a Transition> for JsonTransition<'a> {
    fn from(event: &'a Transition) -> Self {
        JsonTransition {
            ts_ns: event.ts_ns,
            pid: event.pid,
            tid: event.tid,
            comm: &event.comm,
            family: event.family,
            saddr: event.saddr,
            sport: event.sport,
            daddr: event.daddr,
            dport: event.dport,
            old_state: event.old_state,
            new_state: event.new_state,
            sock: Hex(event.sock),
            in_state_ns: event.in_state_ns,
        }
    }
}

impl<W: Write> StreamPrinter<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        StreamPrinter { out, format, clock }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.format == Format::Text {
            writeln!(
                self.out,
                "{:<15} {:>7} {:<16} {:<22} {:<22} {:<26} {:>8}",
                "TIME", "PID", "COMM", "LOCAL", "REMOTE", "TRANSITION", "IN OLD"
            )?;
        }
        Ok(())
    }

    pub fn print(&mut self, event: &Transition) -> io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, &JsonTransition::from(event))?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                let transition = TransitionText(event.old_state, event.new_state);
                write!(
                    self.out,
                    "{} {:>7} {:<16} {:<22} {:<22} {:<26} ",
                    self.clock.time_of_day(event.ts_ns),
                    event.pid,
                    event.comm,
                    Endpoint(event.saddr, event.sport),
                    Endpoint(event.daddr, event.dport),
                    transition,
                )?;
                match event.in_state_ns {
                    Some(ns) => writeln!(self.out, "{:>8}", HumanDuration(ns)),
                    None => writeln!(self.out, "{:>8}", "-"),
                }
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A `u64` serialized as a `"0x…"` string, written straight into the output.
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// `OLD -> NEW`, padded as a whole.
struct TransitionText(TcpState, TcpState);

impl std::fmt::Display for TransitionText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (old, new) = (self.0.name(), self.1.name());
        let width = old.len() + 4 + new.len();
        write!(f, "{old} -> {new}")?;
        for _ in width..f.width().unwrap_or(0) {
            f.write_str(" ")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::raw_v4;

    fn event() -> Transition {
        Transition::try_from(&raw_v4()).unwrap()
    }

    fn printed(format: Format, event: &Transition) -> String {
        let mut printer = StreamPrinter::new(Vec::new(), format, WallClock::now());
        printer.print(event).unwrap();
        String::from_utf8(printer.into_inner()).unwrap()
    }

    #[test]
    fn json_has_the_documented_fields() {
        let line = printed(Format::Json, &event());
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "ts_ns": 123_456_789,
                "pid": 4242,
                "tid": 4243,
                "comm": "curl",
                "family": "ipv4",
                "saddr": "127.0.0.1",
                "sport": 40000,
                "daddr": "10.1.2.3",
                "dport": 443,
                "old_state": "SYN_SENT",
                "new_state": "ESTABLISHED",
                "sock": "0xffff888012345678",
                "in_state_ns": 1_500_000,
            })
        );
    }

    #[test]
    fn json_unknown_in_state_is_null_and_ipv6_is_labelled() {
        let mut event = event();
        event.in_state_ns = None;
        event.family = Family::Ipv6;
        event.saddr = "::1".parse().unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&printed(Format::Json, &event)).unwrap();
        assert_eq!(value["in_state_ns"], serde_json::Value::Null);
        assert_eq!(value["family"], "ipv6");
        assert_eq!(value["saddr"], "::1");
    }

    #[test]
    fn text_line_reads_left_to_right() {
        let line = printed(Format::Text, &event());
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &columns[1..],
            [
                "4242",
                "curl",
                "127.0.0.1:40000",
                "10.1.2.3:443",
                "SYN_SENT",
                "->",
                "ESTABLISHED",
                "1.5ms"
            ]
        );
        assert_eq!(columns[0].len(), "00:00:00.000000".len());
    }

    #[test]
    fn text_columns_line_up_with_the_header() {
        let mut printer = StreamPrinter::new(Vec::new(), Format::Text, WallClock::now());
        printer.header().unwrap();
        printer.print(&event()).unwrap();
        let text = String::from_utf8(printer.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let column = |line: &str, needle: &str| line.find(needle).unwrap();
        assert_eq!(
            column(lines[0], "LOCAL"),
            column(lines[1], "127.0.0.1:40000")
        );
        assert_eq!(column(lines[0], "TRANSITION"), column(lines[1], "SYN_SENT"));
    }
}
