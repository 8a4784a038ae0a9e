use super::*;
use crate::event::{Family, Owner, OwnerSource, Task};

pub(crate) struct Script {
    pub events: Vec<Event>,
    next_sock: u64,
}

pub(crate) fn owner(pid: u32, name: &str, source: OwnerSource) -> Option<Owner> {
    Some(Owner {
        pid,
        comm: Comm::new(name),
        cgroup_id: 0,
        source,
    })
}

impl Script {
    pub(crate) fn new() -> Self {
        Script {
            events: Vec::new(),
            next_sock: 1,
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "a test builder, every field named"
    )]
    pub(crate) fn transition(
        &mut self,
        sock: u64,
        ts_ns: u64,
        old: TcpState,
        new: TcpState,
        owner: Option<Owner>,
        origin: Origin,
        ports: (u16, u16),
        opened_ns: Option<u64>,
    ) {
        self.events.push(Event::Transition(Transition {
            ts_ns,
            sock,
            netns: 0,
            task: Task {
                pid: 0,
                tid: owner.map_or(0, |o| o.pid),
                comm: Comm::new("swapper/1"),
            },
            by_syscall: false,
            owner,
            origin: Some(origin),
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: ports.0,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: ports.1,
            old_state: old,
            new_state: new,
            in_state_ns: None,
            opened_ns,
        }));
    }

    /// A client connection that opens at `at`, lives `life` ns and is closed first
    /// by the client (which ends up in TIME_WAIT).
    pub(crate) fn short_client_connection(&mut self, client: Option<Owner>, at: u64, life: u64) {
        self.short_client_connection_to(client, at, life, 80);
    }

    /// The same, toward port `dport`.
    pub(crate) fn short_client_connection_to(
        &mut self,
        client: Option<Owner>,
        at: u64,
        life: u64,
        dport: u16,
    ) {
        use TcpState::*;
        let sock = self.next_sock;
        self.next_sock += 1;
        let port = 40000 + (sock % 20000) as u16;
        let o = Origin::Active;
        self.transition(sock, at, Close, SynSent, client, o, (0, dport), Some(at));
        self.transition(
            sock,
            at + 10,
            SynSent,
            Established,
            client,
            o,
            (port, dport),
            Some(at),
        );
        self.transition(
            sock,
            at + life,
            Established,
            FinWait1,
            client,
            o,
            (port, dport),
            Some(at),
        );
        self.transition(
            sock,
            at + life + 5,
            FinWait1,
            FinWait2,
            client,
            o,
            (port, dport),
            Some(at),
        );
        self.transition(
            sock,
            at + life + 10,
            FinWait2,
            Close,
            client,
            o,
            (port, dport),
            Some(at),
        );
    }

    /// A server-side connection accepted at `at` whose peer closes at `closed_at`,
    /// and which the server never closes.
    pub(crate) fn leaked_server_connection(
        &mut self,
        server: Option<Owner>,
        at: u64,
        closed_at: u64,
    ) {
        use TcpState::*;
        let sock = self.next_sock;
        self.next_sock += 1;
        let port = 30000 + (sock % 20000) as u16;
        let o = Origin::Passive;
        self.transition(sock, at, Listen, SynRecv, server, o, (8080, port), Some(at));
        self.transition(
            sock,
            at + 10,
            SynRecv,
            Established,
            server,
            o,
            (8080, port),
            Some(at),
        );
        self.transition(
            sock,
            closed_at,
            Established,
            CloseWait,
            server,
            o,
            (8080, port),
            Some(at),
        );
    }

    pub(crate) fn model(&self, start_ns: u64) -> Model {
        self.model_with(start_ns, Limits::default())
    }

    pub(crate) fn model_with(&self, start_ns: u64, limits: Limits) -> Model {
        let mut model = Model::with_limits(start_ns, limits);
        for event in &self.events {
            model.apply(event);
        }
        model
    }
}

#[test]
fn counts_opens_closes_lifetimes_and_time_wait() {
    let client = owner(7, "churner", OwnerSource::Connect);
    let mut script = Script::new();
    for i in 0..100 {
        script.short_client_connection(client, i * 10_000_000, 2_000_000);
    }
    let model = script.model(0);
    let activity = &model.processes[&Process::after_exits(7, 0)];
    assert_eq!(activity.opened_active.count(), 100);
    assert_eq!(activity.closed_active, 100);
    assert_eq!(activity.closed_first, 100);
    assert_eq!(activity.time_wait_created.count(), 100);
    let median = activity.lifetimes.quantile(0.5).unwrap() as f64;
    assert!((median - 2_000_010.0).abs() / 2e6 < 0.07, "{median}");
    assert_eq!(model.destinations.len(), 1);
    assert_eq!(model.table.time_wait().map(|g| g.count).sum::<u32>(), 100);
}

