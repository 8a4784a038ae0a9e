//! `portwatch stream`: every TCP state transition, printed as it happens.
use std::io::{self, BufWriter, Write};

use anyhow::{Context as _, Result};

use super::trace;
use crate::{
    cli::StreamArgs,
    clock::WallClock,
    event::{Event, decode},
    filter::Filter,
    output::{json_line::ShownOwner, stream::StreamPrinter},
    sockets::table::{Seed, SocketTable},
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

    let mut summary = format!(
        "portwatch: {} events seen ({} shown), {} dropped (ring buffer full)",
        sink.seen, sink.shown, counters.ring_buffer_full
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
    seen: u64,
    shown: u64,
    undecodable: u64,
    write_error: Option<io::Error>,
}

impl<W: Write> trace::Sink for Sink<W> {
    fn start(&mut self, _start_ns: u64, seeds: Vec<Seed>) -> anyhow::Result<()> {
        for seed in seeds {
            self.table.seed(seed);
        }
        self.write(|printer| printer.header());
        self.flush();
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        self.seen += 1;
        let Ok(event) = decode(bytes) else {
            self.undecodable += 1;
            return;
        };
        let owner = self.table.apply(&event);
        let Event::Transition(transition) = event else {
            if self.table.wants_exit_pruning() {
                self.table.prune_exits(|_| false);
            }
            return;
        };
        let shown = owner.map(|owner| ShownOwner {
            owner,
            alive: self.table.is_alive(&owner.process),
        });
        if self
            .filter
            .matches(&transition, shown.map(|shown| shown.owner.process.pid))
        {
            self.shown += 1;
            self.write(|printer| printer.print(&transition, shown.as_ref()));
        }
    }

    /// One flush per batch: live when traffic is light, few syscalls when heavy.
    fn batch_done(&mut self) -> bool {
        self.flush();
        self.write_error.is_none()
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
