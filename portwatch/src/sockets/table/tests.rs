use super::*;
use crate::event::{Family, Task};
use crate::sockets::time_wait::TIME_WAIT_NS;

const SERVER: u32 = 100;
const CLIENT: u32 = 200;

fn owner(pid: u32, name: &str, source: OwnerSource) -> Option<Owner> {
    Some(Owner {
        pid,
        comm: Comm::new(name),
        cgroup_id: 1,
        source,
    })
}

fn event(sock: u64, ts: u64, old: TcpState, new: TcpState, owner: Option<Owner>) -> Event {
    Event::Transition(Transition {
        ts_ns: ts,
        sock,
        netns: 0,
        task: Task {
            pid: 0,
            tid: 0,
            comm: Comm::new("swapper/0"),
        },
        by_syscall: false,
        owner,
        origin: Some(Origin::Passive),
        family: Family::Ipv4,
        saddr: "127.0.0.1".parse().unwrap(),
        sport: 8080,
        daddr: "127.0.0.1".parse().unwrap(),
        dport: 40000 + (sock as u16),
        old_state: old,
        new_state: new,
        in_state_ns: None,
        opened_ns: Some(ts),
    })
}

#[test]
fn accept_replaces_the_provisional_listener_owner() {
    let mut table = SocketTable::new();
    let parent = owner(SERVER, "parent", OwnerSource::Listener);
    table.apply(&event(1, 10, TcpState::Listen, TcpState::SynRecv, parent));
    let child = owner(SERVER + 1, "child", OwnerSource::Accept).unwrap();
    table.apply(&Event::Accepted(Accepted {
        ts_ns: 20,
        sock: 1,
        owner: child,
    }));
    // A later softirq transition still carries the kernel's (now accepted) owner,
    // but even a stale provisional one must not undo the accept.
    let shown = table
        .apply(&event(
            1,
            30,
            TcpState::Established,
            TcpState::CloseWait,
            parent,
        ))
        .unwrap();
    assert_eq!(shown.process.pid, SERVER + 1);
    assert_eq!(shown.source, OwnerSource::Accept);
    assert_eq!(table.get(1).unwrap().state, TcpState::CloseWait);
}

#[test]
fn seeded_socket_gets_its_snapshot_owner() {
    let mut table = SocketTable::new();
    let tuple = Tuple {
        netns: 0,
        saddr: "127.0.0.1".parse().unwrap(),
        sport: 8080,
        daddr: "127.0.0.1".parse().unwrap(),
        dport: 40007,
    };
    table.seed(Seed {
        tuple,
        state: TcpState::CloseWait,
        holders: vec![(SERVER, Comm::new("leaky"))],
        in_state_at_least_ns: Some(40_000_000_000),
        taken_ns: 5,
    });
    assert_eq!(table.unmatched_seeds().count(), 1);
    // The leaker finally closes: CLOSE_WAIT -> LAST_ACK, unknown to the kernel table.
    let shown = table
        .apply(&event(7, 50, TcpState::CloseWait, TcpState::LastAck, None))
        .unwrap();
    assert_eq!(shown.process.pid, SERVER);
    assert_eq!(shown.source, OwnerSource::Procfs);
    assert_eq!(table.unmatched_seeds().count(), 0);
}

#[test]
fn time_wait_is_charged_to_the_closer_and_expires_after_60s() {
    let mut table = SocketTable::new();
    let client = owner(CLIENT, "client", OwnerSource::Connect);
    table.apply(&event(2, 0, TcpState::Close, TcpState::SynSent, client));
    table.apply(&event(
        2,
        10,
        TcpState::FinWait1,
        TcpState::FinWait2,
        client,
    ));
    table.apply(&event(2, 20, TcpState::FinWait2, TcpState::Close, client));
    assert!(table.get(2).is_none());
    let tw: Vec<_> = table.time_wait().collect();
    assert_eq!(tw.len(), 1);
    assert_eq!((tw[0].owner.unwrap().process.pid, tw[0].count), (CLIENT, 1));
    table.expire_time_wait(20 + TIME_WAIT_NS - 1);
    assert_eq!(table.time_wait().count(), 1);
    table.expire_time_wait(20 + TIME_WAIT_NS);
    assert_eq!(table.time_wait().count(), 0);
}

