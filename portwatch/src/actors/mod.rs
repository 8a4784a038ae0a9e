//! Workload actors: real processes that leak, churn or behave well, so `portwatch demo`
//! and the tests have exact, known behaviour to find. `portwatch actor <ROLE>` runs one
//! (hidden from --help); [`ActorProcess`] starts one as a child and talks to it.
//!
//! Every role prints `ready <pid> <port>` on stdout once set up (the listening port for
//! servers, the destination port for clients), and the roles that finish print one
//! `done ...` line. They use plain threads and blocking sockets: each does one simple
//! thing, and an async runtime would only hide it. The one exception is `hold-server`,
//! which holds too many connections for a thread each.
mod churn_client;
mod echo_server;
mod hold_client;
mod hold_server;
mod keepalive_client;
mod leak_client;
mod leak_server;
mod pacing;
mod process;
mod shared;

use anyhow::Context as _;

pub use self::process::ActorProcess;
use crate::cli::{ActorArgs, ActorRole};

/// Runs the actor until its work is done, or forever for servers.
pub fn run(args: &ActorArgs) -> anyhow::Result<()> {
    let role = role_name(&args.role);
    name_process(role);
    if args.until_stdin_eof {
        shared::exit_on_stdin_eof().with_context(|| format!("actor {role}"))?;
    }
    match &args.role {
        ActorRole::LeakServer(args) => leak_server::run(args),
        ActorRole::EchoServer(args) => echo_server::run(args),
        ActorRole::ChurnClient(args) => churn_client::run(args),
        ActorRole::KeepaliveClient(args) => keepalive_client::run(args),
        ActorRole::LeakClient(args) => leak_client::run(args),
        ActorRole::HoldServer(args) => hold_server::run(args),
        ActorRole::HoldClient(args) => hold_client::run(args),
    }
    .with_context(|| format!("actor {role}"))
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

fn role_name(role: &ActorRole) -> &'static str {
    match role {
        ActorRole::LeakServer(_) => "leak-server",
        ActorRole::EchoServer(_) => "echo-server",
        ActorRole::ChurnClient(_) => "churn-client",
        ActorRole::KeepaliveClient(_) => "keepalive-client",
        ActorRole::LeakClient(_) => "leak-client",
        ActorRole::HoldServer(_) => "hold-server",
        ActorRole::HoldClient(_) => "hold-client",
    }
}
