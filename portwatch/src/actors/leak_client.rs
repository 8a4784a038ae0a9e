//! `leak-client`: the peer of `leak-server`. It connects and closes at once, N times; each
//! close sends the FIN that leaves the server's socket in CLOSE_WAIT.
use super::shared::{self, ActorError};
use crate::cli::LeakClientArgs;

pub fn run(args: &LeakClientArgs) -> Result<(), ActorError> {
    shared::say_ready(args.connect.port())?;
    for _ in 0..args.count {
        drop(shared::connect(args.connect)?);
    }
    shared::say(&format!("done {}", args.count))
}
