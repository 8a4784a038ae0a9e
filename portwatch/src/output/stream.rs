//! `portwatch stream`'s line formats: aligned text for people, JSON lines for programs.
use std::io::{self, Write};

use crate::{
    clock::WallClock,
    event::Transition,
    output::{
        connections,
        format::{Endpoint, HumanDuration, OwnerComm, OwnerPid},
        json_line::{self, ShownOwner},
    },
    sockets::connection::Connection,
    tcp_state::TcpState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Text,
    /// JSON (schema in docs/stream.md and docs/snapshot.md): one object per line for `stream`, one in all for
    /// `snapshot`.
    Json,
}

pub struct StreamPrinter<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    /// Whether text lines show the socket's network namespace: when more than one is
    /// involved (JSON lines always carry it).
    show_netns: bool,
    /// JSON lines not yet handed to `out`: written in blocks of `PENDING_BYTES`, which
    /// a `BufWriter` passes through without copying them again.
    pending: Vec<u8>,
}

/// How many bytes of JSON lines gather before they go to the output.
const PENDING_BYTES: usize = 64 << 10;

impl<W: Write> StreamPrinter<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        StreamPrinter {
            out,
            format,
            clock,
            show_netns: false,
            pending: Vec::with_capacity(PENDING_BYTES + 1024),
        }
    }

    /// Shows a NETNS column in text: for a host with several network namespaces, where
    /// two containers' `127.0.0.1:8080` are different sockets.
    pub fn with_netns(mut self, show: bool) -> Self {
        self.show_netns = show;
        self
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.format == Format::Text {
            write!(self.out, "{:<15} {:>7} {:<16} ", "TIME", "PID", "COMM")?;
            if self.show_netns {
                write!(self.out, "{:<10} ", "NETNS")?;
            }
            writeln!(
                self.out,
                "{:<22} {:<22} {:<26} {:>8} WORKLOAD",
                "LOCAL", "REMOTE", "TRANSITION", "IN OLD"
            )?;
        }
        Ok(())
    }

    /// One transition, with its owner and the owner's workload (container, pod or unit)
    /// where known.
    pub fn print(
        &mut self,
        event: &Transition,
        owner: Option<&ShownOwner>,
        workload: Option<&str>,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => {
                json_line::write_transition(&mut self.pending, event, owner, workload);
                if self.pending.len() >= PENDING_BYTES {
                    self.write_pending()?;
                }
                Ok(())
            }
            Format::Text => {
                let transition = TransitionText(event.old_state, event.new_state);
                write!(
                    self.out,
                    "{} {:>7} {:<16} ",
                    self.clock.time_of_day(event.ts_ns),
                    OwnerPid(owner),
                    OwnerComm(owner),
                )?;
                if self.show_netns {
                    write!(self.out, "{:<10} ", event.netns)?;
                }
                write!(
                    self.out,
                    "{:<22} {:<22} {:<26} ",
                    Endpoint(event.saddr, event.sport),
                    Endpoint(event.daddr, event.dport),
                    transition,
                )?;
                match event.in_state_ns {
                    Some(ns) => write!(self.out, "{:>8}", HumanDuration(ns))?,
                    None => write!(self.out, "{:>8}", "-")?,
                }
                writeln!(self.out, " {}", workload.unwrap_or("-"))
            }
        }
    }

    /// The header of `--connections` lines (text only).
    pub fn connections_header(&mut self) -> io::Result<()> {
        if self.format == Format::Text {
            connections::write_text_header(&mut self.out)?;
        }
        Ok(())
    }

    /// One finished connection (`--connections`).
    pub fn print_connection(
        &mut self,
        connection: &Connection,
        owner: Option<&ShownOwner>,
        workload: Option<&str>,
    ) -> io::Result<()> {
        match self.format {
            Format::Json => {
                connections::write_json(&mut self.pending, connection, owner, workload);
                if self.pending.len() >= PENDING_BYTES {
                    self.write_pending()?;
                }
                Ok(())
            }
            Format::Text => {
                connections::write_text(&mut self.out, &self.clock, connection, owner, workload)
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }

    /// The output, with every line printed so far written to it.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.write_pending()?;
        Ok(self.out)
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            // Cleared even if the write fails: the caller stops at the first error.
            let written = self.out.write_all(&self.pending);
            self.pending.clear();
            written?;
        }
        Ok(())
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
    use crate::{
        event::{Comm, Family, OwnerSource, tests::raw_v4},
        process::Process,
        sockets::owners::SocketOwner,
    };

    fn event() -> Transition {
        Transition::try_from(&raw_v4()).unwrap()
    }

    const OWNER: ShownOwner = ShownOwner {
        owner: SocketOwner {
            process: Process::after_exits(1000, 0),
            comm: Comm::from_bytes(*b"nginx\0\0\0\0\0\0\0\0\0\0\0"),
            source: OwnerSource::Accept,
            cgroup_id: 77,
        },
        alive: true,
    };

    fn printed(format: Format, event: &Transition) -> String {
        printed_with(format, event, Some(&OWNER))
    }

    fn printed_with(format: Format, event: &Transition, owner: Option<&ShownOwner>) -> String {
        let mut printer = StreamPrinter::new(Vec::new(), format, WallClock::now());
        printer.print(event, owner, Some("nginx.service")).unwrap();
        String::from_utf8(printer.into_inner().unwrap()).unwrap()
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
                "pid": 1000,
                "comm": "nginx",
                "owner_source": "accept",
                "owner_alive": true,
                "cgroup_id": 77,
                "workload": "nginx.service",
                "task_pid": 4242,
                "task_tid": 4243,
                "task_comm": "curl",
                "by_syscall": false,
                "origin": "active",
                "family": "ipv4",
                "netns": 4026531840u32,
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
    fn unknown_and_exited_owners() {
        let value: serde_json::Value =
            serde_json::from_str(&printed_with(Format::Json, &event(), None)).unwrap();
        assert_eq!(value["pid"], serde_json::Value::Null);
        assert_eq!(value["comm"], serde_json::Value::Null);
        assert_eq!(value["task_pid"], 4242);
        let text = printed_with(Format::Text, &event(), None);
        assert_eq!(text.split_whitespace().nth(1), Some("-"));
        let exited = ShownOwner {
            alive: false,
            ..OWNER
        };
        let text = printed_with(Format::Text, &event(), Some(&exited));
        assert_eq!(text.split_whitespace().nth(2), Some("nginx\u{2020}"));
    }

    #[test]
    fn text_line_reads_left_to_right() {
        let line = printed(Format::Text, &event());
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &columns[1..],
            [
                "1000",
                "nginx",
                "127.0.0.1:40000",
                "10.1.2.3:443",
                "SYN_SENT",
                "->",
                "ESTABLISHED",
                "1.5ms",
                "nginx.service"
            ]
        );
        assert_eq!(columns[0].len(), "00:00:00.000000".len());
    }

    #[test]
    fn text_columns_line_up_with_the_header() {
        for show_netns in [false, true] {
            let mut printer = StreamPrinter::new(Vec::new(), Format::Text, WallClock::now())
                .with_netns(show_netns);
            printer.header().unwrap();
            printer
                .print(&event(), Some(&OWNER), Some("pod:web-7d9f"))
                .unwrap();
            printer.print(&event(), Some(&OWNER), None).unwrap();
            let text = String::from_utf8(printer.into_inner().unwrap()).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let column = |line: &str, needle: &str| line.find(needle).unwrap();
            assert_eq!(
                column(lines[0], "LOCAL"),
                column(lines[1], "127.0.0.1:40000")
            );
            assert_eq!(column(lines[0], "TRANSITION"), column(lines[1], "SYN_SENT"));
            assert_eq!(
                column(lines[0], "WORKLOAD"),
                column(lines[1], "pod:web-7d9f")
            );
            assert!(lines[2].ends_with(" -"), "{text}");
            assert_eq!(lines[0].contains("NETNS"), show_netns, "{text}");
            if show_netns {
                assert_eq!(column(lines[0], "NETNS"), column(lines[1], "4026531840"));
            }
        }
    }
}
