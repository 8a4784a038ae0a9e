//! Workload actors: real processes that leak, churn or behave well, so `portwatch demo`
//! and the tests have exact, known behaviour to find. `portwatch actor <ROLE>` runs one
//! (hidden from --help); [`ActorProcess`] starts one as a child and talks to it.
//!
//! Every role prints `ready <pid> <port>` on stdout once set up (the listening port for
//! servers, the destination port for clients), and the roles that finish print one
//! `done ...` line. They use plain threads and blocking sockets: each does one simple
//! thing, and an async runtime would only hide it.
mod churn_client;
mod echo_server;
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
    if args.until_stdin_eof {
        shared::exit_on_stdin_eof().with_context(|| format!("actor {role}"))?;
    }
    match &args.role {
        ActorRole::LeakServer(args) => leak_server::run(args),
        ActorRole::EchoServer(args) => echo_server::run(args),
        ActorRole::ChurnClient(args) => churn_client::run(args),
        ActorRole::KeepaliveClient(args) => keepalive_client::run(args),
        ActorRole::LeakClient(args) => leak_client::run(args),
    }
    .with_context(|| format!("actor {role}"))
}

fn role_name(role: &ActorRole) -> &'static str {
    match role {
        ActorRole::LeakServer(_) => "leak-server",
        ActorRole::EchoServer(_) => "echo-server",
        ActorRole::ChurnClient(_) => "churn-client",
        ActorRole::KeepaliveClient(_) => "keepalive-client",
        ActorRole::LeakClient(_) => "leak-client",
    }
}
