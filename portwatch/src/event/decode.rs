//! Decoding ring-buffer records into typed events: check the length, read unaligned,
//! and turn every number the kernel sends into its type or a [`DecodeError`].
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portwatch_common::{
    AF_INET, AF_INET6, ConnectFailedEvent, EventKind, ExitEvent, FLAG_BY_SYSCALL,
    FLAG_IN_STATE_KNOWN, Origin as RawOrigin, Owner as RawOwner, OwnerEvent,
    OwnerSource as RawSource, StateEvent,
};

use super::{
    Accepted, Comm, ConnectFailed, Event, Exited, Family, Origin, Owner, OwnerSource, Task,
    Transition,
};
use crate::tcp_state::{TcpState, UnknownState};

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
            netns: raw.netns,
            in_state_ns: (raw.flags & FLAG_IN_STATE_KNOWN != 0).then_some(raw.in_state_ns),
            opened_ns: (raw.opened_ns != 0).then_some(raw.opened_ns),
        })
    }
}

pub(super) fn owner(raw: &RawOwner) -> Result<Option<Owner>, DecodeError> {
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

pub(super) fn origin(raw: u8) -> Result<Option<Origin>, DecodeError> {
    Ok(match raw {
        o if o == RawOrigin::Unknown as u8 => None,
        o if o == RawOrigin::Active as u8 => Some(Origin::Active),
        o if o == RawOrigin::Passive as u8 => Some(Origin::Passive),
        o if o == RawOrigin::Listener as u8 => Some(Origin::Listener),
        other => return Err(DecodeError::UnknownOrigin(other)),
    })
}

pub(super) fn ipv4(bytes: &[u8; 16]) -> IpAddr {
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
