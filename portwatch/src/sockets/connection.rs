//! Finished connections, as `stream --connections` shows them: one per socket that was
//! a connection (it got past the handshake) and closed, with which side closed first
//! and whether this side was left in TIME_WAIT.
//!
//! Pure: the CLOSE transition and what the socket table knew of the socket
//! ([`Closed`]) in, a [`Connection`] out. Everything it needs is in the last
//! transition: the state a socket closes from tells the whole path it took (see
//! [`Closer`]), so no state is kept per socket beyond the table's own.
use super::{owners::SocketOwner, table::Closed, tuple::Tuple};
use crate::{
    event::{Family, Origin, Transition},
    tcp_state::TcpState,
};

/// Which side of a connection sent the first FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Closer {
    /// This socket's process closed (or shut down) first: the socket left ESTABLISHED
    /// for FIN_WAIT1, and closes from FIN_WAIT1, FIN_WAIT2 or CLOSING.
    Local,
    /// The peer did: the socket went to CLOSE_WAIT, and closes from CLOSE_WAIT or
    /// LAST_ACK.
    Peer,
    /// Neither FIN was sent: the connection was reset or aborted straight from
    /// ESTABLISHED (a RST either way looks the same to the tracepoint).
    Unknown,
}

/// Whether portwatch saw the connection open, which decides what its duration is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Opened {
    /// At connect() or, for an accepted connection, when its SYN arrived: the duration
    /// is exact.
    Seen,
    /// Before portwatch attached (the startup snapshot listed it): the duration counts
    /// from when tracing began, a lower bound.
    BeforeStart,
    /// Not seen, and not in the startup snapshot: its opening record was lost (the
    /// summary counts those) or the snapshot missed it. No duration.
    Unseen,
}

/// One finished connection, seen from one of its sockets (a loopback connection has
/// two, and so two of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// When it closed (CLOCK_MONOTONIC ns).
    pub closed_ns: u64,
    /// The socket's identity (kernel address of its `struct sock`).
    pub sock: u64,
    pub family: Family,
    /// Local and remote ends, and the network namespace.
    pub tuple: Tuple,
    /// Which end opened it: `Active` (connect), `Passive` (accepted).
    pub origin: Option<Origin>,
    pub owner: Option<SocketOwner>,
    pub opened: Opened,
    /// Open to close, in ns; with [`Opened::BeforeStart`] from when tracing began.
    pub duration_ns: Option<u64>,
    pub closer: Closer,
    /// The state it left for CLOSE.
    pub closed_from: TcpState,
    /// This side went to TIME_WAIT: it closed first and finished the close normally
    /// (FIN_WAIT2 or CLOSING to CLOSE, [`Transition::enters_time_wait`]).
    pub time_wait: bool,
}

/// What a socket's CLOSE transition ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Connection(Connection),
    /// A connection attempt that never got past the handshake: a connect() that failed
    /// (refused, timed out) or an incoming SYN whose handshake did not complete. Not a
    /// connection; counted, not shown.
    NeverEstablished,
    /// Not a connection at all: a listener closing, or a socket closed twice.
    Other,
}

