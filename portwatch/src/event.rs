//! Decoding ring-buffer records into typed events.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use portwatch_common::{
    AF_INET, AF_INET6, COMM_LEN, ConnectFailedEvent, EventKind, ExitEvent, FLAG_BY_SYSCALL,
    FLAG_IN_STATE_KNOWN, Origin as RawOrigin, Owner as RawOwner, OwnerEvent,
    OwnerSource as RawSource, StateEvent,
};
use serde::{Serialize, Serializer};

use crate::tcp_state::{TcpState, UnknownState};

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// A task's command name as the kernel keeps it: up to 16 bytes, NUL-padded, not
/// necessarily UTF-8. Kept as bytes so decoding allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub const fn from_bytes(bytes: [u8; COMM_LEN]) -> Self {
        Comm(bytes)
    }

    pub fn new(name: &str) -> Self {
        let mut bytes = [0; COMM_LEN];
        let len = name.len().min(COMM_LEN);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Comm(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(text) => f.pad(text),
            Err(_) => f.pad(&String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How portwatch learned who owns a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The process called connect() on it.
    Connect,
    /// The process called listen() on it.
    Listen,
    /// The process accepted it.
    Accept,
    /// Another of the process's own system calls on it (close, shutdown, ...).
    Syscall,
    /// Provisional: the owner of the listener that created it; not accepted yet, or
    /// accepted without the peer address (accept(fd, NULL, NULL)).
    Listener,
    /// Found holding the socket's file descriptor in /proc.
    Procfs,
}

impl OwnerSource {
    /// Learned from the owner's own system call, rather than inferred.
    pub fn is_certain(self) -> bool {
        !matches!(self, OwnerSource::Listener)
    }
}

/// How a socket came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Opened by connect().
    Active,
    /// Created for an incoming connection.
    Passive,
    /// A listening socket.
    Listener,
}

/// The process a socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup v2 id of the owner when it was learned; 0 if unknown.
    pub cgroup_id: u64,
    pub source: OwnerSource,
}

/// The task that was on the CPU when something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
}

/// One TCP state transition, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The socket's identity (kernel address of its `struct sock`).
    pub sock: u64,
    /// The task current when the transition happened. Unless `by_syscall`, it may be
    /// an incidental bystander (softirq context): use `owner`.
    pub task: Task,
    /// Only a system call on the socket makes this transition, so `task` holds it.
    pub by_syscall: bool,
    /// The socket's owner as the kernel knew it after the transition, if it knew.
    pub owner: Option<Owner>,
    pub origin: Option<Origin>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old_state: TcpState,
    pub new_state: TcpState,
    /// How long the socket spent in `old_state`, when portwatch saw it enter it.
    pub in_state_ns: Option<u64>,
    /// When portwatch saw the socket open (CLOCK_MONOTONIC ns).
    pub opened_ns: Option<u64>,
}

impl Transition {
    /// The active closer's socket leaves FIN_WAIT2 or CLOSING for CLOSE when the kernel
    /// swaps it for a time-wait mini-socket (TIME_WAIT never appears as a new state in
    /// this tracepoint). A reset in those states looks the same; rare enough to accept.
    pub fn enters_time_wait(&self) -> bool {
        self.new_state == TcpState::Close
            && matches!(self.old_state, TcpState::FinWait2 | TcpState::Closing)
    }
}

/// A process accepted a socket and owns it from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub ts_ns: u64,
    pub sock: u64,
    pub owner: Owner,
}

/// A process exited; its PID may be reused from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: Comm,
}

