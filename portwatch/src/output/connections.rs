//! `portwatch stream --connections`'s lines: one per finished connection, as aligned text
//! or a JSON object (schema in docs/stream.md, "Connection fields").
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    clock::WallClock,
    event::{Family, Origin},
    output::{
        format::{Endpoint, HumanDuration, OwnerComm, OwnerPid},
        json_line::{Hex, JsonOwner, ShownOwner},
    },
    sockets::connection::{Closer, Connection, Opened},
    tcp_state::TcpState,
};

/// One `--connections --format json` line. Field names are a stable interface,
/// documented in docs/stream.md (a test holds the two together): add fields, never
/// rename or remove. serde writes it: a connection is one line where `stream` writes
/// five to ten, so the hand-written writer of `json_line` is not needed here.
#[derive(Serialize)]
pub struct JsonConnection<'a> {
    /// When it closed.
    pub ts_ns: u64,
    #[serde(flatten)]
    pub owner: JsonOwner,
    pub workload: Option<&'a str>,
    pub origin: Option<Origin>,
    pub family: Family,
    pub netns: u32,
    pub saddr: std::net::IpAddr,
    pub sport: u16,
    pub daddr: std::net::IpAddr,
    pub dport: u16,
    pub opened: Opened,
    pub duration_ns: Option<u64>,
    pub closer: Closer,
    pub closed_from: TcpState,
    pub time_wait: bool,
    pub sock: Hex,
}

impl<'a> JsonConnection<'a> {
    pub fn new(
        connection: &Connection,
        owner: Option<&ShownOwner>,
        workload: Option<&'a str>,
    ) -> Self {
        let tuple = &connection.tuple;
        JsonConnection {
            ts_ns: connection.closed_ns,
            owner: JsonOwner::new(owner),
            workload,
            origin: connection.origin,
            family: connection.family,
            netns: tuple.netns,
            saddr: tuple.saddr,
            sport: tuple.sport,
            daddr: tuple.daddr,
            dport: tuple.dport,
            opened: connection.opened,
            duration_ns: connection.duration_ns,
            closer: connection.closer,
            closed_from: connection.closed_from,
            time_wait: connection.time_wait,
            sock: Hex(connection.sock),
        }
    }
}

/// Appends one JSON line (with its newline) for `connection` to `out`.
pub fn write_json(
    out: &mut Vec<u8>,
    connection: &Connection,
    owner: Option<&ShownOwner>,
    workload: Option<&str>,
) {
    // Writing to a Vec cannot fail, and every field serializes.
    let _ = serde_json::to_writer(&mut *out, &JsonConnection::new(connection, owner, workload));
    out.push(b'\n');
}

pub fn write_text_header(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<15} {:>7} {:<16} {:<22} {:<22} {:>9} {:<7} {:<9} WORKLOAD",
        "CLOSED", "PID", "COMM", "LOCAL", "REMOTE", "DURATION", "CLOSER", "TIME_WAIT"
    )
}

pub fn write_text(
    out: &mut impl Write,
    clock: &WallClock,
    connection: &Connection,
    owner: Option<&ShownOwner>,
    workload: Option<&str>,
) -> io::Result<()> {
    let tuple = &connection.tuple;
    writeln!(
        out,
        "{} {:>7} {:<16} {:<22} {:<22} {:>9} {:<7} {:<9} {}",
        clock.time_of_day(connection.closed_ns),
        OwnerPid(owner),
        OwnerComm(owner),
        Endpoint(tuple.saddr, tuple.sport),
        Endpoint(tuple.daddr, tuple.dport),
        Duration(connection),
        match connection.closer {
            Closer::Local => "local",
            Closer::Peer => "peer",
            Closer::Unknown => "unknown",
        },
        if connection.time_wait { "yes" } else { "no" },
        workload.unwrap_or("-"),
    )
}

/// `1.2ms`; `>4.20s` when the connection predates portwatch (a lower bound); `-` when
/// its open was not seen at all.
struct Duration<'a>(&'a Connection);

impl std::fmt::Display for Duration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0.opened, self.0.duration_ns) {
            (Opened::Seen, Some(ns)) => HumanDuration(ns).fmt(f),
            (Opened::BeforeStart, Some(ns)) => f.pad(&format!(">{}", HumanDuration(ns))),
            _ => f.pad("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Comm, OwnerSource},
        output::doc_schema::{fields, keys},
        process::Process,
        sockets::{owners::SocketOwner, tuple::Tuple},
    };

