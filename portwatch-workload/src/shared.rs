//! What every role needs: its stdout lines, stdin's `go`, sockets with timeouts, line
//! exchanges, threads, and its errors.
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
pub enum RoleError {
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
         each line, such as an echo-server"
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
    #[error("{addr} sent {byte:?} instead of a leak-server's greeting")]
    WrongGreeting { addr: SocketAddr, byte: u8 },
    #[error("this role waits for `go` on stdin, which only --until-stdin-eof listens to")]
    NoStdinWatcher,
    #[error("cannot fork")]
    Fork(#[source] io::Error),
    #[error("cannot start a thread")]
    Thread(#[source] io::Error),
    #[error("cannot start an async runtime")]
    Runtime(#[source] io::Error),
    #[error("writing to standard output")]
    Stdout(#[source] io::Error),
}

/// Prints one line on stdout and flushes it: the parent is waiting for it.
pub fn say(line: &str) -> Result<(), RoleError> {
    // Not println!: it panics when the parent has closed the pipe.
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(RoleError::Stdout)
}

/// The line every role prints once set up: `ready <pid> <port>`.
pub fn say_ready(port: u16) -> Result<(), RoleError> {
    say(&format!("ready {} {port}", std::process::id()))?;
    if START_ON_GO.load(std::sync::atomic::Ordering::Acquire) {
        wait_for_go()?;
    }
    Ok(())
}

/// Makes [`say_ready`] wait for `go` (every role says ready once, when set up and
/// before its work): `--start-on-go`.
pub fn start_on_go() -> Result<(), RoleError> {
    if !watching_stdin() {
        return Err(RoleError::NoStdinWatcher);
    }
    START_ON_GO.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

static START_ON_GO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One line on stderr, prefixed with the program's name, as its error would be.
pub fn warn(message: &str) {
    let program = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Not eprintln!: it panics when stderr is gone.
    let _ = writeln!(io::stderr(), "{program}: {message}");
}

/// Raises this process's limit on open files as far as the kernel allows
/// (`fs.nr_open`), for roles that hold a descriptor per connection by the hundred
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
pub fn exit_on_stdin_eof() -> Result<(), RoleError> {
    WATCHING_STDIN.store(true, std::sync::atomic::Ordering::Release);
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

/// Whether a thread watches stdin (see [`exit_on_stdin_eof`]).
pub fn watching_stdin() -> bool {
    WATCHING_STDIN.load(std::sync::atomic::Ordering::Acquire)
}

/// [`exit_on_stdin_eof`] for a forked child: it reads descriptor 0 itself, because the
/// parent's watcher held std's stdin lock when the process forked, and the child's copy
/// of that lock stays held forever. `go` lines are not heard.
pub fn exit_on_raw_stdin_eof() -> Result<(), RoleError> {
    spawn("stdin-eof", || {
        let mut buffer = [0u8; 256];
        loop {
            // SAFETY: read writes at most `buffer.len()` bytes into `buffer`.
            let read = unsafe { libc::read(0, buffer.as_mut_ptr().cast(), buffer.len()) };
            let interrupted =
                read < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
            if read == 0 || (read < 0 && !interrupted) {
                std::process::exit(0);
            }
        }
    })
}

/// Set when the parent wrote `go` on stdin.
static GO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set once a thread reads stdin: without it, `go` would never be heard.
static WATCHING_STDIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Waits until the parent writes a `go` line on stdin (heard only with
/// `--until-stdin-eof`, whose thread reads stdin), so that several processes can begin
/// a phase together, or a test can say when a process moves on.
pub fn wait_for_go() -> Result<(), RoleError> {
    if !WATCHING_STDIN.load(std::sync::atomic::Ordering::Acquire) {
        return Err(RoleError::NoStdinWatcher);
    }
    while !GO.load(std::sync::atomic::Ordering::Acquire) {
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A named thread with a small stack, detached.
pub fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<(), RoleError> {
    thread::Builder::new()
        .name(name.to_owned())
        .stack_size(THREAD_STACK)
        .spawn(work)
        .map(drop)
        .map_err(RoleError::Thread)
}

/// A listening socket that accepts the way servers do. Running out of file descriptors
/// or memory is what a leaking server ends up doing; like real servers it then waits and
/// tries again, and says so once.
pub struct Acceptor {
    listener: TcpListener,
    addr: SocketAddr,
    warned: bool,
    /// Every other accept with accept(2) rather than accept4(2).
    alternate: bool,
    accepted: u64,
}

impl Acceptor {
    pub fn listen(addr: SocketAddr) -> Result<Acceptor, RoleError> {
        let error = |source| RoleError::Listen { addr, source };
        let listener = TcpListener::bind(addr).map_err(error)?;
        // The real port, when `addr` asked for any (port 0).
        let addr = listener.local_addr().map_err(error)?;
        Ok(Acceptor {
            listener,
            addr,
            warned: false,
            alternate: false,
            accepted: 0,
        })
    }

    /// Accepts with accept(2) and accept4(2) in turn, so that both system calls (and a
    /// tracer's hooks on each) are exercised; the standard library only calls accept4.
    pub fn alternate_syscalls(self, alternate: bool) -> Acceptor {
        Acceptor { alternate, ..self }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Another acceptor on the same listening socket, for another thread.
    pub fn try_clone(&self) -> Result<Acceptor, RoleError> {
        let listener = self
            .listener
            .try_clone()
            .map_err(|source| RoleError::Listen {
                addr: self.addr,
                source,
            })?;
        Ok(Acceptor {
            listener,
            addr: self.addr,
            warned: false,
            alternate: self.alternate,
            accepted: 0,
        })
    }

    pub fn accept(&mut self) -> Result<TcpStream, RoleError> {
        loop {
            let accepted = if self.alternate && self.accepted % 2 == 1 {
                accept_syscall(&self.listener)
            } else {
                self.listener.accept().map(|(stream, _)| stream)
            };
            match accepted {
                Ok(stream) => {
                    self.accepted += 1;
                    return Ok(stream);
                }
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
                            "listener on {}: cannot accept: {err}; retrying every 100ms",
                            self.addr
                        ));
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(RoleError::Accept {
                        addr: self.addr,
                        source,
                    });
                }
            }
        }
    }
}

/// accept(2) itself: the standard library always calls accept4(2).
fn accept_syscall(listener: &TcpListener) -> io::Result<TcpStream> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
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
    // SAFETY: accept returned a new fd that nothing else owns. (Unlike accept4 with
    // SOCK_CLOEXEC it is inherited across exec; workloads exec nothing.)
    Ok(unsafe { TcpStream::from_raw_fd(fd as i32) })
}

/// The byte a leak-server run with --greet writes to each connection it accepts.
pub const GREETING: u8 = b'a';

/// Reads the server's greeting: the connection is accepted.
pub fn await_greeting(mut stream: &TcpStream) -> Result<(), RoleError> {
    let addr = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .map_err(|source| RoleError::Exchange { addr, source })?;
    if byte[0] != GREETING {
        return Err(RoleError::WrongGreeting {
            addr,
            byte: byte[0],
        });
    }
    Ok(())
}

pub fn is_resource_shortage(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Connects with timeouts on connect, reads and writes, and without Nagle's delay (each
/// request is one small write).
pub fn connect(addr: SocketAddr) -> Result<TcpStream, RoleError> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|source| RoleError::Connect { addr, source })?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|source| RoleError::Connect { addr, source })?;
    Ok(stream)
}

/// A client's connection to an echo-server: one request line out, the same line back.
pub struct EchoConnection {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
    reply: String,
}

impl EchoConnection {
    pub fn open(addr: SocketAddr) -> Result<EchoConnection, RoleError> {
        Ok(EchoConnection {
            reader: BufReader::new(connect(addr)?),
            addr,
            reply: String::new(),
        })
    }

    /// Sends `request` (one line, without its newline) and checks the reply.
    pub fn exchange(&mut self, request: &str) -> Result<(), RoleError> {
        let addr = self.addr;
        let io_error = |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RoleError::ReplyTimeout {
                addr,
                timeout: IO_TIMEOUT,
            },
            _ => RoleError::Exchange { addr, source },
        };
        // One write, so the request leaves in one segment.
        let line = format!("{request}\n");
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(io_error)?;
        self.reply.clear();
        if self.reader.read_line(&mut self.reply).map_err(io_error)? == 0 {
            return Err(RoleError::ClosedByServer {
                addr,
                request: request.to_owned(),
            });
        }
        if self.reply != line {
            return Err(RoleError::WrongReply {
                addr,
                request: request.to_owned(),
                reply: self.reply.trim_end().to_owned(),
            });
        }
        Ok(())
    }
}

impl EchoConnection {
    /// Sends this side's FIN but keeps the socket, to read until the server's.
    pub fn shut_down_sending(&mut self) -> Result<(), RoleError> {
        let addr = self.addr;
        self.reader
            .get_ref()
            .shutdown(std::net::Shutdown::Write)
            .map_err(|source| RoleError::Exchange { addr, source })
    }

    /// Waits for the server to close its side first (its FIN: end of file), reading
    /// nothing else. The caller then closes, second, so the TIME_WAIT is the server's.
    pub fn wait_for_close(&mut self) -> Result<(), RoleError> {
        let addr = self.addr;
        let not_closed = || RoleError::NotClosedByServer {
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
                Err(source) => return Err(RoleError::Exchange { addr, source }),
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
