//! `portwatch snapshot`: every TCP socket now, grouped by the process holding it. No eBPF:
//! one sock_diag dump joined with one pass over /proc.
use std::io::{self, BufWriter, Write as _};

use anyhow::{Context as _, Result};

use crate::{
    cli::SnapshotArgs,
    commands::startup,
    output,
    sockets::snapshot::{self, group_by_process},
    tcp_state::TcpState,
};

pub fn run(args: SnapshotArgs) -> Result<()> {
    // The kernel filters by state: `--state CLOSE_WAIT` on a host with 200k TIME_WAIT
    // sockets dumps only what it shows.
    let states: &[TcpState] = if args.states.is_empty() {
        &TcpState::ALL
    } else {
        &args.states
    };
    let snapshot = snapshot::take(states)?;
    let sockets = snapshot
        .sockets
        .iter()
        .filter(|entry| args.states.is_empty() || args.states.contains(&entry.socket.state))
        .filter(|entry| args.netns.is_none_or(|netns| netns == entry.socket.netns));
    let grouping = group_by_process(sockets);

    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = output::snapshot::write(
        &mut out,
        args.format,
        &grouping,
        snapshot.unreadable_processes,
    )
    .and_then(|()| out.flush());
    startup::warn_failed_namespaces(&snapshot, "their sockets are not listed");
    startup::warn_unreadable(
        &snapshot,
        "the sockets they hold are listed under \"no process\"",
    );
    match written {
        // The reader went away (`portwatch snapshot | head`): nothing left to do.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(err).context("writing to standard output"),
        Ok(()) => Ok(()),
    }
}
