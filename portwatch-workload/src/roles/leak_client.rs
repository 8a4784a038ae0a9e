//! `leak-client`: the peer of `leak-server`. It connects and closes at once, N times; each
//! close sends the FIN that leaves the server's socket in CLOSE_WAIT.
use crate::{
    args::LeakClientArgs,
    shared::{self, RoleError},
};

pub fn run(args: &LeakClientArgs) -> Result<(), RoleError> {
    shared::say_ready(args.connect.port())?;
    for _ in 0..args.count {
        let stream = shared::connect(args.connect)?;
        if args.await_greeting {
            shared::await_greeting(&stream)?;
        }
    }
    shared::say(&format!("done {}", args.count))?;
    if args.stay {
        shared::hold_forever()
    }
    Ok(())
}
