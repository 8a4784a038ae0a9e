//! What runs inside a kernel-matrix guest, never on the host: `xtask guest test`, which
//! /init runs, and the processes it starts to make real TCP traffic
//! (`xtask guest leak-server`, ...). One binary, so the initramfs needs nothing else.
mod actors;
mod checks;
mod portwatch;
mod process;
mod scenario;

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Role {
    /// The in-guest test: runs portwatch against real traffic, checks its output, and
    /// exits non-zero when a check fails.
    Test {
        /// The portwatch binary to test.
        #[arg(long)]
        portwatch: PathBuf,
    },
    /// Listens on 127.0.0.1, accepts every connection (alternating accept4() and
    /// accept()), writes one byte to say so, and never closes any.
    LeakServer,
    /// Connects COUNT times; waits for the server's byte, then closes.
    LeakClient { port: u16, count: usize },
    /// Listens; for each connection, reads to end of file, then closes.
    ChurnServer,
    /// COUNT connections, each closed first by this side (so TIME_WAIT is ours).
    ChurnClient { port: u16, count: usize },
    /// Connects, waits for the server's byte, and exits without closing: the kernel
    /// closes the socket after the process is gone.
    ConnectAndExit { port: u16 },
    /// Opens COUNT connections and keeps them, counting connect() failing with
    /// EADDRNOTAVAIL; prints `done <opened> <failed>` and exits.
    HoldClient { port: u16, count: usize },
}

pub fn run(role: Role) -> Result<()> {
    match role {
        Role::Test { portwatch } => scenario::run(&portwatch),
        Role::LeakServer => actors::leak_server(),
        Role::LeakClient { port, count } => actors::leak_client(port, count),
        Role::ChurnServer => actors::churn_server(),
        Role::ChurnClient { port, count } => actors::churn_client(port, count),
        Role::ConnectAndExit { port } => actors::connect_and_exit(port),
        Role::HoldClient { port, count } => actors::hold_client(port, count),
    }
}
