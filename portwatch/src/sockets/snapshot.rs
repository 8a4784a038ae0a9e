//! The host's TCP sockets right now, each with the processes holding it, and the
//! grouping `portwatch snapshot` prints: per process, per state.
use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;

use super::{
    diag::{DiagSocket, DiagTimer, dump_tcp_sockets},
    holders::{ProcessInfo, socket_holders_of},
    netns::{self, NetNs},
};
use crate::{process::Process, tcp_state::TcpState};

/// Every TCP socket on the host, in every network namespace, joined with its holders.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sockets: Vec<SnapshotSocket>,
    /// The namespaces dumped.
    pub namespaces: Vec<NetNs>,
    /// Namespaces that could not be entered or dumped, with why: their sockets are
    /// missing.
    pub failed_namespaces: Vec<(NetNs, String)>,
    /// Processes whose descriptors could not be read; the sockets they hold appear without
    /// a holder.
    pub unreadable_processes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSocket {
    pub socket: DiagSocket,
    /// Every process holding the socket, each once. Empty when no file refers to it:
    /// TIME_WAIT, sockets their owner closed that are still finishing, and connections
    /// still waiting in a listener's accept queue (even in CLOSE_WAIT, if the peer gave
    /// up before the server called accept).
    pub holders: Vec<ProcessInfo>,
    /// lower bound on time in its current state, when the kernel's data gives one
    pub in_state_at_least_ms: Option<u64>,
}

/// One sock_diag dump per network namespace (each from a thread that entered it: the
/// netlink socket must be opened there), joined with one pass over /proc by socket
/// inode (socket inodes are global, so a holder in any namespace is found).
///
/// The two are not atomic: a socket opened or closed between them is listed without its
/// holder or not at all. Leaked sockets, which stay for minutes, are not affected.
/// portwatch's own namespace must dump; another that cannot (it vanished, or entering
/// it is not permitted) is listed in `failed_namespaces`.
pub fn take(states: &[TcpState]) -> anyhow::Result<Snapshot> {
    let own = netns::own().context("reading /proc/self/ns/net")?;
    let mut sockets = Vec::new();
    let mut namespaces = Vec::new();
    let mut failed_namespaces = Vec::new();
    for ns in netns::all() {
        let wanted = states.to_vec();
        let dumped = netns::run_in(&ns, move || dump_tcp_sockets(&wanted))
            .map_err(anyhow::Error::from)
            .and_then(|dump| dump);
        match dumped {
            Ok(dump) => {
                sockets.extend(dump.into_iter().map(|socket| DiagSocket {
                    netns: ns.inode,
                    ..socket
                }));
                namespaces.push(ns);
            }
            Err(err) if ns.inode == own => return Err(err),
            Err(err) => failed_namespaces.push((ns, format!("{err:#}"))),
        }
    }
    // Only the holders of the sockets dumped.
    let dumped: std::collections::HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    let holders = socket_holders_of(|inode| dumped.contains(&inode))
        .context("finding the processes that hold sockets")?;
    let sockets = sockets
        .into_iter()
        .map(|socket| SnapshotSocket {
            // Inode 0 is "no file", not a socket called 0.
            holders: match socket.inode {
                0 => Vec::new(),
                inode => holders.by_inode.get(&inode).cloned().unwrap_or_default(),
            },
            in_state_at_least_ms: in_state_at_least_ms(&socket),
            socket,
        })
        .collect();
    Ok(Snapshot {
        sockets,
        namespaces,
        failed_namespaces,
        unreadable_processes: holders.unreadable_processes,
    })
}

impl Snapshot {
    /// For a connection still in a listener's accept queue (never accepted: no file
    /// refers to it, yet it is ESTABLISHED, or CLOSE_WAIT once its peer gave up, or
    /// SYN_RECV), the process holding that listener: whose leak it is, since only its
    /// accept() would ever take it. Matched by namespace, port and address (a listener
    /// on the unspecified address takes connections to any). None for any other socket
    /// (a socket its owner closed is in FIN_WAIT or LAST_ACK, not these states).
    pub fn queued_for(&self, socket: &SnapshotSocket) -> Option<&ProcessInfo> {
        let queued = socket.holders.is_empty()
            && socket.socket.inode == 0
            && matches!(
                socket.socket.state,
                TcpState::Established | TcpState::CloseWait | TcpState::SynRecv
            );
        if !queued {
            return None;
        }
        let s = &socket.socket;
        self.sockets
            .iter()
            .filter(|l| l.socket.state == TcpState::Listen)
            .filter(|l| l.socket.netns == s.netns && l.socket.sport == s.sport)
            .filter(|l| l.socket.saddr == s.saddr || l.socket.saddr.is_unspecified())
            .find_map(|l| l.holders.first())
    }
}

