use std::net::Ipv6Addr;

use portwatch_common::{
    AF_INET, AF_INET6, ConnectFailedEvent, EventKind, ExitEvent, FLAG_IN_STATE_KNOWN,
    Origin as RawOrigin, Owner as RawOwner, OwnerEvent, OwnerSource as RawSource, StateEvent,
    tcp_state,
};

use super::{decode::Record, *};
use crate::tcp_state::UnknownState;

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
        netns: 4026531840,
        _pad: 0,
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
            netns: 4026531840,
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
