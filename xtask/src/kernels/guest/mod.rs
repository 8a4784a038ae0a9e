//! What runs inside a kernel-matrix guest, never on the host: `xtask guest test`, which
//! /init runs, and the processes it starts to make real TCP traffic
//! (`xtask guest workload leak-server`, ... from the workload library). One binary, so
//! the initramfs needs nothing else.
mod checks;
mod netns_checks;
mod portwatch;
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
    /// A traffic process: one role of the workload library, re-executing this binary.
    Workload(portwatch_workload::WorkloadArgs),
}

pub fn run(role: Role) -> Result<()> {
    match role {
        Role::Test { portwatch } => scenario::run(&portwatch),
        Role::Workload(args) => portwatch_workload::run(&args.role, args.options()),
    }
}
