//! What every role needs: its stdout lines, sockets with timeouts, line exchanges,
//! threads, and its errors.
use std::{
    io::{self, BufRead, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

/// How long a client waits to connect or for a reply before it calls the server broken.
/// Loopback answers in microseconds; seconds mean the server is not what we expect.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection threads only shuffle a few bytes; the default 2 MiB stacks would make a
/// server with thousands of connections reserve gigabytes of address space.
const THREAD_STACK: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("accepting a connection on {addr}")]
    Accept {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("exchanging a request with {addr}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "{addr} sent no reply within {timeout:?}; this client needs a server that answers \
         each line, such as `portwatch actor echo-server`"
    )]
    ReplyTimeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} closed the connection instead of replying to {request:?}")]
    ClosedByServer { addr: SocketAddr, request: String },
    #[error("{addr} replied {reply:?} to {request:?}; an echo-server replies with the request")]
    WrongReply {
        addr: SocketAddr,
        request: String,
        reply: String,
    },
    #[error(
        "{addr} did not close the connection within {timeout:?}; with --close-first \
         server the echo-server must run with --close-after the same number of requests"
    )]
    NotClosedByServer { addr: SocketAddr, timeout: Duration },
    #[error("{0}")]
    Usage(String),
    #[error("cannot start a thread")]
    Thread(#[source] io::Error),
    #[error("cannot start an async runtime")]
    Runtime(#[source] io::Error),
    #[error("writing to standard output")]
    Stdout(#[source] io::Error),
}

/// Prints one line on stdout and flushes it: the parent is waiting for it.
pub fn say(line: &str) -> Result<(), ActorError> {
    // Not println!: it panics when the parent has closed the pipe.
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(ActorError::Stdout)
}

/// The line every role prints once set up: `ready <pid> <port>`.
pub fn say_ready(port: u16) -> Result<(), ActorError> {
    say(&format!("ready {} {port}", std::process::id()))
}

/// One line on stderr, prefixed like portwatch's own messages.
pub fn warn(message: &str) {
    // Not eprintln!: it panics when stderr is gone.
    let _ = writeln!(io::stderr(), "portwatch: {message}");
}

/// Raises this process's limit on open files as far as the kernel allows
/// (`fs.nr_open`), for actors that hold a descriptor per connection by the hundred
/// thousand. Without the privilege to raise the hard limit, the soft one goes up to it.
pub fn raise_open_files_limit() {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: ceiling.max(limit.rlim_cur),
        rlim_max: ceiling.max(limit.rlim_max),
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is reported by its return
    // value and leaves the limit as it was.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return;
    }
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max,
        ..limit
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } != 0 {
        warn("could not raise the limit on open files; connections may fail with EMFILE");
    }
}

/// Exits the process, successfully, when stdin reaches EOF: the parent holding it has
/// closed it or died.
///
/// A `go` line on stdin is remembered (see [`wait_for_go`]); anything else is ignored.
pub fn exit_on_stdin_eof() -> Result<(), ActorError> {
    spawn("stdin-eof", || {
        let mut line = String::new();
        let mut stdin = io::stdin().lock();
        // EOF or a read error (the parent is gone too) ends the process.
        while stdin.read_line(&mut line).is_ok_and(|read| read > 0) {
            if line.trim() == "go" {
                GO.store(true, std::sync::atomic::Ordering::Release);
            }
            line.clear();
        }
        std::process::exit(0);
    })
}

