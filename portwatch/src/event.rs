//! Decoding ring-buffer records into typed events.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portwatch_common::{AF_INET, AF_INET6, EventKind, FLAG_IN_STATE_KNOWN, StateEvent};

use crate::tcp_state::{TcpState, UnknownState};

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One TCP state transition, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The socket's identity (kernel address of its `struct sock`).
    pub sock: u64,
    /// The task that was current when the transition happened.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old_state: TcpState,
    pub new_state: TcpState,
    /// How long the socket spent in `old_state`, when portwatch saw it enter it.
    pub in_state_ns: Option<u64>,
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
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
    let kind_bytes: [u8; 4] = bytes
        .get(..4)
        .and_then(|head| head.try_into().ok())
        .ok_or(DecodeError::TooShort(bytes.len()))?;
    let kind = u32::from_ne_bytes(kind_bytes);
    if kind != EventKind::State as u32 {
        return Err(DecodeError::UnknownKind(kind));
    }
    let expected = size_of::<StateEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::WrongLength {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked above, `StateEvent` is plain old data for which every
    // bit pattern is valid, and `read_unaligned` makes no alignment assumption.
    let raw = unsafe { bytes.as_ptr().cast::<StateEvent>().read_unaligned() };
    Transition::try_from(&raw)
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
            pid: raw.tgid,
            tid: raw.tid,
            comm: comm(&raw.comm),
            family,
            saddr,
            sport: raw.sport,
            daddr,
            dport: raw.dport,
            old_state: TcpState::try_from(raw.old_state)?,
            new_state: TcpState::try_from(raw.new_state)?,
            in_state_ns: (raw.flags & FLAG_IN_STATE_KNOWN != 0).then_some(raw.in_state_ns),
        })
    }
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

/// An IPv6 address, or the IPv4 address it maps (`::ffff:a.b.c.d`): a dual-stack socket
/// talking IPv4 is shown as IPv4, as `ss` does. Shared with the sock_diag decoder so both
/// sources spell the same socket the same way.
pub(crate) fn ipv6(bytes: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The kernel's comm: up to 16 bytes, NUL-padded, not necessarily UTF-8.
fn comm(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
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
        StateEvent {
            kind: EventKind::State as u32,
            flags: FLAG_IN_STATE_KNOWN,
            ts_ns: 123_456_789,
            sock: 0xffff_8880_1234_5678,
            in_state_ns: 1_500_000,
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
        }
    }

    pub(crate) fn bytes_of(raw: &StateEvent) -> Vec<u8> {
        // SAFETY: StateEvent is plain old data without padding (size asserted in
        // portwatch-common), so all of its bytes are initialised.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(raw).cast::<u8>(),
                size_of::<StateEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_record() {
        let event = decode(&bytes_of(&raw_v4())).unwrap();
        assert_eq!(
            event,
            Transition {
                ts_ns: 123_456_789,
                sock: 0xffff_8880_1234_5678,
                pid: 4242,
                tid: 4243,
                comm: "curl".into(),
                family: Family::Ipv4,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 40000,
                daddr: "10.1.2.3".parse().unwrap(),
                dport: 443,
                old_state: TcpState::SynSent,
                new_state: TcpState::Established,
                in_state_ns: Some(1_500_000),
            }
        );
    }

    #[test]
    fn decodes_unaligned_records() {
        let mut buffer = vec![0u8];
        buffer.extend(bytes_of(&raw_v4()));
        assert_eq!(decode(&buffer[1..]).unwrap().sport, 40000);
    }

    #[test]
    fn ipv6_and_v4_mapped_addresses() {
        let mut raw = raw_v4();
        raw.family = AF_INET6;
        raw.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        raw.daddr = "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap().octets();
        let event = Transition::try_from(&raw).unwrap();
        assert_eq!(event.family, Family::Ipv6);
        assert_eq!(event.saddr, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(event.daddr, "192.0.2.7".parse::<IpAddr>().unwrap());
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(Transition::try_from(&raw).unwrap().saddr.to_string(), "::1");
    }

    #[test]
    fn unknown_in_state_time_is_none() {
        let mut raw = raw_v4();
        raw.flags = 0;
        assert_eq!(Transition::try_from(&raw).unwrap().in_state_ns, None);
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
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        assert_eq!(comm(b"nginx\0\0\0garbage\0"), "nginx");
        assert_eq!(comm(&[0xff, b'a', 0]), "\u{fffd}a");
        assert_eq!(comm(b"exactly16bytes!!"), "exactly16bytes!!");
    }
}
