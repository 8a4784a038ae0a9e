//! `connect-and-exit`: a client that leaves without closing. Its process exits with the
//! connection open, and the kernel closes the socket after the owner is gone: a tracer
//! must not charge what follows to a live process that reuses the PID.
use crate::{
    args::ConnectAndExitArgs,
    shared::{self, RoleError},
};

pub fn run(args: &ConnectAndExitArgs) -> Result<(), RoleError> {
    let stream = shared::connect(args.connect)?;
    if args.await_greeting {
        shared::await_greeting(&stream)?;
    }
    let local = stream.local_addr().map_err(|source| RoleError::Connect {
        addr: args.connect,
        source,
    })?;
    shared::say_ready(args.connect.port())?;
    shared::say(&format!("connected {}", local.port()))?;
    if args.exit_on_go {
        shared::wait_for_go()?;
    }
    // exit() runs no destructors: the socket is still open when the process is gone,
    // and the kernel closes it during the exit.
    std::process::exit(0)
}
