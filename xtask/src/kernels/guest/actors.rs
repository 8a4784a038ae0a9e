//! The processes that make the guest's TCP traffic, each a separate process so
//! portwatch must tell them apart. Each says `ready <pid> <port>` on stdout once it
//! listens (servers) or is set up, and clients say `done ...` when finished.
use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use anyhow::{Context as _, Result, bail};

fn say(words: &str) {
    println!("{words}");
}

fn listen() -> Result<TcpListener> {
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")?;
    let port = listener.local_addr()?.port();
    say(&format!("ready {} {port}", std::process::id()));
    Ok(listener)
}

pub fn leak_server() -> Result<()> {
    let listener = listen()?;
    let mut held = Vec::new();
    for n in 0u64.. {
        // Both system calls, so the test covers both pairs of accept tracepoints.
        let accepted = if n % 2 == 0 {
            listener.accept().map(|(stream, _)| stream)
        } else {
            accept_syscall(&listener)
        };
        let mut stream = accepted.context("accept")?;
        // The byte tells the client it was accepted. A client that never reads it may
        // already have reset the connection: that is no reason to stop.
        let _ = stream.write_all(b"a");
        held.push(stream);
    }
    Ok(())
}

/// accept(2) itself: the standard library always calls accept4(2).
fn accept_syscall(listener: &TcpListener) -> io::Result<TcpStream> {
    // SAFETY: zeroed bytes are a valid sockaddr_storage.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the fd is the listener's, open for the duration of the call; address and
    // length point to writable memory of the sizes passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_accept,
            listener.as_raw_fd(),
            (&raw mut address).cast::<libc::sockaddr>(),
            &raw mut length,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept returned a new fd that nothing else owns.
    Ok(unsafe { TcpStream::from_raw_fd(fd as i32) })
}

pub fn leak_client(port: u16, count: usize) -> Result<()> {
    say(&format!("ready {} {port}", std::process::id()));
    for _ in 0..count {
        let mut stream = connect(port)?;
        wait_for_accept(&mut stream)?;
    }
    say("done");
    Ok(())
}

pub fn churn_server() -> Result<()> {
    let listener = listen()?;
    loop {
        let (mut stream, _) = listener.accept().context("accept")?;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
}

pub fn churn_client(port: u16, count: usize) -> Result<()> {
    say(&format!("ready {} {port}", std::process::id()));
    for _ in 0..count {
        let mut stream = connect(port)?;
        // Close first, then wait for the server's close: one connection at a time, so
        // the listener's backlog never overflows (a dropped SYN costs a 1 s retry).
        stream.shutdown(Shutdown::Write).context("shutdown")?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).context("reading to EOF")?;
    }
    say("done");
    Ok(())
}

pub fn connect_and_exit(port: u16) -> Result<()> {
    let mut stream = connect(port)?;
    wait_for_accept(&mut stream)?;
    say(&format!("ready {} {port}", std::process::id()));
    io::stdout().flush()?;
    // exit() runs no destructors: the socket is still open when the process is gone,
    // and the kernel closes it during the exit.
    std::process::exit(0)
}

pub fn hold_client(port: u16, count: usize) -> Result<()> {
    say(&format!("ready {} {port}", std::process::id()));
    let mut held = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => held.push(stream),
            Err(err) if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) => failed += 1,
            Err(err) => return Err(err).context("connect"),
        }
    }
    say(&format!("done {} {failed}", held.len()));
    Ok(())
}

fn connect(port: u16) -> Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to port {port}"))
}

/// Reads the server's one byte, which it writes once it has accepted.
fn wait_for_accept(stream: &mut TcpStream) -> Result<()> {
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .context("waiting for the server's byte")?;
    if &byte != b"a" {
        bail!("unexpected byte {byte:?} from the server");
    }
    Ok(())
}