/// connect() failed with EADDRNOTAVAIL: no local port was free for its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailed {
    pub ts_ns: u64,
    pub task: Task,
    pub errno: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    Accepted(Accepted),
    Exited(Exited),
    ConnectFailed(ConnectFailed),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for its header")]
    TooShort(usize),
    #[error("record of kind {kind} has {len} bytes, expected {expected}")]
    WrongLength {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error(transparent)]
    UnknownState(#[from] UnknownState),
    #[error("unknown owner source {0}")]
    UnknownSource(u8),
    #[error("unknown socket origin {0}")]
    UnknownOrigin(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let kind_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|head| head.try_into().ok())
        .ok_or(DecodeError::TooShort(bytes.len()))?;
    match u32::from_ne_bytes(kind_bytes) {
        kind if kind == EventKind::State as u32 => {
            let raw: StateEvent = read_record(bytes, kind)?;
            Transition::try_from(&raw).map(Event::Transition)
        }
        kind if kind == EventKind::Owner as u32 => {
            let raw: OwnerEvent = read_record(bytes, kind)?;
            let owner = owner(&raw.owner)?.ok_or(DecodeError::UnknownSource(0))?;
            Ok(Event::Accepted(Accepted {
                ts_ns: raw.ts_ns,
                sock: raw.sock,
                owner,
            }))
        }
        kind if kind == EventKind::Exit as u32 => {
            let raw: ExitEvent = read_record(bytes, kind)?;
            Ok(Event::Exited(Exited {
                ts_ns: raw.ts_ns,
                pid: raw.tgid,
                comm: Comm(raw.comm),
            }))
        }
        kind if kind == EventKind::ConnectFailed as u32 => {
            let raw: ConnectFailedEvent = read_record(bytes, kind)?;
            Ok(Event::ConnectFailed(ConnectFailed {
                ts_ns: raw.ts_ns,
                task: Task {
                    pid: raw.tgid,
                    tid: raw.tid,
                    comm: Comm(raw.comm),
                },
                errno: raw.errno,
            }))
        }
        kind => Err(DecodeError::UnknownKind(kind)),
    }
}

/// Marker for the plain-old-data record types of portwatch-common.
pub(crate) trait Record: Copy {}
impl Record for StateEvent {}
impl Record for OwnerEvent {}
impl Record for ExitEvent {}
impl Record for ConnectFailedEvent {}

