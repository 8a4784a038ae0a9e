//! What portwatch learns about sockets that existed before it attached.
use portwatch_common::{Origin, Owner, OwnerSource};

use crate::{
    bpf::Tracer,
    clock::monotonic_ns,
    sockets::{
        holders,
        snapshot::{self, Snapshot},
        table::Seed,
        tuple::Tuple,
    },
    tcp_state::TcpState,
};

/// The states whose sockets tracing learns from the host at start and at the end:
/// every one but TIME_WAIT. A TIME_WAIT socket is the kernel's mini-socket: no process
/// holds it and no state change follows it, so it could never be matched to an event
/// or charged to anyone, and a churning host (or a container beside portwatch) holds
/// hundreds of thousands of them: seeding them took 115 MiB in the benchmark.
const TRACKED_STATES: &[TcpState] = &[
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::Close,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
    TcpState::NewSynRecv,
];

/// The sockets open now, with the processes holding them, for the socket table. The
/// kernel is told the owners of listeners, so connections they accept from now on
/// start with their owner. A failed snapshot costs only the pre-existing sockets'
/// owners: portwatch says so and goes on.
pub fn seeds(tracer: &mut Tracer) -> Vec<Seed> {
    let taken_ns = monotonic_ns();
    let snapshot = match snapshot::take(TRACKED_STATES) {
        Ok(snapshot) => snapshot,
        Err(err) => {
            eprintln!(
                "portwatch: warning: no snapshot of the sockets already open ({err:#}); their \
                 owners stay unknown until they act on them"
            );
            return Vec::new();
        }
    };
    warn_unreadable(
        &snapshot,
        "sockets they held before portwatch started have unknown owners",
    );
    warn_failed_namespaces(&snapshot, "their sockets already open have unknown owners");
    seed_listeners(tracer, &snapshot);
    to_seeds(&snapshot, taken_ns, tracer.netns_known())
}

/// The namespace a snapshot socket is matched to events in: its own, or 0 when the
/// kernel's events carry none (then 4-tuples of different namespaces can collide, the
/// documented degraded mode).
fn netns_for_events(netns: u32, netns_known: bool) -> u32 {
    if netns_known { netns } else { 0 }
}

fn to_seeds(snapshot: &Snapshot, taken_ns: u64, netns_known: bool) -> Vec<Seed> {
    snapshot
        .sockets
        .iter()
        .filter(|s| s.socket.state != TcpState::Listen)
        .map(|s| Seed {
            tuple: Tuple {
                netns: netns_for_events(s.socket.netns, netns_known),
                saddr: s.socket.saddr,
                sport: s.socket.sport,
                daddr: s.socket.daddr,
                dport: s.socket.dport,
            },
            state: s.socket.state,
            // A connection never accepted (still in the accept queue, often in
            // CLOSE_WAIT) is its listener's process's.
            holders: match snapshot.queued_for(s) {
                Some(listener) => vec![(listener.id.pid, crate::event::Comm::new(&listener.comm))],
                None => s
                    .holders
                    .iter()
                    .map(|h| (h.id.pid, crate::event::Comm::new(&h.comm)))
                    .collect(),
            },
            in_state_at_least_ns: s.in_state_at_least_ms.map(|ms| ms * 1_000_000),
            taken_ns,
        })
        .collect()
}

fn seed_listeners(tracer: &mut Tracer, snapshot: &Snapshot) {
    for listener in snapshot
        .sockets
        .iter()
        .filter(|s| s.socket.state == TcpState::Listen)
    {
        let Some(holder) = listener.holders.first() else {
            continue;
        };
        let mut comm = [0u8; portwatch_common::COMM_LEN];
        let name = holder.comm.as_bytes();
        let len = name.len().min(comm.len());
        comm[..len].copy_from_slice(&name[..len]);
        let owner = Owner {
            cgroup_id: 0,
            tgid: holder.id.pid,
            source: OwnerSource::Procfs as u8,
            origin: Origin::Listener as u8,
            _pad: 0,
            comm,
        };
        let (netns, port) = (listener.socket.netns, listener.socket.sport);
        if let Err(err) = tracer.seed_listener(netns, port, &owner) {
            eprintln!(
                "portwatch: warning: could not seed listener {}: {err:#}",
                listener.socket.sport
            );
            return;
        }
    }
}

/// Who holds each connected socket now, by 4-tuple: one snapshot, for the sockets whose
/// owner the kernel could not learn for certain. Empty (with a warning) if the
/// snapshot fails.
pub fn holders_now(
    netns_known: bool,
) -> std::collections::HashMap<Tuple, (u32, crate::event::Comm)> {
    let snapshot = match snapshot::take(TRACKED_STATES) {
        Ok(snapshot) => snapshot,
        Err(err) => {
            eprintln!("portwatch: warning: could not resolve owners from /proc: {err:#}");
            return Default::default();
        }
    };
    warn_unreadable(
        &snapshot,
        "where they hold sockets, owners the kernel could not learn stay unknown",
    );
    snapshot
        .sockets
        .iter()
        .filter(|s| s.socket.state != TcpState::Listen)
        .filter_map(|s| {
            let holder = s.holders.first()?;
            let tuple = Tuple {
                netns: netns_for_events(s.socket.netns, netns_known),
                saddr: s.socket.saddr,
                sport: s.socket.sport,
                daddr: s.socket.daddr,
                dport: s.socket.dport,
            };
            Some((
                tuple,
                (holder.id.pid, crate::event::Comm::new(&holder.comm)),
            ))
        })
        .collect()
}

/// Names the network namespaces the snapshot could not enter, and what that costs.
pub fn warn_failed_namespaces(snapshot: &Snapshot, cost: &str) {
    for (ns, err) in &snapshot.failed_namespaces {
        eprintln!(
            "portwatch: warning: could not list the sockets of network namespace {} ({}): \
             {err}; {cost}. Entering a namespace needs CAP_SYS_ADMIN.",
            ns.inode,
            ns.path.display(),
        );
    }
}

/// Says how many processes' descriptors could not be read, and what that costs: their
/// sockets are in the snapshot without a holder. Shared by tracing and `snapshot`.
pub fn warn_unreadable(snapshot: &Snapshot, cost: &str) {
    match snapshot.unreadable_processes {
        0 => {}
        count => eprintln!(
            "portwatch: warning: could not read the file descriptors of {count} {} in /proc; \
             {cost}. Run as root with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to read every \
             process.",
            if count == 1 { "process" } else { "processes" },
        ),
    }
}

/// The container or systemd unit a live process runs in, for the report.
pub fn workload(pid: u32) -> Option<String> {
    holders::process_info(pid)?.workload.map(|w| w.to_string())
}
