//! `portwatch stream`: every TCP state transition, printed as it happens; with
//! `--connections`, every finished connection.
use std::io::{self, BufWriter, Write};

use anyhow::{Context as _, Result};

use super::trace;
use crate::{
    cli::StreamArgs,
    clock::WallClock,
    event::{Event, decode},
    filter::Filter,
    output::{json_line::ShownOwner, stream::StreamPrinter},
    process::Process,
    sockets::{
        connection::{self, Ending},
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
    let mut sink = Sink {
        printer: StreamPrinter::new(out, args.format, WallClock::now()),
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
            if let (Event::Exited(exited), Some(connections)) = (&event, &mut self.connections) {
                connections.workloads.forget(exited.pid);
            }
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
        let pid = shown.map(|shown| shown.owner.process.pid);
        let Some(connections) = &mut self.connections else {
            if self.filter.matches(&transition, pid) {
                self.shown += 1;
                self.write(|printer| printer.print(&transition, shown.as_ref()));
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
                let workload = match shown {
                    Some(shown) if shown.alive => connections.workloads.of(shown.owner.process),
                    _ => None,
                };
                self.shown += 1;
                let printer = &mut self.printer;
                if self.write_error.is_none()
                    && let Err(err) =
                        printer.print_connection(&connection, shown.as_ref(), workload)
                {
                    self.write_error = Some(err);
                }
            }
            Ending::NeverEstablished => connections.never_established += 1,
            Ending::Other => {}
        }
    }

    /// One flush per batch: live when traffic is light, few syscalls when heavy.
    fn batch_done(&mut self) -> bool {
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
    workloads: Workloads,
}

/// Each owner's workload (container, systemd unit), read from /proc once per process
/// rather than once per connection: a churning process would otherwise cost two reads
/// of /proc per connection. Forgotten when the process exits, so it holds only live
/// processes.
#[derive(Default)]
struct Workloads {
    by_pid: rustc_hash::FxHashMap<u32, (Process, Option<String>)>,
}

impl Workloads {
    /// `process`'s workload; it must be alive (else its PID may name another process).
    fn of(&mut self, process: Process) -> Option<&str> {
        let lookup = || (process, super::startup::workload(process.pid));
        let entry = self.by_pid.entry(process.pid).or_insert_with(lookup);
        if entry.0 != process {
            *entry = lookup();
        }
        entry.1.as_deref()
    }

    fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
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