/// Linux keeps a socket in TIME_WAIT for TCP_TIMEWAIT_LEN (include/net/tcp.h), a
/// constant, not a sysctl.
const TIME_WAIT_MS: u64 = 60_000;

/// A lower bound on how long `socket` has been in its state, from what sock_diag reports.
///
/// CLOSE_WAIT: the socket entered CLOSE_WAIT when the peer's FIN arrived, and that FIN
/// carried an ACK (every segment after the handshake does), so the last ACK received is
/// at or after the entry into CLOSE_WAIT: `tcpi_last_ack_recv`, the time since that
/// ACK, is at most the time in CLOSE_WAIT. (Later ACKs, for data the application still
/// sends, only make the bound lower.)
///
/// TIME_WAIT: the kernel arms the time-wait timer for 60 s on entry (and re-arms it for
/// 60 s when a retransmitted FIN arrives), so 60 s minus the time left is at most the
/// time in TIME_WAIT. Both readings are in jiffies, so a bound can be over by one tick.
///
/// Other states: nothing in the dump dates the transition, so None.
pub fn in_state_at_least_ms(socket: &DiagSocket) -> Option<u64> {
    match (socket.state, socket.timer) {
        (TcpState::CloseWait, _) => socket.last_ack_recv_ms.map(u64::from),
        (TcpState::TimeWait, Some((DiagTimer::TimeWait, expires_ms))) => {
            Some(TIME_WAIT_MS.saturating_sub(u64::from(expires_ms)))
        }
        _ => None,
    }
}

/// Sockets of one process, or of no process, counted by state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateGroup<'a> {
    pub states: BTreeMap<TcpState, usize>,
    pub sockets: Vec<&'a SnapshotSocket>,
    /// The largest CLOSE_WAIT lower bound: the oldest leak is at least this old.
    pub oldest_close_wait_ms: Option<u64>,
}

impl<'a> StateGroup<'a> {
    pub fn add(&mut self, socket: &'a SnapshotSocket) {
        let state = socket.socket.state;
        *self.states.entry(state).or_default() += 1;
        if state == TcpState::CloseWait
            && let Some(ms) = socket.in_state_at_least_ms
        {
            self.oldest_close_wait_ms =
                Some(self.oldest_close_wait_ms.map_or(ms, |old| old.max(ms)));
        }
        self.sockets.push(socket);
    }

    pub fn total(&self) -> usize {
        self.sockets.len()
    }

    pub fn count(&self, state: TcpState) -> usize {
        self.states.get(&state).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessGroup<'a> {
    pub process: &'a ProcessInfo,
    pub sockets: StateGroup<'a>,
}

/// Sockets grouped by holder: processes with the most CLOSE_WAIT first, then the most
/// sockets, then by PID; and the sockets no process holds (TIME_WAIT, closed sockets
/// still finishing, connections not yet accepted, and the sockets of processes
/// portwatch could not read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grouping<'a> {
    pub processes: Vec<ProcessGroup<'a>>,
    pub no_process: StateGroup<'a>,
}

