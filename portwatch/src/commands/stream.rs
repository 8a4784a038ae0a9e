//! `portwatch stream`: every TCP state transition, printed as it happens; with
//! `--connections`, every finished connection.
use std::io::{self, BufWriter, Write};

use anyhow::{Context as _, Result};

use rustc_hash::FxHashMap;

use super::trace;
use crate::{
    cli::StreamArgs,
    clock::WallClock,
    event::{Event, decode},
    filter::Filter,
    output::{json_line::ShownOwner, stream::StreamPrinter},
    sockets::{
        connection::{self, Ending},
        owners::SocketOwner,
        table::{Seed, SocketTable},
    },
};

pub async fn run(args: StreamArgs) -> Result<()> {
    let filter = Filter {
        pids: args.pids,
        ports: args.ports,
        states: args.states,
        netns: args.netns,
    };
    let out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    // A NETNS column only where it tells sockets apart: several namespaces, none chosen.
    let several_namespaces = args.netns.is_none() && crate::sockets::netns::all().len() > 1;
    let mut sink = Sink {
        printer: StreamPrinter::new(out, args.format, WallClock::now())
            .with_netns(several_namespaces),
        workloads: WorkloadNames::default(),
        filter,
        table: SocketTable::with_limit(args.kernel.max_sockets as usize),
        connections: args.connections.then(Connections::default),
        start_ns: 0,
        seen: 0,
        shown: 0,
        undecodable: 0,
        write_error: None,
    };
    let traced = trace::trace(
        &args.kernel,
        args.duration,
        "tracing TCP state changes",
        &mut sink,
    )
    .await?;
    let counters = traced.counters;

    let shown = match &sink.connections {
        None => format!("{} shown", sink.shown),
        Some(connections) => format!(
            "{} connections shown, {} never established",
            sink.shown, connections.never_established
        ),
    };
    let mut summary = format!(
        "portwatch: {} events seen ({shown}), {} dropped (ring buffer full)",
        sink.seen, counters.ring_buffer_full
    );
    if let Some(skipped) = counters.skipped.filter(|&n| n > 0) {
        summary += &format!(
            ", {skipped} skipped by the kernel (another eBPF program was running on that CPU)"
        );
    }
    if counters.owner_table_full > 0 {
        summary += &format!(
            ", {} owner lookups lost (owner tables full)",
            counters.owner_table_full
        );
    }
    if counters.socket_table_full > 0 {
        summary += &format!(
            ", {} sockets untracked (socket table full)",
            counters.socket_table_full
        );
    }
    let evicted = sink.table.evictions();
    if evicted.sockets > 0 {
        summary += &format!(
            ", {} sockets evicted from portwatch's table (--max-sockets)",
            evicted.sockets
        );
    }
    if evicted.time_wait > 0 {
        summary += &format!(
            ", {} TIME_WAIT sockets forgotten early (--max-sockets)",
            evicted.time_wait
        );
    }
    if sink.undecodable > 0 {
        summary += &format!(", {} undecodable records", sink.undecodable);
    }
    eprintln!("{summary}");

    match sink.write_error {
        // The reader went away (`portwatch stream | head`): a normal way to stop.
        Some(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Some(err) => Err(err).context("writing to standard output"),
        None => Ok(()),
    }
}

/// Decodes, filters, prints and counts records; remembers the first write error so the
/// loop can stop without losing the summary.
struct Sink<W: Write> {
    printer: StreamPrinter<W>,
    workloads: WorkloadNames,
    filter: Filter,
    table: SocketTable,
    /// Set with `--connections`: lines are finished connections, not transitions.
    connections: Option<Connections>,
    /// When tracing began (CLOCK_MONOTONIC ns).
    start_ns: u64,
    seen: u64,
    shown: u64,
    undecodable: u64,
    write_error: Option<io::Error>,
}

impl<W: Write> trace::Sink for Sink<W> {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> anyhow::Result<()> {
        self.start_ns = start_ns;
        for seed in &seeds {
            for &(pid, _) in &seed.holders {
                self.workloads.miss(0, pid);
            }
        }
        self.workloads.resolve();
        for seed in seeds {
            self.table.seed(seed);
        }
        if self.connections.is_some() {
            self.write(|printer| printer.connections_header());
        } else {
            self.write(|printer| printer.header());
        }
        self.flush();
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        self.seen += 1;
        let Ok(event) = decode(bytes) else {
            self.undecodable += 1;
            return;
        };
        let Event::Transition(transition) = event else {
            self.table.apply(&event);
            if self.table.wants_exit_pruning() {
                self.table.prune_exits(|_| false);
            }
            return;
        };
        let applied = self.table.apply_transition(&transition);
        let shown = applied.owner.map(|owner| ShownOwner {
            owner,
            alive: self.table.is_alive(&owner.process),
        });
        let owner = applied.owner;
        let pid = shown.map(|shown| shown.owner.process.pid);
        let Some(connections) = &mut self.connections else {
            if self.filter.matches(&transition, pid) {
                self.shown += 1;
                let workload = owner.and_then(|owner| self.workloads.get(&owner));
                if self.write_error.is_none()
                    && let Err(err) = self.printer.print(&transition, shown.as_ref(), workload)
                {
                    self.write_error = Some(err);
                }
            }
            return;
        };
        // A connection is shown once, when its socket closes.
        let Some(closed) = applied.closed else {
            return;
        };
        if !self.filter.matches(&transition, pid) {
            return;
        }
        match connection::ended(&transition, &closed, applied.owner, self.start_ns) {
            Ending::Connection(connection) => {
                let workload = owner.and_then(|owner| self.workloads.get(&owner));
                self.shown += 1;
                if self.write_error.is_none()
                    && let Err(err) =
                        self.printer
                            .print_connection(&connection, shown.as_ref(), workload)
                {
                    self.write_error = Some(err);
                }
            }
            Ending::NeverEstablished => connections.never_established += 1,
            Ending::Other => {}
        }
    }

    /// One flush per batch: live when traffic is light, few syscalls when heavy. The
    /// workloads of owners first seen in the batch are looked up here, off the per-event
    /// path.
    fn batch_done(&mut self) -> bool {
        self.workloads.resolve();
        self.flush();
        self.write_error.is_none()
    }
}

/// `--connections`' own state.
#[derive(Default)]
struct Connections {
    /// Connection attempts that closed without getting past the handshake (shown by
    /// the filter, but not connections).
    never_established: u64,
}

impl<W: Write> Sink<W> {
    fn flush(&mut self) {
        self.write(StreamPrinter::flush);
    }

    fn write(&mut self, op: impl FnOnce(&mut StreamPrinter<W>) -> io::Result<()>) {
        if self.write_error.is_none()
            && let Err(err) = op(&mut self.printer)
        {
            self.write_error = Some(err);
        }
    }
}

/// Owners' workloads (container, pod, unit), as the report names them, looked up in
/// /proc between batches: the per-event path reads this cache and notes what it lacks,
/// without a system call or an allocation. An owner the kernel learned carries its
/// cgroup id, which names its workload for every process in that cgroup; one learned
/// from /proc (id 0) is looked up by PID.
#[derive(Default)]
struct WorkloadNames {
    by_cgroup: FxHashMap<u64, Option<Box<str>>>,
    by_pid: FxHashMap<u32, Option<Box<str>>>,
    /// (cgroup id, PID) of owners not in the cache yet, at most [`MISSES`].
    missed: Vec<(u64, u32)>,
}

/// Owners looked up per batch; more wait for a later one.
const MISSES: usize = 64;
/// Entries kept before the cache starts again (cgroups and PIDs are reused).
const CACHED: usize = 16384;

impl WorkloadNames {
    fn get(&mut self, owner: &SocketOwner) -> Option<&str> {
        let (cgroup, pid) = (owner.cgroup_id, owner.process.pid);
        let known = if cgroup != 0 {
            self.by_cgroup.contains_key(&cgroup)
        } else {
            self.by_pid.contains_key(&pid)
        };
        if !known {
            self.miss(cgroup, pid);
            return None;
        }
        let cached = if cgroup != 0 {
            self.by_cgroup.get(&cgroup)
        } else {
            self.by_pid.get(&pid)
        };
        cached.and_then(|name| name.as_deref())
    }

    /// Notes an owner to look up; allocates only the first time (the buffer's capacity
    /// is kept across batches).
    fn miss(&mut self, cgroup: u64, pid: u32) {
        if self.missed.len() < MISSES && !self.missed.contains(&(cgroup, pid)) {
            if self.missed.capacity() == 0 {
                self.missed.reserve_exact(MISSES);
            }
            self.missed.push((cgroup, pid));
        }
    }

    fn resolve(&mut self) {
        if self.missed.is_empty() {
            return;
        }
        if self.by_cgroup.len() + self.by_pid.len() > CACHED {
            self.by_cgroup.clear();
            self.by_pid.clear();
        }
        for (cgroup, pid) in self.missed.drain(..) {
            // A process already gone names nothing: another of its cgroup may, later.
            let Some(info) = crate::sockets::holders::process_info(pid) else {
                if cgroup == 0 {
                    self.by_pid.insert(pid, None);
                }
                continue;
            };
            let name = info.workload.map(|w| w.to_string().into_boxed_str());
            if cgroup != 0 {
                self.by_cgroup.insert(cgroup, name);
            } else {
                self.by_pid.insert(pid, name);
            }
        }
    }
}