#[test]
fn a_reported_process_stays_exited_however_many_exits_follow() {
    let churner = owner(7, "churner", OwnerSource::Connect);
    let mut script = Script::new();
    script.short_client_connection(churner, 0, 1_000);
    // A minute later its TIME_WAIT is gone: only the model still refers to it.
    script.short_client_connection(owner(8, "other", OwnerSource::Connect), 61e9 as u64, 1);
    let exit = |pid| {
        Event::Exited(crate::event::Exited {
            ts_ns: 62e9 as u64,
            pid,
            comm: Comm::new("x"),
        })
    };
    script.events.push(exit(7));
    script.events.extend((1_000..101_000).map(exit));
    let model = script.model(0);
    let churner = Process::after_exits(7, 0);
    assert!(model.processes.contains_key(&churner));
    assert!(!model.table.is_alive(&churner));
}

#[test]
fn connect_failures_get_the_destination_of_the_portless_close() {
    use TcpState::*;
    let client = owner(9, "client", OwnerSource::Connect);
    let mut script = Script::new();
    let o = Origin::Active;
    script.transition(50, 100, Close, SynSent, client, o, (0, 5432), Some(100));
    script.transition(50, 110, SynSent, Close, client, o, (0, 5432), Some(100));
    script.events.push(Event::ConnectFailed(ConnectFailed {
        ts_ns: 111,
        task: Task {
            pid: 9,
            tid: 9,
            comm: Comm::new("client"),
        },
        errno: 99,
    }));
    let model = script.model(0);
    let (destination, toward) = model.destinations.iter().next().unwrap();
    assert_eq!(destination.dport, 5432);
    assert_eq!(toward.failed_connects, 1);
    assert_eq!(
        model.processes[&Process::after_exits(9, 0)].failed_connects,
        1
    );
}

const S: u64 = 1_000_000_000;

fn exit(pid: u32, ts_ns: u64) -> Event {
    Event::Exited(crate::event::Exited {
        ts_ns,
        pid,
        comm: Comm::new("x"),
    })
}

#[test]
fn past_its_limits_the_model_forgets_exited_idle_processes_and_keeps_the_leaker() {
    let leaker = owner(1, "leaker", OwnerSource::Accept);
    let holder = owner(2, "holder", OwnerSource::Connect);
    let mut script = Script::new();
    for i in 0..3 {
        script.leaked_server_connection(leaker, i * S, 2 * S);
    }
    let o = Origin::Active;
    script.transition(
        900,
        3 * S,
        TcpState::Close,
        TcpState::SynSent,
        holder,
        o,
        (0, 443),
        Some(3 * S),
    );
    script.transition(
        900,
        3 * S + 1,
        TcpState::SynSent,
        TcpState::Established,
        holder,
        o,
        (50000, 443),
        Some(3 * S),
    );
    // 40 short-lived processes over 20 minutes, each one connection to its own port,
    // then exit: far more processes and destinations than the limits.
    for i in 0..40u32 {
        let at = 10 * S + u64::from(i) * 30 * S;
        script.short_client_connection_to(
            owner(100 + i, "curl", OwnerSource::Connect),
            at,
            1_000,
            1000 + i as u16,
        );
        script.events.push(exit(100 + i, at + S));
    }
    let limits = Limits {
        max_sockets: 64,
        max_processes: 8,
        max_destinations: 4,
    };
    let model = script.model_with(0, limits);
    assert!(model.processes.len() <= 8, "{}", model.processes.len());
    assert!(
        model.destinations.len() <= 4,
        "{}",
        model.destinations.len()
    );
    // Every process and destination ever seen is either kept or counted.
    let evicted = model.evictions();
    assert_eq!(model.processes.len() as u64 + evicted.processes, 42);
    assert_eq!(model.destinations.len() as u64 + evicted.destinations, 41);
    assert!(evicted.mattered());
    // The leaker (CLOSE_WAIT) and the live connection's holder stay; only exited
    // processes holding nothing went.
    assert_eq!(
        model.processes[&Process::after_exits(1, 0)].close_wait_entered,
        3
    );
    assert!(model.processes.contains_key(&Process::after_exits(2, 0)));
    let last = Process::after_exits(139, 0);
    assert!(model.processes.contains_key(&last), "the newest stays");
    // Destinations toward which a port is taken stay: the holder's live one.
    assert!(model.destinations.keys().any(|d| d.dport == 443));
    // A process's destinations stay a subset of the model's.
    for activity in model.processes.values() {
        assert!(
            activity
                .destinations
                .keys()
                .all(|d| model.destinations.contains_key(d))
        );
    }
    assert_eq!(evicted.table, TableEvictions::default());
}

#[test]
fn within_its_limits_nothing_is_evicted() {
    let mut script = Script::new();
    for i in 0..20u32 {
        script.short_client_connection_to(
            owner(100 + i, "curl", OwnerSource::Connect),
            u64::from(i) * S,
            1_000,
            80,
        );
    }
    let model = script.model(0);
    assert_eq!(model.evictions(), Evictions::default());
    assert!(!model.evictions().mattered());
}
