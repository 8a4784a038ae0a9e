//! `leak-server`: a server with the bug portwatch hunts. It reads each connection until
//! the peer closes and then never closes its side, so the socket sits in CLOSE_WAIT for
//! as long as the process lives.
use std::{
    io::{self, Read as _, Write as _},
    net::TcpStream,
    sync::mpsc,
};

use crate::{
    args::LeakServerArgs,
    shared::{self, Acceptor, GREETING, RoleError},
};

pub fn run(args: &LeakServerArgs) -> Result<(), RoleError> {
    let limit = Limit {
        leak: args.leak,
        keep_listening: args.keep_listening,
        hand_over: args.hand_over,
    };
    let (listen, alternate, greet) = (args.listen, args.alternate_accept, args.greet);
    let serve = move |on_thread: bool| {
        let acceptor = Acceptor::listen(listen)?.alternate_syscalls(alternate);
        shared::say_ready(acceptor.local_addr().port())?;
        if on_thread {
            // After `ready`: a parent waiting for `ready` skips the lines before it.
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            shared::say(&format!("thread {tid}"))?;
        }
        leak(acceptor, limit, greet)
    };
    if !args.accept_thread {
        return serve(false);
    }
    // listen(), accept() and the listener's close() all run on this other thread; the
    // main thread only waits for it.
    let server = std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || serve(true))
        .map_err(RoleError::Thread)?;
    // `leak` only returns with an error; a panic there is a bug worth seeing.
    server
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// How many connections to leak, and what then becomes of the listener.
pub struct Limit {
    /// None: every one.
    pub leak: Option<u64>,
    /// Hold the listening socket once `leak` are accepted, rather than closing it.
    pub keep_listening: bool,
    /// Once all are at EOF, hand them to a forked child and exit (see [`hand_over`]).
    pub hand_over: bool,
}

/// Accepts connections up to `limit` and leaks them; with `greet`, writes each one byte
/// first. Returns only on an error.
pub fn leak(mut acceptor: Acceptor, limit: Limit, greet: bool) -> Result<(), RoleError> {
    // Each connection is read on its own thread, so one peer that stays open does not
    // hold up the others; at EOF the socket comes back here, to be kept and never closed.
    let (leaked_tx, leaked_rx) = mpsc::channel::<TcpStream>();
    let mut leaked = Vec::new();
    let mut accepted = 0;
    while limit.leak.is_none_or(|limit| accepted < limit) {
        let mut stream = acceptor.accept()?;
        accepted += 1;
        if greet {
            // A client that never reads it may already have reset the connection: that
            // is no reason to stop.
            let _ = stream.write_all(&[GREETING]);
        }
        let leaked_tx = leaked_tx.clone();
        shared::spawn("leak", move || {
            read_until_eof(&stream);
            // The receiver outlives every sender: it is held until the process ends.
            let _ = leaked_tx.send(stream);
        })?;
        // Those at EOF move to the Vec; the others wait in the channel, just as open.
        leaked.extend(leaked_rx.try_iter());
    }

    // --leak N: stop listening, so that later connections are refused rather than left
    // unaccepted in the backlog, where they would reach CLOSE_WAIT too and blur "N".
    // Unless told to keep it, as a pre-fork worker keeps the listener it inherited.
    let _listener = limit.keep_listening.then_some(acceptor);
    drop(leaked_tx);
    // Said before waiting for EOF: the peers may hold their connections open.
    shared::say(&format!("accepted {accepted}"))?;
    while (leaked.len() as u64) < accepted {
        let Ok(stream) = leaked_rx.recv() else { break };
        leaked.push(stream);
    }
    shared::say(&format!("done {}", leaked.len()))?;
    if limit.hand_over {
        hand_over()?;
    }
    shared::hold_forever()
}

/// Forks: the child returns, to hold every descriptor this process held (the leaked
/// sockets, and the listener if kept); this process exits without closing any, so the
/// kernel only drops its references and the sockets stay as they are, in the child.
fn hand_over() -> Result<(), RoleError> {
    // SAFETY: fork has no memory preconditions. The child goes on with this thread only.
    // The others are the stdin watcher, blocked reading stdin with std's stdin lock held
    // (the child never takes that lock: see `shared::exit_on_raw_stdin_eof`), and
    // readers that have returned their socket and are ending; glibc's fork keeps malloc
    // usable in the child.
    match unsafe { libc::fork() } {
        -1 => Err(RoleError::Fork(io::Error::last_os_error())),
        0 => {
            // The stdin watcher did not survive the fork: without one of its own, the
            // child would outlive whoever started it.
            if shared::watching_stdin() {
                shared::exit_on_raw_stdin_eof()?;
            }
            shared::say(&format!("handed-over {}", std::process::id()))
        }
        _ => std::process::exit(0),
    }
}

/// Reads and discards until the peer closes (or resets) the connection.
fn read_until_eof(mut stream: &TcpStream) {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // A reset: the socket is closed by the kernel, and still held here.
            Err(_) => return,
        }
    }
}
