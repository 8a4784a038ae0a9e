//! What every role needs: its stdout lines, sockets with timeouts, line exchanges,
//! threads, and its errors.
use std::{
    io::{self, BufRead, BufReader, Write as _},
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
    #[error("cannot start a thread")]
    Thread(#[source] io::Error),
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

/// Exits the process, successfully, when stdin reaches EOF: the parent holding it has
/// closed it or died.
pub fn exit_on_stdin_eof() -> Result<(), ActorError> {
    spawn("stdin-eof", || {
        // Whatever arrives is ignored; a read error means the parent is gone too.
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        std::process::exit(0);
    })
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
                        // Not eprintln!: it panics when stderr is gone.
                        let _ = writeln!(
                            io::stderr(),
                            "portwatch: actor on {}: cannot accept: {err}; retrying every \
                             100ms",
                            self.addr
                        );
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

fn is_resource_shortage(err: &io::Error) -> bool {
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