/// Groups by holding process. A socket held by several processes counts for each of
/// them: each could close it, and each is keeping it open.
pub fn group_by_process<'a>(sockets: impl IntoIterator<Item = &'a SnapshotSocket>) -> Grouping<'a> {
    let mut by_process: HashMap<Process, ProcessGroup<'a>> = HashMap::new();
    let mut no_process = StateGroup::default();
    for socket in sockets {
        if socket.holders.is_empty() {
            no_process.add(socket);
        }
        for holder in &socket.holders {
            by_process
                .entry(holder.id)
                .or_insert_with(|| ProcessGroup {
                    process: holder,
                    sockets: StateGroup::default(),
                })
                .sockets
                .add(socket);
        }
    }
    let mut processes: Vec<ProcessGroup<'a>> = by_process.into_values().collect();
    processes.sort_by(|a, b| {
        let key = |group: &ProcessGroup<'_>| {
            (
                std::cmp::Reverse(group.sockets.count(TcpState::CloseWait)),
                std::cmp::Reverse(group.sockets.total()),
                group.process.id,
            )
        };
        key(a).cmp(&key(b))
    });
    Grouping {
        processes,
        no_process,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{event::Family, sockets::workload::Workload};

    pub(crate) fn process(pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo {
            id: Process::started_at(pid, u64::from(pid) * 10),
            comm: comm.to_owned(),
            workload: None,
        }
    }

    pub(crate) fn socket(state: TcpState, sport: u16, holders: &[&ProcessInfo]) -> SnapshotSocket {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let socket = DiagSocket {
            netns: 4026531840,
            family: Family::Ipv4,
            state,
            saddr: ip,
            sport,
            daddr: ip,
            dport: 40000,
            inode: if holders.is_empty() {
                0
            } else {
                u64::from(sport)
            },
            cookie: u64::from(sport),
            uid: 0,
            last_ack_recv_ms: None,
            timer: None,
        };
        SnapshotSocket {
            socket,
            holders: holders.iter().map(|p| (*p).clone()).collect(),
            in_state_at_least_ms: None,
        }
    }

    #[test]
    fn a_connection_never_accepted_belongs_to_its_listener() {
        let server = process(10, "server");
        let other = process(11, "other");
        let listener = socket(TcpState::Listen, 8080, &[&server]);
        let mut queued = socket(TcpState::CloseWait, 8080, &[]);
        let accepted = socket(TcpState::CloseWait, 8080, &[&server]);
        let closing = socket(TcpState::LastAck, 8080, &[]);
        let mut elsewhere = socket(TcpState::CloseWait, 8080, &[]);
        elsewhere.socket.netns = 4026532000;
        let mut other_listener = socket(TcpState::Listen, 8080, &[&other]);
        other_listener.socket.netns = 4026532999;
        let snapshot = Snapshot {
            sockets: vec![listener, other_listener, queued.clone(), accepted.clone()],
            ..Snapshot::default()
        };
        assert_eq!(snapshot.queued_for(&queued), Some(&server));
        assert_eq!(snapshot.queued_for(&accepted), None, "has a holder");
        assert_eq!(snapshot.queued_for(&closing), None, "closed by its owner");
        assert_eq!(snapshot.queued_for(&elsewhere), None, "another namespace");
        queued.socket.sport = 9090;
        assert_eq!(snapshot.queued_for(&queued), None, "another port");
    }

    fn aged(mut socket: SnapshotSocket, ms: u64) -> SnapshotSocket {
        socket.in_state_at_least_ms = Some(ms);
        socket
    }

    #[test]
    fn groups_by_process_then_state() {
        let web = process(100, "web");
        let db = process(200, "db");
        let sockets = [
            socket(TcpState::Listen, 80, &[&web]),
            aged(socket(TcpState::CloseWait, 80, &[&web]), 5_000),
            aged(socket(TcpState::CloseWait, 80, &[&web]), 40_000),
            socket(TcpState::Established, 5432, &[&db]),
            socket(TcpState::TimeWait, 80, &[]),
            socket(TcpState::TimeWait, 80, &[]),
        ];
        let grouping = group_by_process(&sockets);
        assert_eq!(grouping.processes.len(), 2);
        let first = &grouping.processes[0];
        assert_eq!(first.process.comm, "web");
        assert_eq!(
            first.sockets.states,
            BTreeMap::from([(TcpState::CloseWait, 2), (TcpState::Listen, 1)])
        );
        assert_eq!(first.sockets.total(), 3);
        assert_eq!(first.sockets.oldest_close_wait_ms, Some(40_000));
        assert_eq!(grouping.processes[1].process.comm, "db");
        assert_eq!(grouping.processes[1].sockets.oldest_close_wait_ms, None);
        assert_eq!(grouping.no_process.count(TcpState::TimeWait), 2);
        assert_eq!(grouping.no_process.total(), 2);
    }

    #[test]
    fn a_socket_with_two_holders_counts_for_both() {
        let parent = process(100, "prefork");
        let child = process(101, "prefork");
        let sockets = [
            socket(TcpState::Listen, 80, &[&parent, &child]),
            socket(TcpState::CloseWait, 80, &[&child]),
        ];
        let grouping = group_by_process(&sockets);
        let pids: Vec<u32> = grouping
            .processes
            .iter()
            .map(|g| g.process.id.pid)
            .collect();
        assert_eq!(pids, [101, 100], "the one with CLOSE_WAIT first");
        assert_eq!(grouping.processes[0].sockets.count(TcpState::Listen), 1);
        assert_eq!(grouping.processes[0].sockets.count(TcpState::CloseWait), 1);
        assert_eq!(grouping.processes[1].sockets.count(TcpState::Listen), 1);
        assert_eq!(grouping.processes[1].sockets.total(), 1);
        assert_eq!(grouping.no_process.total(), 0);
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let old = process(100, "old");
        let mut new = process(100, "new");
        new.id = Process::started_at(100, new.id.start_time().unwrap() + 1);
        let sockets = [
            socket(TcpState::CloseWait, 80, &[&old]),
            socket(TcpState::Established, 81, &[&new]),
        ];
        assert_eq!(group_by_process(&sockets).processes.len(), 2);
    }

    #[test]
    fn sorted_by_close_wait_then_total_then_pid() {
        let a = process(1, "a");
        let b = process(2, "b");
        let c = process(3, "c");
        let d = process(4, "d");
        let sockets = [
            // a: 0 CLOSE_WAIT, 3 sockets
            socket(TcpState::Established, 1, &[&a]),
            socket(TcpState::Established, 2, &[&a]),
            socket(TcpState::Established, 3, &[&a]),
            // b: 1 CLOSE_WAIT, 1 socket
            socket(TcpState::CloseWait, 4, &[&b]),
            // c: 1 CLOSE_WAIT, 2 sockets
            socket(TcpState::CloseWait, 5, &[&c]),
            socket(TcpState::Listen, 6, &[&c]),
            // d: same as b; b's lower PID goes first
            socket(TcpState::CloseWait, 7, &[&d]),
        ];
        let order: Vec<&str> = group_by_process(&sockets)
            .processes
            .iter()
            .map(|g| g.process.comm.as_str())
            .collect();
        assert_eq!(order, ["c", "b", "d", "a"]);
    }

    #[test]
    fn empty_snapshot() {
        let grouping = group_by_process(&[]);
        assert!(grouping.processes.is_empty());
        assert_eq!(grouping.no_process.total(), 0);
    }

    #[test]
    fn workload_travels_with_the_process() {
        let mut web = process(100, "nginx");
        web.workload = Some(Workload::Unit("nginx.service".into()));
        let sockets = [socket(TcpState::Listen, 80, &[&web])];
        let grouping = group_by_process(&sockets);
        assert_eq!(grouping.processes[0].process.workload, web.workload);
    }

    #[test]
    fn lower_bounds() {
        let mut close_wait = socket(TcpState::CloseWait, 80, &[]).socket;
        assert_eq!(in_state_at_least_ms(&close_wait), None);
        close_wait.last_ack_recv_ms = Some(41_000);
        assert_eq!(in_state_at_least_ms(&close_wait), Some(41_000));

        let mut time_wait = socket(TcpState::TimeWait, 80, &[]).socket;
        assert_eq!(in_state_at_least_ms(&time_wait), None);
        time_wait.timer = Some((DiagTimer::TimeWait, 45_000));
        assert_eq!(in_state_at_least_ms(&time_wait), Some(15_000));
        time_wait.timer = Some((DiagTimer::TimeWait, 70_000));
        assert_eq!(in_state_at_least_ms(&time_wait), Some(0));

        let mut established = socket(TcpState::Established, 80, &[]).socket;
        established.last_ack_recv_ms = Some(5);
        established.timer = Some((DiagTimer::KeepAlive, 1_000));
        assert_eq!(in_state_at_least_ms(&established), None);
        // An orphaned FIN_WAIT2 also runs the time-wait timer, but not for 60 s.
        let mut fin_wait2 = socket(TcpState::FinWait2, 80, &[]).socket;
        fin_wait2.timer = Some((DiagTimer::TimeWait, 1_000));
        assert_eq!(in_state_at_least_ms(&fin_wait2), None);
    }
}
