//! `prefork-server`: the shape of pre-fork servers (Apache, gunicorn): this process
//! listens, a forked child accepts and owns the connections. The child leaks them as a
//! leak-server does; the parent holds only the listening socket. A tracer must charge
//! the leak to the child, which holds the descriptors, not to the listener's owner.
use crate::{
    args::PreforkServerArgs,
    roles::leak_server,
    shared::{self, Acceptor, RoleError},
};

pub fn run(args: &PreforkServerArgs) -> Result<(), RoleError> {
    let acceptor = Acceptor::listen(args.listen)?;
    shared::say_ready(acceptor.local_addr().port())?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork has no memory preconditions. The child goes on with this thread only;
    // the one other thread there may be (the stdin watcher) holds no lock the child
    // takes: it only reads stdin, which the child never touches, and glibc's fork keeps
    // malloc usable in the child.
    match unsafe { libc::fork() } {
        -1 => Err(RoleError::Fork(std::io::Error::last_os_error())),
        0 => {
            // The child dies with the parent, which its own parent kills or whose stdin
            // closes: it has no stdin watcher of its own.
            // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is involved.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                // The parent died before the line above: nobody would kill this child.
                std::process::exit(0);
            }
            // Like a pre-fork worker, it keeps the listener it inherited.
            let limit = leak_server::Limit {
                leak: Some(args.leak),
                keep_listening: true,
                hand_over: false,
            };
            leak_server::leak(acceptor, limit, false)
        }
        child => {
            shared::say(&format!("forked {child}"))?;
            // Holds the listener, and never accepts.
            shared::hold_forever()
        }
    }
}