#[test]
fn time_wait_sockets_are_grouped_per_second_destination_and_owner() {
    let mut table = SocketTable::new();
    let client = owner(CLIENT, "client", OwnerSource::Connect);
    let other = owner(CLIENT + 1, "other", OwnerSource::Connect);
    // 1000 sockets of one client toward one destination in 2 s, interleaved with
    // another client's: four groups, every socket counted.
    for i in 0..1000u64 {
        let ts = i * 2_000_000;
        let sock = 1000 + i;
        let who = if i % 2 == 0 { client } else { other };
        table.apply(&event(sock, ts, TcpState::FinWait2, TcpState::Close, who));
    }
    let groups: Vec<_> = table.time_wait().collect();
    assert_eq!(groups.len(), 4, "{groups:?}");
    assert_eq!(groups.iter().map(|g| g.count).sum::<u32>(), 1000);
    assert!(
        groups.iter().all(|g| g.tuple.sport == 8080),
        "passive: listening port kept"
    );
    // The first second's groups expire 60 s after their first socket entered.
    table.expire_time_wait(TIME_WAIT_NS + 2_000_000);
    assert_eq!(table.time_wait().map(|g| g.count).sum::<u32>(), 500);
    table.expire_time_wait(TIME_WAIT_NS + 2_000_000_000);
    assert_eq!(table.time_wait().count(), 0);
}

#[test]
fn a_new_socket_at_a_stale_address_starts_afresh() {
    let mut table = SocketTable::new();
    // A client socket whose FIN_WAIT2 -> CLOSE the kernel skipped...
    let client = owner(CLIENT, "client", OwnerSource::Connect);
    table.apply(&event(6, 0, TcpState::Close, TcpState::SynSent, client));
    table.apply(&event(
        6,
        1,
        TcpState::Established,
        TcpState::FinWait1,
        client,
    ));
    // ...and a server socket at the same address, with its listener's owner.
    let server = owner(SERVER, "server", OwnerSource::Listener);
    let shown = table
        .apply(&event(6, 2, TcpState::Listen, TcpState::SynRecv, server))
        .unwrap();
    assert_eq!(shown.process.pid, SERVER);
    assert_eq!(shown.source, OwnerSource::Listener);
    assert_eq!(table.get(6).unwrap().state, TcpState::SynRecv);
}

#[test]
fn owners_of_closed_sockets_are_forgotten() {
    let mut table = SocketTable::new();
    // 10,000 short-lived processes, one socket each, gone without TIME_WAIT.
    for pid in 0..10_000u32 {
        let sock = u64::from(pid) + 1;
        let owner = owner(pid + 1, "short", OwnerSource::Connect);
        table.apply(&event(sock, 0, TcpState::Close, TcpState::SynSent, owner));
        table.apply(&event(sock, 1, TcpState::LastAck, TcpState::Close, owner));
    }
    // One that stays, whose owner must survive every compaction.
    let stays = owner(99_999, "stays", OwnerSource::Accept);
    table.apply(&event(
        20_000,
        2,
        TcpState::Established,
        TcpState::CloseWait,
        stays,
    ));
    for pid in 0..3000u32 {
        let sock = 10_001 + u64::from(pid);
        let owner = owner(20_000 + pid, "more", OwnerSource::Connect);
        table.apply(&event(sock, 3, TcpState::Close, TcpState::SynSent, owner));
        table.apply(&event(sock, 4, TcpState::LastAck, TcpState::Close, owner));
    }
    assert!(
        table.owners_len() < 3000,
        "{} owners kept",
        table.owners_len()
    );
    let kept = table.get(20_000).unwrap().owner.unwrap();
    assert_eq!(kept.process.pid, 99_999);
    assert_eq!(kept.comm, Comm::new("stays"));
}

#[test]
fn exits_of_processes_nothing_refers_to_are_forgotten() {
    let mut table = SocketTable::new();
    let exit = |pid| {
        Event::Exited(Exited {
            ts_ns: 1,
            pid,
            comm: Comm::new("x"),
        })
    };
    // A leaker that exits while its socket is still in the table, and a process
    // only the caller refers to (say, a row of the report).
    let leaker = table
        .apply(&event(
            1,
            0,
            TcpState::Established,
            TcpState::CloseWait,
            owner(SERVER, "leaker", OwnerSource::Accept),
        ))
        .unwrap();
    table.apply(&exit(SERVER));
    table.apply(&exit(CLIENT));
    let reported = Process::after_exits(CLIENT, 0);
    // Then 100,000 short-lived processes nothing refers to.
    for pid in 1_000..101_000 {
        table.apply(&exit(pid));
        if table.wants_exit_pruning() {
            table.prune_exits(|pid| pid == CLIENT);
        }
    }
    assert!(
        table.exits_len() < 20_000,
        "{} exits kept",
        table.exits_len()
    );
    assert!(!table.is_alive(&leaker.process), "the leaker stays exited");
    assert!(
        !table.is_alive(&reported),
        "the caller's process stays exited"
    );
    // A new process with the leaker's PID is not the leaker.
    let next = table
        .apply(&event(
            2,
            3,
            TcpState::Close,
            TcpState::SynSent,
            owner(SERVER, "next", OwnerSource::Connect),
        ))
        .unwrap();
    assert!(table.is_alive(&next.process));
    assert_ne!(next.process, leaker.process);
}

