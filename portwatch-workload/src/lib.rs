//! Workloads: real processes that leak, churn, hold or behave well on TCP, so that
//! `portwatch demo`, portwatch's tests, the kernel-matrix guest and the benchmark have
//! exact, known behaviour to find. Every role is written once, here.
//!
//! A role runs as a process of its own: `portwatch-workload <ROLE>` (this crate's
//! binary), or any binary that hands its arguments to [`run`] (`portwatch actor`, the
//! guest's `xtask guest workload`). [`WorkloadProcess`] starts one as a child and talks
//! to it; [`Launcher`] says how.
//!
//! Every role prints `ready <pid> <port>` on stdout once set up (the listening port for
//! servers, the destination port for clients), and the roles that finish print one
//! `done ...` line. They use plain threads and blocking sockets: each does one simple
//! thing, and an async runtime would only hide it. The one exception is `hold-server`,
//! which holds too many connections for a thread each.
mod args;
mod pacing;
mod process;
mod roles;
mod shared;

use anyhow::Context as _;

pub use self::{
    args::{
        ChurnClientArgs, CloseFirst, ConnectAndExitArgs, EchoServerArgs, HoldClientArgs,
        HoldServerArgs, KeepaliveClientArgs, LeakClientArgs, LeakServerArgs, PreforkServerArgs,
        Role, WorkloadArgs, parse_duration,
    },
    process::{Launcher, WorkloadProcess},
};

/// How a role runs besides its own options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Exit when stdin closes, and hear `go` lines there.
    pub until_stdin_eof: bool,
    /// Wait for `go` once `ready` is said, before the role's work.
    pub start_on_go: bool,
}

/// Runs `role` until its work is done, or forever for servers.
pub fn run(role: &Role, options: Options) -> anyhow::Result<()> {
    let name = role.name();
    name_process(name);
    if options.until_stdin_eof {
        shared::exit_on_stdin_eof().with_context(|| name.to_owned())?;
    }
    if options.start_on_go {
        shared::start_on_go().with_context(|| name.to_owned())?;
    }
    match role {
        Role::LeakServer(args) => roles::leak_server::run(args),
        Role::PreforkServer(args) => roles::prefork_server::run(args),
        Role::EchoServer(args) => roles::echo_server::run(args),
        Role::ChurnClient(args) => roles::churn_client::run(args),
        Role::KeepaliveClient(args) => roles::keepalive_client::run(args),
        Role::LeakClient(args) => roles::leak_client::run(args),
        Role::ConnectAndExit(args) => roles::connect_and_exit::run(args),
        Role::HoldServer(args) => roles::hold_server::run(args),
        Role::HoldClient(args) => roles::hold_client::run(args),
    }
    .with_context(|| name.to_owned())
}

/// Names the process after its role (its comm, which portwatch reports), so a demo's
/// report says "leak-server", not "portwatch". Threads started later inherit it.
fn name_process(role: &str) {
    let mut name = [0u8; 16];
    let len = role.len().min(15);
    name[..len].copy_from_slice(&role.as_bytes()[..len]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a
    // valid pointer; `name` is 16 bytes with at least one trailing NUL. Failure only
    // leaves the old name.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}