/// What `event`, a socket's transition to CLOSE, ended. `closed` is the socket as the
/// table knew it, `owner` its owner, `start_ns` when tracing began.
pub fn ended(
    event: &Transition,
    closed: &Closed,
    owner: Option<SocketOwner>,
    start_ns: u64,
) -> Ending {
    debug_assert_eq!(event.new_state, TcpState::Close);
    let closer = match event.old_state {
        TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing => Closer::Local,
        TcpState::CloseWait | TcpState::LastAck => Closer::Peer,
        TcpState::Established => Closer::Unknown,
        TcpState::SynSent | TcpState::SynRecv => return Ending::NeverEstablished,
        _ => return Ending::Other,
    };
    let (opened, duration_ns) = match closed.opened_ns {
        Some(opened_ns) => (Opened::Seen, Some(event.ts_ns.saturating_sub(opened_ns))),
        None if closed.predates_start => (
            Opened::BeforeStart,
            Some(event.ts_ns.saturating_sub(start_ns)),
        ),
        None => (Opened::Unseen, None),
    };
    Ending::Connection(Connection {
        closed_ns: event.ts_ns,
        sock: event.sock,
        family: event.family,
        tuple: Tuple::of(event),
        origin: closed.origin.or(event.origin),
        owner,
        opened,
        duration_ns,
        closer,
        closed_from: event.old_state,
        time_wait: event.enters_time_wait(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Comm, Event, Owner, OwnerSource, Task},
        sockets::table::SocketTable,
    };

    const START: u64 = 1_000;

    fn transition(sock: u64, ts: u64, old: TcpState, new: TcpState) -> Transition {
        Transition {
            ts_ns: ts,
            sock,
            netns: 4026531840,
            task: Task {
                pid: 0,
                tid: 0,
                comm: Comm::new("swapper/0"),
            },
            by_syscall: false,
            owner: Some(Owner {
                pid: 42,
                comm: Comm::new("client"),
                cgroup_id: 1,
                source: OwnerSource::Connect,
            }),
            origin: Some(Origin::Active),
            family: Family::Ipv4,
            saddr: "127.0.0.1".parse().unwrap(),
            sport: 40000,
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 8080,
            old_state: old,
            new_state: new,
            in_state_ns: None,
            opened_ns: None,
        }
    }

    /// Feeds a socket's transitions (`(ts, old, new)`), each at its time, through a
    /// socket table as `stream` does; returns what its CLOSE ended. `opened_ns` is
    /// what the kernel's records carry as the open time.
    fn run(
        table: &mut SocketTable,
        steps: &[(u64, TcpState, TcpState)],
        opened_ns: Option<u64>,
    ) -> Ending {
        let mut ending = None;
        for &(ts, old, new) in steps {
            let mut event = transition(7, ts, old, new);
            event.opened_ns = opened_ns;
            let applied = table.apply_transition(&event);
            if let Some(closed) = applied.closed {
                assert!(ending.is_none(), "closed twice");
                ending = Some(ended(&event, &closed, applied.owner, START));
            }
        }
        ending.expect("no CLOSE")
    }

    fn connection(ending: Ending) -> Connection {
        match ending {
            Ending::Connection(connection) => connection,
            other => panic!("not a connection: {other:?}"),
        }
    }

    use TcpState::*;

    #[test]
    fn the_side_that_closes_first_is_local_and_keeps_the_time_wait() {
        let ending = run(
            &mut SocketTable::new(),
            &[
                (2_000, Close, SynSent),
                (2_100, SynSent, Established),
                (5_000, Established, FinWait1),
                (5_100, FinWait1, FinWait2),
                (5_200, FinWait2, Close),
            ],
            Some(2_000),
        );
        let c = connection(ending);
        assert_eq!(c.closer, Closer::Local);
        assert!(c.time_wait);
        assert_eq!(c.closed_from, FinWait2);
        assert_eq!((c.opened, c.duration_ns), (Opened::Seen, Some(3_200)));
        assert_eq!(c.owner.unwrap().process.pid, 42);
        assert_eq!(c.closed_ns, 5_200);
        assert_eq!(c.tuple.dport, 8080);
    }

    #[test]
    fn the_side_whose_peer_closes_first_has_no_time_wait() {
        let c = connection(run(
            &mut SocketTable::new(),
            &[
                (2_100, SynRecv, Established),
                (5_000, Established, CloseWait),
                (5_100, CloseWait, LastAck),
                (5_200, LastAck, Close),
            ],
            Some(2_000),
        ));
        assert_eq!((c.closer, c.time_wait), (Closer::Peer, false));
        assert_eq!(c.duration_ns, Some(3_200));
    }

    #[test]
    fn a_simultaneous_close_is_local_and_leaves_a_time_wait() {
        let c = connection(run(
            &mut SocketTable::new(),
            &[
                (5_000, Established, FinWait1),
                (5_100, FinWait1, Closing),
                (5_200, Closing, Close),
            ],
            Some(2_000),
        ));
        assert_eq!((c.closer, c.time_wait), (Closer::Local, true));
    }

    #[test]
    fn resets_after_a_fin_keep_the_closer_and_leave_no_time_wait() {
        let local = connection(run(
            &mut SocketTable::new(),
            &[(5_000, Established, FinWait1), (5_100, FinWait1, Close)],
            Some(2_000),
        ));
        assert_eq!((local.closer, local.time_wait), (Closer::Local, false));
        let peer = connection(run(
            &mut SocketTable::new(),
            &[(5_000, Established, CloseWait), (5_100, CloseWait, Close)],
            Some(2_000),
        ));
        assert_eq!((peer.closer, peer.time_wait), (Closer::Peer, false));
    }

    #[test]
    fn a_reset_from_established_has_no_known_closer() {
        let c = connection(run(
            &mut SocketTable::new(),
            &[(2_100, SynSent, Established), (5_000, Established, Close)],
            Some(2_000),
        ));
        assert_eq!((c.closer, c.time_wait), (Closer::Unknown, false));
        assert_eq!(c.closed_from, Established);
    }

    #[test]
    fn attempts_that_never_established_and_listeners_are_not_connections() {
        let refused = run(
            &mut SocketTable::new(),
            &[(2_000, Close, SynSent), (2_100, SynSent, Close)],
            Some(2_000),
        );
        assert_eq!(refused, Ending::NeverEstablished);
        let dropped = run(
            &mut SocketTable::new(),
            &[(2_000, Listen, SynRecv), (2_100, SynRecv, Close)],
            Some(2_000),
        );
        assert_eq!(dropped, Ending::NeverEstablished);
        let listener = run(
            &mut SocketTable::new(),
            &[(2_000, Close, Listen), (9_000, Listen, Close)],
            Some(2_000),
        );
        assert_eq!(listener, Ending::Other);
    }

    #[test]
    fn a_connection_from_before_start_counts_from_the_start() {
        let mut table = SocketTable::new();
        let event = transition(7, 0, Established, Close);
        table.seed(crate::sockets::table::Seed {
            tuple: Tuple::of(&event),
            state: Established,
            holders: vec![(42, Comm::new("client"))],
            in_state_at_least_ns: None,
            taken_ns: START,
        });
        let c = connection(run(
            &mut table,
            &[(5_000, Established, FinWait1), (5_200, FinWait2, Close)],
            None,
        ));
        assert_eq!(c.opened, Opened::BeforeStart);
        assert_eq!(c.duration_ns, Some(5_200 - START));
        // The snapshot's holder, as the socket table named it.
        assert_eq!(c.owner.unwrap().source, OwnerSource::Procfs);
    }

    #[test]
    fn an_open_never_seen_has_no_duration() {
        let c = connection(run(
            &mut SocketTable::new(),
            &[(5_000, Established, CloseWait), (5_200, LastAck, Close)],
            None,
        ));
        assert_eq!((c.opened, c.duration_ns), (Opened::Unseen, None));
    }

    #[test]
    fn the_table_keeps_the_open_time_the_first_record_carried() {
        // The kernel's socket table was full: only the opening record carries the
        // open time; the table remembers it for the close.
        let mut table = SocketTable::new();
        let mut opening = transition(7, 2_000, Close, SynSent);
        opening.opened_ns = Some(2_000);
        table.apply(&Event::Transition(opening));
        let c = connection(run(
            &mut table,
            &[(2_100, SynSent, Established), (5_000, Established, Close)],
            None,
        ));
        assert_eq!((c.opened, c.duration_ns), (Opened::Seen, Some(3_000)));
    }
}
