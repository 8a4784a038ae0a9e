//! `portwatch snapshot`'s output: a line per process for people, one JSON object for
//! programs.
use std::{
    collections::BTreeMap,
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    event::Family,
    output::{format::HumanDuration, stream::Format},
    sockets::{
        snapshot::{Grouping, SnapshotSocket, StateGroup},
        workload::Workload,
    },
    tcp_state::TcpState,
};

pub fn write(
    out: &mut impl Write,
    format: Format,
    grouping: &Grouping<'_>,
    unreadable_processes: usize,
) -> io::Result<()> {
    match format {
        Format::Text => write_text(out, grouping),
        Format::Json => write_json(out, grouping, unreadable_processes),
    }
}

/// ```text
///     PID COMM             WORKLOAD                 TOTAL  STATES
///    4242 python3          docker:3f2a9c1b7d4e          4  CLOSE_WAIT 3 (≥ 41.20s), LISTEN 1
///       - (no process)     -                           12  TIME_WAIT 12
/// ```
///
/// When the sockets shown are in more than one network namespace, a NETNS column names
/// each process's (those of all its sockets, when they are in several), and the sockets
/// of no process get a line per namespace.
fn write_text(out: &mut impl Write, grouping: &Grouping<'_>) -> io::Result<()> {
    let every_socket = grouping
        .processes
        .iter()
        .flat_map(|group| &group.sockets.sockets)
        .chain(&grouping.no_process.sockets);
    let show_netns = namespaces(every_socket).len() > 1;
    let netns_column = |group: &StateGroup<'_>| {
        let list: Vec<String> = namespaces(group.sockets.iter())
            .iter()
            .map(u32::to_string)
            .collect();
        format!("{:<10} ", list.join(","))
    };
    write!(out, "{:>7} {:<16} ", "PID", "COMM")?;
    if show_netns {
        write!(out, "{:<10} ", "NETNS")?;
    }
    writeln!(out, "{:<24} {:>6}  STATES", "WORKLOAD", "TOTAL")?;
    for group in &grouping.processes {
        let process = group.process;
        let workload = process.workload.as_ref().map(Workload::to_string);
        write!(out, "{:>7} {:<16} ", process.id.pid, process.comm)?;
        if show_netns {
            out.write_all(netns_column(&group.sockets).as_bytes())?;
        }
        writeln!(
            out,
            "{:<24} {:>6}  {}",
            workload.as_deref().unwrap_or("-"),
            group.sockets.total(),
            StateCounts(&group.sockets),
        )?;
    }
    let no_process: Vec<StateGroup<'_>> = if show_netns {
        let mut by_netns: BTreeMap<u32, StateGroup<'_>> = BTreeMap::new();
        for &socket in &grouping.no_process.sockets {
            by_netns.entry(socket.socket.netns).or_default().add(socket);
        }
        by_netns.into_values().collect()
    } else {
        vec![grouping.no_process.clone()]
    };
    for group in no_process.iter().filter(|group| group.total() > 0) {
        write!(out, "{:>7} {:<16} ", "-", "(no process)")?;
        if show_netns {
            out.write_all(netns_column(group).as_bytes())?;
        }
        writeln!(
            out,
            "{:<24} {:>6}  {}",
            "-",
            group.total(),
            StateCounts(group),
        )?;
    }
    Ok(())
}

/// The network namespaces of these sockets, each once, in order.
fn namespaces<'a>(sockets: impl Iterator<Item = &'a &'a SnapshotSocket>) -> Vec<u32> {
    let mut found: Vec<u32> = sockets.map(|s| s.socket.netns).collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// `CLOSE_WAIT 3 (≥ 41.20s), ESTABLISHED 2, LISTEN 1`: CLOSE_WAIT first, since leaks are
/// what portwatch is for, then the largest counts.
struct StateCounts<'a, 'b>(&'a StateGroup<'b>);

impl std::fmt::Display for StateCounts<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = self.0;
        let mut counts: Vec<(TcpState, usize)> =
            group.states.iter().map(|(&s, &n)| (s, n)).collect();
        counts.sort_by_key(|&(state, count)| {
            (
                state != TcpState::CloseWait,
                std::cmp::Reverse(count),
                state,
            )
        });
        for (i, (state, count)) in counts.into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{state} {count}")?;
            if state == TcpState::CloseWait
                && let Some(ms) = group.oldest_close_wait_ms
            {
                write!(f, " (≥ {})", HumanDuration(ms.saturating_mul(1_000_000)))?;
            }
        }
        Ok(())
    }
}