#[test]
fn a_reset_from_last_ack_is_not_time_wait() {
    let mut table = SocketTable::new();
    table.apply(&event(3, 0, TcpState::LastAck, TcpState::Close, None));
    assert_eq!(table.time_wait().count(), 0);
}

#[test]
fn exited_owner_is_not_confused_with_a_reused_pid() {
    let mut table = SocketTable::new();
    let first = owner(SERVER, "old", OwnerSource::Accept);
    let before = table
        .apply(&event(
            4,
            0,
            TcpState::Established,
            TcpState::CloseWait,
            first,
        ))
        .unwrap();
    assert!(table.is_alive(&before.process));
    table.apply(&Event::Exited(Exited {
        ts_ns: 1,
        pid: SERVER,
        comm: Comm::new("old"),
    }));
    assert!(!table.is_alive(&before.process), "the owner is gone");
    // A new process gets the same PID and opens a socket of its own.
    let reused = owner(SERVER, "new", OwnerSource::Connect);
    let now = table
        .apply(&event(5, 2, TcpState::Close, TcpState::SynSent, reused))
        .unwrap();
    assert!(table.is_alive(&now.process));
    assert_ne!(now.process, before.process);
    // The orphan's later events still carry the old owner from the kernel table: it
    // stays known to be gone.
    let later = table
        .apply(&event(4, 3, TcpState::CloseWait, TcpState::LastAck, first))
        .unwrap();
    assert!(!table.is_alive(&later.process));
    let orphan = table.get(4).unwrap().owner.unwrap();
    assert_eq!(orphan.comm, Comm::new("old"));
    assert!(!table.is_alive(&orphan.process));
}

#[test]
fn procfs_resolves_a_provisional_owner_but_never_a_certain_one() {
    let mut table = SocketTable::new();
    let listener = owner(SERVER, "primary", OwnerSource::Listener);
    table.apply(&event(
        8,
        0,
        TcpState::SynRecv,
        TcpState::Established,
        listener,
    ));
    let connected = owner(CLIENT, "client", OwnerSource::Connect);
    table.apply(&event(
        9,
        0,
        TcpState::SynSent,
        TcpState::Established,
        connected,
    ));
    assert_eq!(table.unresolved(), 1);
    let tuple = |sock| table.get(sock).unwrap().tuple;
    let holders = HashMap::from([
        (tuple(8), (SERVER + 5, Comm::new("worker"))),
        (tuple(9), (SERVER + 6, Comm::new("impostor"))),
    ]);
    assert_eq!(table.resolve(&holders), 1);
    let worker = table.get(8).unwrap().owner.unwrap();
    assert_eq!(
        (worker.process.pid, worker.source),
        (SERVER + 5, OwnerSource::Procfs)
    );
    assert_eq!(table.get(9).unwrap().owner.unwrap().process.pid, CLIENT);
    assert_eq!(table.unresolved(), 0);
}

#[test]
fn procfs_names_the_holder_of_a_socket_whose_certain_owner_exited() {
    // A leaker accepts, forks and exits: its child holds the socket now. Another
    // socket of the leaker is an orphan no process holds: it stays the leaker's.
    let mut table = SocketTable::new();
    let leaker = owner(SERVER, "leaker", OwnerSource::Accept);
    for sock in [8, 9] {
        table.apply(&event(
            sock,
            0,
            TcpState::Established,
            TcpState::CloseWait,
            leaker,
        ));
    }
    assert_eq!(
        table.unresolved(),
        0,
        "a certain, running owner needs no /proc"
    );
    table.apply(&Event::Exited(Exited {
        ts_ns: 1,
        pid: SERVER,
        comm: Comm::new("leaker"),
    }));
    assert_eq!(table.unresolved(), 2);
    let holders = HashMap::from([(
        table.get(8).unwrap().tuple,
        (SERVER + 1, Comm::new("leaker")),
    )]);
    assert_eq!(table.resolve(&holders), 1);
    let child = table.get(8).unwrap().owner.unwrap();
    assert_eq!(
        (child.process.pid, child.source),
        (SERVER + 1, OwnerSource::Procfs)
    );
    assert!(table.is_alive(&child.process));
    let orphan = table.get(9).unwrap().owner.unwrap();
    assert_eq!(orphan.process.pid, SERVER);
    assert!(!table.is_alive(&orphan.process));
}

const MINUTE: u64 = 60_000_000_000;