/// Set when the parent wrote `go` on stdin.
static GO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Waits until the parent writes a `go` line on stdin (heard only with
/// `--until-stdin-eof`, whose thread reads stdin), so that several actors can begin
/// a phase together.
pub fn wait_for_go() {
    while !GO.load(std::sync::atomic::Ordering::Acquire) {
        thread::sleep(Duration::from_millis(5));
    }
}

/// A named thread with a small stack, detached.
pub fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<(), ActorError> {
    thread::Builder::new()
        .name(name.to_owned())
        .stack_size(THREAD_STACK)
        .spawn(work)
        .map(drop)
        .map_err(ActorError::Thread)
}

/// A listening socket that accepts the way servers do. Running out of file descriptors
/// or memory is what a leaking server ends up doing; like real servers it then waits and
/// tries again, and says so once.
pub struct Acceptor {
    listener: TcpListener,
    addr: SocketAddr,
    warned: bool,
}

impl Acceptor {
    pub fn listen(addr: SocketAddr) -> Result<Acceptor, ActorError> {
        let error = |source| ActorError::Listen { addr, source };
        let listener = TcpListener::bind(addr).map_err(error)?;
        // The real port, when `addr` asked for any (port 0).
        let addr = listener.local_addr().map_err(error)?;
        Ok(Acceptor {
            listener,
            addr,
            warned: false,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Another acceptor on the same listening socket, for another thread.
    pub fn try_clone(&self) -> Result<Acceptor, ActorError> {
        let listener = self
            .listener
            .try_clone()
            .map_err(|source| ActorError::Listen {
                addr: self.addr,
                source,
            })?;
        Ok(Acceptor {
            listener,
            addr: self.addr,
            warned: false,
        })
    }

    pub fn accept(&mut self) -> Result<TcpStream, ActorError> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return Ok(stream),
                // The peer gave up before we got to it, or a signal came: nothing to see.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) if is_resource_shortage(&err) => {
                    if !self.warned {
                        self.warned = true;
                        warn(&format!(
                            "actor on {}: cannot accept: {err}; retrying every 100ms",
                            self.addr
                        ));
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(ActorError::Accept {
                        addr: self.addr,
                        source,
                    });
                }
            }
        }
    }
}

pub fn is_resource_shortage(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Connects with timeouts on connect, reads and writes, and without Nagle's delay (each
/// request is one small write).
pub fn connect(addr: SocketAddr) -> Result<TcpStream, ActorError> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|source| ActorError::Connect { addr, source })?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|source| ActorError::Connect { addr, source })?;
    Ok(stream)
}

/// A client's connection to an echo-server: one request line out, the same line back.
pub struct EchoConnection {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
    reply: String,
}

impl EchoConnection {
    pub fn open(addr: SocketAddr) -> Result<EchoConnection, ActorError> {
        Ok(EchoConnection {
            reader: BufReader::new(connect(addr)?),
            addr,
            reply: String::new(),
        })
    }

    /// Sends `request` (one line, without its newline) and checks the reply.
    pub fn exchange(&mut self, request: &str) -> Result<(), ActorError> {
        let addr = self.addr;
        let io_error = |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ActorError::ReplyTimeout {
                addr,
                timeout: IO_TIMEOUT,
            },
            _ => ActorError::Exchange { addr, source },
        };
        // One write, so the request leaves in one segment.
        let line = format!("{request}\n");
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(io_error)?;
        self.reply.clear();
        if self.reader.read_line(&mut self.reply).map_err(io_error)? == 0 {
            return Err(ActorError::ClosedByServer {
                addr,
                request: request.to_owned(),
            });
        }
        if self.reply != line {
            return Err(ActorError::WrongReply {
                addr,
                request: request.to_owned(),
                reply: self.reply.trim_end().to_owned(),
            });
        }
        Ok(())
    }
}

impl EchoConnection {
    /// Waits for the server to close its side first (its FIN: end of file), reading
    /// nothing else. The caller then closes, second, so the TIME_WAIT is the server's.
    pub fn wait_for_close(&mut self) -> Result<(), ActorError> {
        let addr = self.addr;
        let not_closed = || ActorError::NotClosedByServer {
            addr,
            timeout: IO_TIMEOUT,
        };
        let mut byte = [0u8; 1];
        loop {
            match self.reader.read(&mut byte) {
                Ok(0) => return Ok(()),
                // More data than the requests asked for: not the server we expect.
                Ok(_) => return Err(not_closed()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(not_closed());
                }
                Err(source) => return Err(ActorError::Exchange { addr, source }),
            }
        }
    }
}

/// Sleeps until `offset` after `start`; returns at once if that has passed.
pub fn sleep_until(start: Instant, offset: Duration) {
    // A deadline past what Instant can hold (`--duration 500000000000y`) never comes.
    let Some(deadline) = start.checked_add(offset) else {
        hold_forever()
    };
    let now = Instant::now();
    if deadline > now {
        thread::sleep(deadline - now);
    }
}

/// Never returns: the process lives, holding what it holds, until it is killed or its
/// stdin watcher ends it.
pub fn hold_forever() -> ! {
    loop {
        thread::park();
    }
}