/// The `--format json` document. Field names are a stable interface, documented in
/// docs/snapshot.md (a test holds the two together): add fields, never rename or remove.
#[derive(Serialize)]
struct JsonSnapshot<'a> {
    processes: Vec<JsonProcess<'a>>,
    no_process: JsonGroup<'a>,
    unreadable_processes: usize,
}

#[derive(Serialize)]
struct JsonProcess<'a> {
    pid: u32,
    start_time: u64,
    comm: &'a str,
    workload: Option<&'a Workload>,
    states: &'a BTreeMap<TcpState, usize>,
    sockets: Vec<JsonSocket>,
}

#[derive(Serialize)]
struct JsonGroup<'a> {
    states: &'a BTreeMap<TcpState, usize>,
    sockets: Vec<JsonSocket>,
}

#[derive(Serialize)]
struct JsonSocket {
    netns: u32,
    state: TcpState,
    family: Family,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    inode: u64,
    cookie: u64,
    in_state_at_least_ms: Option<u64>,
}

impl From<&SnapshotSocket> for JsonSocket {
    fn from(entry: &SnapshotSocket) -> Self {
        let socket = &entry.socket;
        JsonSocket {
            netns: socket.netns,
            state: socket.state,
            family: socket.family,
            saddr: socket.saddr,
            sport: socket.sport,
            daddr: socket.daddr,
            dport: socket.dport,
            inode: socket.inode,
            cookie: socket.cookie,
            in_state_at_least_ms: entry.in_state_at_least_ms,
        }
    }
}

fn json_sockets(group: &StateGroup<'_>) -> Vec<JsonSocket> {
    group.sockets.iter().map(|&s| JsonSocket::from(s)).collect()
}