fn read_record<T: Record>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() != expected {
        return Err(DecodeError::WrongLength {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked above, the record types are `#[repr(C)]` plain old
    // data for which every bit pattern is valid, and `read_unaligned` makes no
    // alignment assumption.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

impl TryFrom<&StateEvent> for Transition {
    type Error = DecodeError;

    fn try_from(raw: &StateEvent) -> Result<Self, Self::Error> {
        let (family, saddr, daddr) = match raw.family {
            AF_INET => (Family::Ipv4, ipv4(&raw.saddr), ipv4(&raw.daddr)),
            AF_INET6 => (Family::Ipv6, ipv6(&raw.saddr), ipv6(&raw.daddr)),
            other => return Err(DecodeError::UnknownFamily(other)),
        };
        Ok(Transition {
            ts_ns: raw.ts_ns,
            sock: raw.sock,
            task: Task {
                pid: raw.tgid,
                tid: raw.tid,
                comm: Comm(raw.comm),
            },
            by_syscall: raw.flags & FLAG_BY_SYSCALL != 0,
            owner: owner(&raw.owner)?,
            origin: origin(raw.owner.origin)?,
            family,
            saddr,
            sport: raw.sport,
            daddr,
            dport: raw.dport,
            old_state: TcpState::try_from(raw.old_state)?,
            new_state: TcpState::try_from(raw.new_state)?,
            in_state_ns: (raw.flags & FLAG_IN_STATE_KNOWN != 0).then_some(raw.in_state_ns),
            opened_ns: (raw.opened_ns != 0).then_some(raw.opened_ns),
        })
    }
}

fn owner(raw: &RawOwner) -> Result<Option<Owner>, DecodeError> {
    let source = match raw.source {
        s if s == RawSource::Unknown as u8 => return Ok(None),
        s if s == RawSource::Connect as u8 => OwnerSource::Connect,
        s if s == RawSource::Listen as u8 => OwnerSource::Listen,
        s if s == RawSource::Accept as u8 => OwnerSource::Accept,
        s if s == RawSource::Syscall as u8 => OwnerSource::Syscall,
        s if s == RawSource::Listener as u8 => OwnerSource::Listener,
        s if s == RawSource::Procfs as u8 => OwnerSource::Procfs,
        other => return Err(DecodeError::UnknownSource(other)),
    };
    if raw.tgid == 0 {
        return Ok(None);
    }
    Ok(Some(Owner {
        pid: raw.tgid,
        comm: Comm(raw.comm),
        cgroup_id: raw.cgroup_id,
        source,
    }))
}

fn origin(raw: u8) -> Result<Option<Origin>, DecodeError> {
    Ok(match raw {
        o if o == RawOrigin::Unknown as u8 => None,
        o if o == RawOrigin::Active as u8 => Some(Origin::Active),
        o if o == RawOrigin::Passive as u8 => Some(Origin::Passive),
        o if o == RawOrigin::Listener as u8 => Some(Origin::Listener),
        other => return Err(DecodeError::UnknownOrigin(other)),
    })
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

/// An IPv6 address, or the IPv4 address it maps (`::ffff:a.b.c.d`): a dual-stack socket
/// talking IPv4 is shown as IPv4, as `ss` does. Shared with the sock_diag decoder so both
/// sources spell the same socket the same way.
pub fn ipv6(bytes: &[u8; 16]) -> IpAddr {
    unmap(IpAddr::V6(Ipv6Addr::from(*bytes)))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; any other address unchanged.
pub fn unmap(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use portwatch_common::tcp_state;

    use super::*;

    pub(crate) fn raw_v4() -> StateEvent {
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let mut comm = [0; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut owner_comm = [0; 16];
        owner_comm[..5].copy_from_slice(b"nginx");
        StateEvent {
            kind: EventKind::State as u32,
            flags: FLAG_IN_STATE_KNOWN,
            ts_ns: 123_456_789,
            sock: 0xffff_8880_1234_5678,
            in_state_ns: 1_500_000,
            opened_ns: 100_000_000,
            tgid: 4242,
            tid: 4243,
            saddr,
            daddr,
            comm,
            sport: 40000,
            dport: 443,
            family: AF_INET,
            old_state: tcp_state::SYN_SENT,
            new_state: tcp_state::ESTABLISHED,
            owner: RawOwner {
                cgroup_id: 77,
                tgid: 1000,
                source: RawSource::Connect as u8,
                origin: RawOrigin::Active as u8,
                _pad: 0,
                comm: owner_comm,
            },
        }
    }

    pub(crate) fn bytes_of<T: Record>(raw: &T) -> Vec<u8> {
        // SAFETY: the record types are plain old data without padding (sizes asserted
        // in portwatch-common), so all of their bytes are initialised.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(raw).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    pub(crate) fn transition(raw: &StateEvent) -> Transition {
        match decode(&bytes_of(raw)).unwrap() {
            Event::Transition(transition) => transition,
            other => panic!("not a transition: {other:?}"),
        }
    }

    #[test]
    fn decodes_an_ipv4_record() {
        let event = transition(&raw_v4());
        assert_eq!(
            event,
            Transition {
                ts_ns: 123_456_789,
                sock: 0xffff_8880_1234_5678,
                task: Task {
                    pid: 4242,
                    tid: 4243,
                    comm: Comm::new("curl"),
                },
                by_syscall: false,
                owner: Some(Owner {
                    pid: 1000,
                    comm: Comm::new("nginx"),
                    cgroup_id: 77,
                    source: OwnerSource::Connect,
                }),
                origin: Some(Origin::Active),
                family: Family::Ipv4,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 40000,
                daddr: "10.1.2.3".parse().unwrap(),
                dport: 443,
                old_state: TcpState::SynSent,
                new_state: TcpState::Established,
                in_state_ns: Some(1_500_000),
                opened_ns: Some(100_000_000),
            }
        );
    }

    #[test]
    fn decodes_unaligned_records() {
        let mut buffer = vec![0u8];
        buffer.extend(bytes_of(&raw_v4()));
        let Ok(Event::Transition(event)) = decode(&buffer[1..]) else {
            panic!("not decoded");
        };
        assert_eq!(event.sport, 40000);
    }

    #[test]
    fn ipv6_and_v4_mapped_addresses() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.daddr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        let event = transition(&raw);
        assert_eq!(event.family, Family::Ipv6);
        assert_eq!(event.saddr, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(event.daddr, "192.0.2.7".parse::<IpAddr>().unwrap());
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(transition(&raw).saddr.to_string(), "::1");
    }

    #[test]
    fn unknown_values_are_none() {
        let mut raw = raw_v4();
        raw.flags = 0;
        raw.opened_ns = 0;
        raw.owner = RawOwner::UNKNOWN;
        let event = transition(&raw);
        assert_eq!(event.in_state_ns, None);
        assert_eq!(event.opened_ns, None);
        assert_eq!(event.owner, None);
        assert_eq!(event.origin, None);
        assert!(!event.by_syscall);
    }

    #[test]
    fn decodes_owner_and_exit_records() {
        let raw = raw_v4();
        let accepted = OwnerEvent {
            kind: EventKind::Owner as u32,
            _pad: 0,
            ts_ns: 5,
            sock: 9,
            owner: RawOwner {
                source: RawSource::Accept as u8,
                ..raw.owner
            },
        };
        let Ok(Event::Accepted(event)) = decode(&bytes_of(&accepted)) else {
            panic!("not an accept");
        };
        assert_eq!((event.sock, event.owner.pid), (9, 1000));
        assert_eq!(event.owner.source, OwnerSource::Accept);

        let exited = ExitEvent {
            kind: EventKind::Exit as u32,
            tgid: 31,
            ts_ns: 6,
            comm: raw.comm,
        };
        assert_eq!(
            decode(&bytes_of(&exited)),
            Ok(Event::Exited(Exited {
                ts_ns: 6,
                pid: 31,
                comm: Comm::new("curl")
            }))
        );
    }

    #[test]
    fn decodes_connect_failures() {
        let raw = ConnectFailedEvent {
            kind: EventKind::ConnectFailed as u32,
            errno: 99,
            ts_ns: 7,
            tgid: 10,
            tid: 11,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let Ok(Event::ConnectFailed(failed)) = decode(&bytes_of(&raw)) else {
            panic!("not a connect failure");
        };
        assert_eq!(
            (failed.task.pid, failed.task.tid, failed.errno),
            (10, 11, 99)
        );
        assert_eq!(failed.task.comm, Comm::new("curl"));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[1, 0]), Err(DecodeError::TooShort(2)));
        let good = bytes_of(&raw_v4());
        assert!(matches!(
            decode(&good[..50]),
            Err(DecodeError::WrongLength { len: 50, .. })
        ));
        let mut raw = raw_v4();
        raw.kind = 99;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::UnknownKind(99)));
        let mut raw = raw_v4();
        raw.new_state = 42;
        assert_eq!(
            decode(&bytes_of(&raw)),
            Err(DecodeError::UnknownState(UnknownState(42)))
        );
        let mut raw = raw_v4();
        raw.family = 1;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::UnknownFamily(1)));
        let mut raw = raw_v4();
        raw.owner.source = 200;
        assert_eq!(
            decode(&bytes_of(&raw)),
            Err(DecodeError::UnknownSource(200))
        );
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        assert_eq!(Comm(*b"nginx\0\0\0garbage\0").to_string(), "nginx");
        let mut bad = [0u8; 16];
        bad[..2].copy_from_slice(&[0xff, b'a']);
        assert_eq!(Comm(bad).to_string(), "\u{fffd}a");
        assert_eq!(Comm(*b"exactly16bytes!!").to_string(), "exactly16bytes!!");
        assert_eq!(
            Comm::new("a-name-longer-than-16").to_string(),
            "a-name-longer-th"
        );
    }

    #[test]
    fn time_wait_entry() {
        let mut event = transition(&raw_v4());
        event.old_state = TcpState::FinWait2;
        event.new_state = TcpState::Close;
        assert!(event.enters_time_wait());
        event.old_state = TcpState::LastAck;
        assert!(!event.enters_time_wait());
    }
}
