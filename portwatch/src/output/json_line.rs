//! `portwatch stream --format json`'s line: its fields, and a writer for it without serde.
//!
//! Under churn a stream prints hundreds of thousands of lines a second, and serde_json
//! spent most of its time escaping the same twenty field names over and over. This
//! writer appends the field names as constants and formats the values directly; it
//! must produce exactly the bytes `serde_json::to_writer(&JsonTransition)` would, and
//! the tests below hold it to that.
use std::net::IpAddr;

use serde::Serialize;

use crate::{
    event::{Comm, Family, Origin, OwnerSource, Transition},
    sockets::owners::SocketOwner,
    tcp_state::TcpState,
};

/// The owner to show next to a transition, as the socket table resolved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShownOwner {
    pub owner: SocketOwner,
    /// False once the process has exited (the PID may name another process now).
    pub alive: bool,
}

/// One `--format json` line. Field names are a stable interface: docs/stream.md documents
/// them (a test holds the two together); add fields, never rename or remove.
///
/// This is the reference for the line: [`write_transition`] writes the same bytes
/// faster, and the tests below compare the two. A field added here must be added there.
#[derive(Serialize)]
pub struct JsonTransition<'a> {
    pub ts_ns: u64,
    #[serde(flatten)]
    pub owner: JsonOwner,
    /// The owner's container, pod or systemd unit, as the report names it; null when
    /// none is known (yet: it is looked up between batches of events).
    pub workload: Option<&'a str>,
    /// The task that was on the CPU; unless `by_syscall`, possibly a bystander.
    pub task_pid: u32,
    pub task_tid: u32,
    pub task_comm: Comm,
    pub by_syscall: bool,
    pub origin: Option<Origin>,
    pub family: Family,
    /// Network namespace inode (0: unknown).
    pub netns: u32,
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

impl<'a> JsonTransition<'a> {
    pub fn new(event: &Transition, owner: Option<&ShownOwner>, workload: Option<&'a str>) -> Self {
        JsonTransition {
            ts_ns: event.ts_ns,
            owner: JsonOwner::new(owner),
            workload,
            task_pid: event.task.pid,
            task_tid: event.task.tid,
            task_comm: event.task.comm,
            by_syscall: event.by_syscall,
            origin: event.origin,
            family: event.family,
            netns: event.netns,
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

/// A socket's owner as the JSON lines about sockets (transitions, connections) carry
/// it; every field is null when portwatch does not know the owner.
#[derive(Serialize)]
pub struct JsonOwner {
    pub pid: Option<u32>,
    pub comm: Option<Comm>,
    pub owner_source: Option<OwnerSource>,
    pub owner_alive: Option<bool>,
    /// Null when unknown (0).
    pub cgroup_id: Option<u64>,
}

impl JsonOwner {
    pub fn new(owner: Option<&ShownOwner>) -> Self {
        JsonOwner {
            pid: owner.map(|o| o.owner.process.pid),
            comm: owner.map(|o| o.owner.comm),
            owner_source: owner.map(|o| o.owner.source),
            owner_alive: owner.map(|o| o.alive),
            cgroup_id: owner.map(|o| o.owner.cgroup_id).filter(|&id| id != 0),
        }
    }
}

/// A `u64` serialized as a `"0x…"` string, written straight into the output.
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// Appends one JSON line (with its newline) for `event` to `out`.
pub fn write_transition(
    out: &mut Vec<u8>,
    event: &Transition,
    owner: Option<&ShownOwner>,
    workload: Option<&str>,
) {
    out.extend_from_slice(b"{\"ts_ns\":");
    integer(out, event.ts_ns);
    out.extend_from_slice(b",\"pid\":");
    optional(out, owner.map(|o| o.owner.process.pid), integer);
    out.extend_from_slice(b",\"comm\":");
    optional(out, owner.map(|o| o.owner.comm), |out, comm| {
        comm_string(out, &comm)
    });
    out.extend_from_slice(b",\"owner_source\":");
    optional(out, owner.map(|o| o.owner.source), |out, source| {
        string(out, owner_source(source))
    });
    out.extend_from_slice(b",\"owner_alive\":");
    optional(out, owner.map(|o| o.alive), boolean);
    out.extend_from_slice(b",\"cgroup_id\":");
    let cgroup_id = owner.map(|o| o.owner.cgroup_id).filter(|&id| id != 0);
    optional(out, cgroup_id, integer);
    out.extend_from_slice(b",\"workload\":");
    optional(out, workload, escaped);
    out.extend_from_slice(b",\"task_pid\":");
    integer(out, event.task.pid);
    out.extend_from_slice(b",\"task_tid\":");
    integer(out, event.task.tid);
    out.extend_from_slice(b",\"task_comm\":");
    comm_string(out, &event.task.comm);
    out.extend_from_slice(b",\"by_syscall\":");
    boolean(out, event.by_syscall);
    out.extend_from_slice(b",\"origin\":");
    optional(out, event.origin, |out, origin| {
        string(out, origin_name(origin))
    });
    out.extend_from_slice(b",\"family\":");
    string(
        out,
        match event.family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        },
    );
    out.extend_from_slice(b",\"netns\":");
    integer(out, event.netns);
    out.extend_from_slice(b",\"saddr\":");
    address(out, event.saddr);
    out.extend_from_slice(b",\"sport\":");
    integer(out, event.sport);
    out.extend_from_slice(b",\"daddr\":");
    address(out, event.daddr);
    out.extend_from_slice(b",\"dport\":");
    integer(out, event.dport);
    out.extend_from_slice(b",\"old_state\":");
    string(out, event.old_state.name());
    out.extend_from_slice(b",\"new_state\":");
    string(out, event.new_state.name());
    out.extend_from_slice(b",\"sock\":\"0x");
    hex(out, event.sock);
    out.extend_from_slice(b"\",\"in_state_ns\":");
    optional(out, event.in_state_ns, integer);
    out.extend_from_slice(b"}\n");
}

/// The names serde gives these enums (`rename_all = "snake_case"`).
fn owner_source(source: OwnerSource) -> &'static str {
    match source {
        OwnerSource::Connect => "connect",
        OwnerSource::Listen => "listen",
        OwnerSource::Accept => "accept",
        OwnerSource::Syscall => "syscall",
        OwnerSource::Listener => "listener",
        OwnerSource::Procfs => "procfs",
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Active => "active",
        Origin::Passive => "passive",
        Origin::Listener => "listener",
    }
}

fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// A string known to need no escaping (names, addresses).
fn string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// Any string, escaped as JSON wants (unit names can hold backslashes: `\x2d`).
fn escaped(out: &mut Vec<u8>, text: &str) {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        string(out, text);
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// A command name: as `Comm`'s Display shows it (lossy UTF-8), escaped as JSON wants.
fn comm_string(out: &mut Vec<u8>, comm: &Comm) {
    let bytes = comm.as_bytes();
    // Printable ASCII other than `"` and `\` is valid UTF-8 that JSON takes as it is.
    let plain = bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        // Rare (a name with non-ASCII, quotes, control bytes or invalid UTF-8): serde_json
        // escapes it exactly as the reference output does. Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, comm);
    }
}

fn address(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            out.push(b'"');
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                integer(out, octet);
            }
            out.push(b'"');
        }
        // IPv6 text has its own rules (zero compression, embedded IPv4): std's.
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