fn write_json(
    out: &mut impl Write,
    grouping: &Grouping<'_>,
    unreadable_processes: usize,
) -> io::Result<()> {
    let document = JsonSnapshot {
        processes: grouping
            .processes
            .iter()
            .map(|group| JsonProcess {
                pid: group.process.id.pid,
                // Read from /proc, which always gives a start time.
                start_time: group.process.id.start_time().unwrap_or_default(),
                comm: &group.process.comm,
                workload: group.process.workload.as_ref(),
                states: &group.sockets.states,
                sockets: json_sockets(&group.sockets),
            })
            .collect(),
        no_process: JsonGroup {
            states: &grouping.no_process.states,
            sockets: json_sockets(&grouping.no_process),
        },
        unreadable_processes,
    };
    serde_json::to_writer(&mut *out, &document)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::snapshot::{
        group_by_process,
        tests::{process, socket},
    };

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";

    fn sample() -> Vec<SnapshotSocket> {
        let mut web = process(4242, "python3");
        web.workload = Some(Workload::Container {
            runtime: "docker",
            id: ID.into(),
        });
        let mut leaked = socket(TcpState::CloseWait, 8080, &[&web]);
        leaked.in_state_at_least_ms = Some(41_200);
        let mut young = socket(TcpState::CloseWait, 8081, &[&web]);
        young.in_state_at_least_ms = Some(1_000);
        let mut time_wait = socket(TcpState::TimeWait, 8080, &[]);
        time_wait.in_state_at_least_ms = Some(3_000);
        vec![
            socket(TcpState::Listen, 8080, &[&web]),
            leaked,
            young,
            socket(TcpState::Established, 22, &[&process(7, "sshd")]),
            time_wait,
        ]
    }

    fn rendered(format: Format, sockets: &[SnapshotSocket], unreadable: usize) -> String {
        let mut out = Vec::new();
        write(&mut out, format, &group_by_process(sockets), unreadable).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_is_a_line_per_process_then_no_process() {
        let text = rendered(Format::Text, &sample(), 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(words(lines[0]), "PID COMM WORKLOAD TOTAL STATES");
        assert_eq!(
            words(lines[1]),
            "4242 python3 docker:3f2a9c1b7d4e 3 CLOSE_WAIT 2 (≥ 41.20s), LISTEN 1"
        );
        assert_eq!(words(lines[2]), "7 sshd - 1 ESTABLISHED 1");
        assert_eq!(words(lines[3]), "- (no process) - 1 TIME_WAIT 1");
        assert_eq!(
            lines[0].find("TOTAL").map(|i| i + "TOTAL".len()),
            lines[1].find(" CLOSE_WAIT").map(|i| i - 1),
            "TOTAL is right-aligned over the counts:\n{text}"
        );
    }

    #[test]
    fn text_names_namespaces_only_when_there_are_several() {
        let single = rendered(Format::Text, &sample(), 0);
        assert!(!single.contains("NETNS"), "{single}");
        let mut sockets = sample();
        // sshd and one TIME_WAIT socket in another namespace.
        sockets[3].socket.netns = 4026532301;
        let mut elsewhere = socket(TcpState::TimeWait, 9090, &[]);
        elsewhere.socket.netns = 4026532301;
        sockets.push(elsewhere);
        let text = rendered(Format::Text, &sockets, 0);
        let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
        let lines: Vec<String> = text.lines().map(words).collect();
        assert_eq!(lines[0], "PID COMM NETNS WORKLOAD TOTAL STATES", "{text}");
        assert_eq!(
            lines[1],
            "4242 python3 4026531840 docker:3f2a9c1b7d4e 3 CLOSE_WAIT 2 (≥ 41.20s), LISTEN 1"
        );
        assert_eq!(lines[2], "7 sshd 4026532301 - 1 ESTABLISHED 1");
        // The sockets of no process, a line per namespace.
        assert_eq!(lines[3], "- (no process) 4026531840 - 1 TIME_WAIT 1");
        assert_eq!(lines[4], "- (no process) 4026532301 - 1 TIME_WAIT 1");
        assert_eq!(lines.len(), 5, "{text}");
        let raw: Vec<&str> = text.lines().collect();
        assert_eq!(raw[0].find("NETNS"), raw[1].find("4026531840"), "{text}");
        assert_eq!(
            raw[0].find("TOTAL").map(|i| i + 5),
            raw[2].find(" ESTAB").map(|i| i - 1),
            "{text}"
        );
    }

    #[test]
    fn text_without_a_close_wait_age_or_orphans() {
        let mut sockets = sample();
        sockets.retain(|s| !s.holders.is_empty());
        for socket in &mut sockets {
            socket.in_state_at_least_ms = None;
        }
        let text = rendered(Format::Text, &sockets, 0);
        assert!(text.contains("CLOSE_WAIT 2, LISTEN 1"), "{text}");
        assert!(!text.contains("(no process)"), "{text}");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let text = rendered(Format::Json, &sample(), 2);
        assert!(text.ends_with('\n') && !text.trim_end().contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["unreadable_processes"], 2);
        let first = &value["processes"][0];
        assert_eq!(first["pid"], 4242);
        assert_eq!(first["start_time"], 42420);
        assert_eq!(first["comm"], "python3");
        assert_eq!(
            first["workload"],
            serde_json::json!({"container": {"runtime": "docker", "id": ID}})
        );
        assert_eq!(
            first["states"],
            serde_json::json!({"CLOSE_WAIT": 2, "LISTEN": 1})
        );
        assert_eq!(
            first["sockets"][1],
            serde_json::json!({
                "netns": 4026531840u32,
                "state": "CLOSE_WAIT",
                "family": "ipv4",
                "saddr": "127.0.0.1",
                "sport": 8080,
                "daddr": "127.0.0.1",
                "dport": 40000,
                "inode": 8080,
                "cookie": 8080,
                "in_state_at_least_ms": 41_200,
            })
        );
        assert_eq!(value["processes"][1]["workload"], serde_json::Value::Null);
        assert_eq!(
            value["no_process"]["states"],
            serde_json::json!({"TIME_WAIT": 1})
        );
        assert_eq!(value["no_process"]["sockets"][0]["inode"], 0);
    }

    #[test]
    fn the_json_has_exactly_the_fields_docs_snapshot_md_lists() {
        use crate::output::doc_schema::{fields, keys};
        let doc = include_str!("../../../docs/snapshot.md");
        let value: serde_json::Value =
            serde_json::from_str(&rendered(Format::Json, &sample(), 0)).unwrap();
        assert_eq!(keys(&value), fields(doc, "### Top level"));
        let processes = value["processes"].as_array().unwrap();
        assert!(!processes.is_empty());
        let mut sockets = value["no_process"]["sockets"].as_array().unwrap().clone();
        for process in processes {
            assert_eq!(keys(process), fields(doc, "### `processes[]`"));
            sockets.extend(process["sockets"].as_array().unwrap().iter().cloned());
        }
        for socket in &sockets {
            assert_eq!(keys(socket), fields(doc, "### Each socket"));
        }
    }

    #[test]
    fn json_of_nothing() {
        let value: serde_json::Value =
            serde_json::from_str(&rendered(Format::Json, &[], 0)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "processes": [],
                "no_process": {"states": {}, "sockets": []},
                "unreadable_processes": 0,
            })
        );
    }
}
