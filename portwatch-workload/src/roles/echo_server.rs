//! `echo-server`: a well-behaved server. It answers each request line with the same line
//! and closes its side as soon as it reads EOF, so none of its sockets linger in
//! CLOSE_WAIT, and the peer, which closed first, is the one left with TIME_WAIT.
//!
//! With `--close-after N` it closes first instead, after N answers (and no sooner than
//! `--lifetime`), so the TIME_WAIT is its own. With `--workers N` a fixed set of threads
//! accept and serve, one connection at a time each: a benchmark's server must cost less
//! per connection than starting a thread does.
use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::TcpStream,
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    args::EchoServerArgs,
    shared::{self, Acceptor, RoleError},
};

/// How each connection is served.
#[derive(Clone, Copy, Debug)]
struct Policy {
    /// Close first after this many answers; None: echo until the peer closes.
    close_after: Option<u32>,
    /// With `close_after`, close no sooner than this after accepting.
    lifetime: Option<Duration>,
}

pub fn run(args: &EchoServerArgs) -> Result<(), RoleError> {
    let mut acceptor = Acceptor::listen(args.listen)?;
    shared::say_ready(acceptor.local_addr().port())?;
    let policy = Policy {
        close_after: args.close_after,
        lifetime: args.lifetime,
    };
    let Some(workers) = args.workers else {
        loop {
            let stream = acceptor.accept()?;
            shared::spawn("echo", move || {
                // A peer that resets or misbehaves ends its own connection, not the server.
                let _ = serve(&stream, policy);
            })?;
        }
    };

    // Workers share the listening socket (each has a duplicate of its fd); the kernel
    // hands each incoming connection to one accept() caller. The first worker error
    // ends the server.
    let (failed_tx, failed) = mpsc::channel();
    for _ in 1..workers {
        let mut acceptor = acceptor.try_clone()?;
        let failed_tx = failed_tx.clone();
        shared::spawn("echo-worker", move || {
            let _ = failed_tx.send(work(&mut acceptor, policy));
        })?;
    }
    shared::spawn("echo-worker", move || {
        let _ = failed_tx.send(work(&mut acceptor, policy));
    })?;
    match failed.recv() {
        Ok(err) => Err(err),
        // Every worker is gone without an error: cannot happen, as they loop forever.
        Err(_) => Ok(()),
    }
}

/// One worker: accept a connection, serve it to the end, repeat. Returns only on an
/// accept error.
fn work(acceptor: &mut Acceptor, policy: Policy) -> RoleError {
    loop {
        match acceptor.accept() {
            Ok(stream) => {
                let _ = serve(&stream, policy);
            }
            Err(err) => return err,
        }
    }
}

/// Serves one connection; the caller drops (closes) the stream right after.
fn serve(stream: &TcpStream, policy: Policy) -> io::Result<()> {
    let accepted = Instant::now();
    match policy.close_after {
        None => echo(stream, None),
        Some(answers) => {
            if answers > 0 {
                echo(stream, Some(answers))?;
            }
            if let Some(lifetime) = policy.lifetime {
                shared::sleep_until(accepted, lifetime);
            }
            Ok(())
        }
    }
}

/// Echoes lines until EOF, or until `limit` lines were answered.
fn echo(stream: &TcpStream, limit: Option<u32>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut answered = 0;
    while limit.is_none_or(|limit| answered < limit) {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let mut writer = stream;
        writer.write_all(&line)?;
        answered += 1;
    }
    Ok(())
}