    fn connection() -> Connection {
        Connection {
            closed_ns: 5_000_000_000,
            sock: 0xffff_8881_0000_0042,
            family: Family::Ipv4,
            tuple: Tuple {
                netns: 4026531840,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 40000,
                daddr: "10.1.2.3".parse().unwrap(),
                dport: 443,
            },
            origin: Some(Origin::Active),
            owner: None,
            opened: Opened::Seen,
            duration_ns: Some(1_500_000),
            closer: Closer::Local,
            closed_from: TcpState::FinWait2,
            time_wait: true,
        }
    }

    const OWNER: ShownOwner = ShownOwner {
        owner: SocketOwner {
            process: Process::after_exits(1000, 0),
            comm: Comm::from_bytes(*b"curl\0\0\0\0\0\0\0\0\0\0\0\0"),
            source: OwnerSource::Connect,
            cgroup_id: 77,
        },
        alive: true,
    };

    fn json(connection: &Connection, owner: Option<&ShownOwner>) -> serde_json::Value {
        let mut out = Vec::new();
        write_json(&mut out, connection, owner, Some("web.service"));
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        serde_json::from_str(&line).unwrap()
    }

    fn text(connection: &Connection, owner: Option<&ShownOwner>, workload: Option<&str>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, &WallClock::now(), connection, owner, workload).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_has_the_documented_fields_and_values() {
        let documented = fields(
            include_str!("../../../docs/stream.md"),
            "### Connection fields",
        );
        for owner in [None, Some(&OWNER)] {
            assert_eq!(keys(&json(&connection(), owner)), documented);
        }
        assert_eq!(
            json(&connection(), Some(&OWNER)),
            serde_json::json!({
                "ts_ns": 5_000_000_000u64,
                "pid": 1000,
                "comm": "curl",
                "owner_source": "connect",
                "owner_alive": true,
                "cgroup_id": 77,
                "workload": "web.service",
                "origin": "active",
                "family": "ipv4",
                "netns": 4026531840u32,
                "saddr": "127.0.0.1",
                "sport": 40000,
                "daddr": "10.1.2.3",
                "dport": 443,
                "opened": "seen",
                "duration_ns": 1_500_000,
                "closer": "local",
                "closed_from": "FIN_WAIT2",
                "time_wait": true,
                "sock": "0xffff888100000042",
            })
        );
    }

    #[test]
    fn json_names_every_closer_and_opening() {
        let mut c = connection();
        c.closer = Closer::Peer;
        c.opened = Opened::BeforeStart;
        assert_eq!(json(&c, None)["closer"], "peer");
        assert_eq!(json(&c, None)["opened"], "before_start");
        assert_eq!(json(&c, None)["pid"], serde_json::Value::Null);
        c.closer = Closer::Unknown;
        c.opened = Opened::Unseen;
        c.duration_ns = None;
        let value = json(&c, None);
        assert_eq!(value["closer"], "unknown");
        assert_eq!(value["opened"], "unseen");
        assert_eq!(value["duration_ns"], serde_json::Value::Null);
    }

    #[test]
    fn text_line_reads_left_to_right_under_its_header() {
        let line = text(&connection(), Some(&OWNER), Some("web.service"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &columns[1..],
            [
                "1000",
                "curl",
                "127.0.0.1:40000",
                "10.1.2.3:443",
                "1.5ms",
                "local",
                "yes",
                "web.service"
            ]
        );
        let mut header = Vec::new();
        write_text_header(&mut header).unwrap();
        let header = String::from_utf8(header).unwrap();
        let at = |text: &str, needle: &str| text.find(needle).unwrap();
        assert_eq!(at(&header, "LOCAL"), at(&line, "127.0.0.1:40000"));
        assert_eq!(at(&header, "CLOSER"), at(&line, "local"));
        assert_eq!(at(&header, "TIME_WAIT"), at(&line, "yes"));
        assert_eq!(at(&header, "WORKLOAD"), at(&line, "web.service"));
        // Right-aligned durations end where the header's does.
        assert_eq!(
            at(&header, "DURATION") + "DURATION".len(),
            at(&line, "1.5ms") + "1.5ms".len()
        );
    }

    #[test]
    fn text_says_how_much_of_the_duration_is_known() {
        let mut c = connection();
        c.opened = Opened::BeforeStart;
        c.duration_ns = Some(4_200_000_000);
        c.closer = Closer::Peer;
        c.time_wait = false;
        let line = text(&c, None, None);
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&columns[1..3], ["-", "?"]);
        assert_eq!(&columns[5..], [">4.20s", "peer", "no", "-"]);
        c.opened = Opened::Unseen;
        c.duration_ns = None;
        assert_eq!(text(&c, None, None).split_whitespace().nth(5), Some("-"));
    }
}