#[test]
fn a_full_table_evicts_stale_then_established_and_keeps_close_wait() {
    // 16 sockets at most; an eviction goes 1/16 below, to 15.
    let mut table = SocketTable::with_limit(16);
    let server = owner(SERVER, "server", OwnerSource::Accept);
    // Four sockets whose CLOSE record was lost, left in FIN_WAIT2 at the start.
    for sock in 100..104 {
        table.apply(&event(
            sock,
            1,
            TcpState::FinWait1,
            TcpState::FinWait2,
            server,
        ));
    }
    // Ten minutes later: six leaked CLOSE_WAIT sockets, then connections that stay.
    for sock in 1..=6 {
        let ts = 10 * MINUTE + sock;
        table.apply(&event(
            sock,
            ts,
            TcpState::Established,
            TcpState::CloseWait,
            server,
        ));
    }
    for sock in 200..206 {
        table.apply(&event(
            sock,
            11 * MINUTE + sock,
            TcpState::SynRecv,
            TcpState::Established,
            server,
        ));
    }
    assert_eq!(table.live_len(), 16);
    assert_eq!(table.evictions(), TableEvictions::default());

    // The 17th: the two oldest stale sockets go, and nothing that mattered.
    table.apply(&event(
        206,
        12 * MINUTE,
        TcpState::SynRecv,
        TcpState::Established,
        server,
    ));
    assert_eq!(table.live_len(), 15);
    assert!(table.get(100).is_none() && table.get(101).is_none());
    assert!(table.get(102).is_some());
    let evicted = table.evictions();
    assert_eq!((evicted.sockets, evicted.live_sockets), (2, 0));

    // Four more: the other two stale ones, then the oldest ESTABLISHED.
    for sock in 207..211 {
        table.apply(&event(
            sock,
            12 * MINUTE + sock,
            TcpState::SynRecv,
            TcpState::Established,
            server,
        ));
    }
    let evicted = table.evictions();
    assert_eq!(
        (evicted.sockets, evicted.live_sockets),
        (6, 2),
        "{evicted:?}"
    );
    assert!((100..104).all(|sock| table.get(sock).is_none()));
    assert!(table.get(200).is_none() && table.get(201).is_none());
    assert!(table.get(202).is_some());
    // Every CLOSE_WAIT survived, with its owner.
    for sock in 1..=6 {
        let socket = table.get(sock).unwrap();
        assert_eq!(socket.state, TcpState::CloseWait);
        assert_eq!(socket.owner.unwrap().process.pid, SERVER);
    }
    assert!(table.live_len() <= 16);
}

#[test]
fn close_wait_goes_last_and_newest_first() {
    let mut table = SocketTable::with_limit(4);
    let server = owner(SERVER, "server", OwnerSource::Accept);
    table.apply(&event(
        50,
        5,
        TcpState::SynRecv,
        TcpState::Established,
        server,
    ));
    for sock in 1..=4 {
        table.apply(&event(
            sock,
            sock * MINUTE,
            TcpState::Established,
            TcpState::CloseWait,
            server,
        ));
    }
    // Five sockets in a table of four: the ESTABLISHED one went, though it is older.
    assert!(table.get(50).is_none());
    table.apply(&event(
        5,
        5 * MINUTE,
        TcpState::Established,
        TcpState::CloseWait,
        server,
    ));
    // Only CLOSE_WAIT left: the newest goes, the oldest (the leak's age) stays.
    assert!(table.get(5).is_none());
    assert!((1..=4).all(|sock| table.get(sock).is_some()));
    let evicted = table.evictions();
    assert_eq!((evicted.sockets, evicted.live_sockets), (2, 2));
}

#[test]
fn time_wait_groups_are_bounded_oldest_first_and_counted() {
    let mut table = SocketTable::with_limit(16);
    // 40 owners closing in one second: 40 groups of 2 sockets each.
    for i in 0..80u64 {
        let who = owner(1000 + (i / 2) as u32, "client", OwnerSource::Connect);
        table.apply(&event(i + 1, i, TcpState::FinWait2, TcpState::Close, who));
    }
    let groups: Vec<_> = table.time_wait().collect();
    assert!(groups.len() <= 16, "{}", groups.len());
    let kept: u32 = groups.iter().map(|g| g.count).sum();
    let evicted = table.evictions().time_wait;
    assert_eq!(kept as u64 + evicted, 80);
    assert!(evicted > 0);
    // The newest owners' groups are the ones kept.
    assert_eq!(groups.last().unwrap().owner.unwrap().process.pid, 1039);
    assert!(
        groups
            .iter()
            .all(|g| g.owner.unwrap().process.pid >= 1040 - 16)
    );
    assert_eq!(table.evictions().sockets, 0);
}
