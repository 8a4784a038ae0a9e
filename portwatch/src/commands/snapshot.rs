//! `portwatch snapshot`: every TCP socket now, grouped by the process holding it. No eBPF:
//! one sock_diag dump joined with one pass over /proc.
use std::io::{self, BufWriter, Write as _};

use anyhow::{Context as _, Result};

use crate::{
    cli::SnapshotArgs,
    commands::startup,
    output,
    sockets::snapshot::{self, group_by_process},
};

pub fn run(args: SnapshotArgs) -> Result<()> {
    let snapshot = snapshot::take()?;
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