/// Lowercase hex without leading zeros, as `{:x}` prints it.
fn hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 16];
    let mut at = buffer.len();
    let mut rest = value;
    loop {
        at -= 1;
        buffer[at] = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&buffer[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::tests::raw_v4, process::Process};

    fn reference(event: &Transition, owner: Option<&ShownOwner>, workload: Option<&str>) -> String {
        let mut line = serde_json::to_string(&JsonTransition::new(event, owner, workload)).unwrap();
        line.push('\n');
        line
    }

    fn fast(event: &Transition, owner: Option<&ShownOwner>, workload: Option<&str>) -> String {
        let mut out = Vec::new();
        write_transition(&mut out, event, owner, workload);
        String::from_utf8(out).unwrap()
    }

    fn owners() -> Vec<Option<ShownOwner>> {
        let mut owners = vec![None];
        for (i, source) in [
            OwnerSource::Connect,
            OwnerSource::Listen,
            OwnerSource::Accept,
            OwnerSource::Syscall,
            OwnerSource::Listener,
            OwnerSource::Procfs,
        ]
        .into_iter()
        .enumerate()
        {
            owners.push(Some(ShownOwner {
                owner: SocketOwner {
                    process: Process::after_exits([0, 1, 4_294_967_295, 1000, 77, 31337][i], 0),
                    comm: Comm::new(["nginx", "", "a\"b\\c", "tab\there", "日本語", "x"][i]),
                    source,
                    cgroup_id: [0, 1, u64::MAX, 42, 0, 9][i],
                },
                alive: i % 2 == 0,
            }));
        }
        owners
    }

    #[test]
    fn each_line_has_exactly_the_fields_docs_stream_md_lists() {
        use crate::output::doc_schema::{fields, keys};
        let documented = fields(include_str!("../../../docs/stream.md"), "### Fields");
        let event = Transition::try_from(&raw_v4()).unwrap();
        for owner in owners() {
            let line: serde_json::Value =
                serde_json::from_str(&fast(&event, owner.as_ref(), Some("pod:web/3f2a"))).unwrap();
            assert_eq!(keys(&line), documented);
        }
    }

    #[test]
    fn matches_serde_json_byte_for_byte() {
        let base = Transition::try_from(&raw_v4()).unwrap();
        let mut events = vec![base.clone()];
        let mut other = base.clone();
        other.in_state_ns = None;
        other.origin = None;
        other.by_syscall = true;
        other.sock = 0;
        other.ts_ns = u64::MAX;
        other.family = Family::Ipv6;
        other.saddr = "::1".parse().unwrap();
        other.daddr = "2001:db8::ffff:1.2.3.4".parse().unwrap();
        other.old_state = TcpState::NewSynRecv;
        other.new_state = TcpState::TimeWait;
        events.push(other);
        let mut mapped = base.clone();
        mapped.saddr = "0.0.0.0".parse().unwrap();
        mapped.daddr = "255.255.255.255".parse().unwrap();
        mapped.origin = Some(Origin::Passive);
        mapped.sport = 0;
        mapped.dport = 65535;
        mapped.task.comm = Comm::from_bytes(*b"\xff\xfebad\x01\x7f\0\0\0\0\0\0\0\0\0");
        events.push(mapped);
        let mut listener = base;
        listener.origin = Some(Origin::Listener);
        listener.sock = 0xffff_8881_0000_0001;
        events.push(listener);
        let workloads = [
            None,
            Some("pod:web-7d9f/3f2a9c1b7d4e"),
            Some("systemd-fsck@dev-disk-by\\x2duuid-1.service"),
            Some("quote\"d \u{e9}"),
        ];
        for event in &events {
            for owner in owners() {
                for workload in workloads {
                    assert_eq!(
                        fast(event, owner.as_ref(), workload),
                        reference(event, owner.as_ref(), workload),
                        "{event:?} {owner:?} {workload:?}"
                    );
                }
            }
        }
    }
}
