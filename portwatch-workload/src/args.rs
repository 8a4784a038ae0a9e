//! Every role's options, one set for all who start them: `portwatch demo` (through
//! `portwatch actor`), the tests, the kernel-matrix guest and the benchmark.
use std::{net::SocketAddr, time::Duration};

use clap::{Args, Subcommand};

/// `<program> [--until-stdin-eof] <ROLE> [options]`. Every role prints
/// `ready <pid> <port>` on stdout once set up.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Exit (status 0) when standard input reaches EOF, so a role dies with the parent
    /// that holds its stdin, even when that parent is killed. Lines on stdin are then
    /// heard too: `go` starts what waits for it.
    #[arg(long, global = true)]
    pub until_stdin_eof: bool,

    /// Once set up (after `ready`), wait for a `go` line on stdin before doing anything
    /// (with --until-stdin-eof): a parent can start its processes first and let them
    /// work later.
    #[arg(long, global = true, requires = "until_stdin_eof")]
    pub start_on_go: bool,

    #[command(subcommand)]
    pub role: Role,
}

impl WorkloadArgs {
    pub fn options(&self) -> crate::Options {
        crate::Options {
            until_stdin_eof: self.until_stdin_eof,
            start_on_go: self.start_on_go,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Role {
    /// Accepts connections, reads each until the peer closes, and never closes it: the
    /// sockets stay in CLOSE_WAIT. With --leak N, prints `accepted <N>` once it accepted
    /// N, and `done <N>` once all N saw EOF; with --hand-over, a forked child then holds
    /// them and this process exits.
    LeakServer(LeakServerArgs),
    /// A pre-fork server: this process listens, a forked child accepts --leak N
    /// connections and leaks them as leak-server does; the parent holds only the
    /// listener. Prints `forked <child pid>`; the child prints `accepted <N>`, `done <N>`.
    PreforkServer(PreforkServerArgs),
    /// Answers each request line with the same line and closes as soon as the peer does
    /// (or, with --close-after N, first, after N answers).
    EchoServer(EchoServerArgs),
    /// Opens short connections at a fixed rate (or flat out), one request each by
    /// default, closing first (its sockets go to TIME_WAIT) unless told the server does.
    /// Prints `done <made> <seconds> <no_local_port>` at the end.
    ChurnClient(ChurnClientArgs),
    /// One connection (connected before `ready`), one request per interval. Prints
    /// `done <requests> <seconds>` when --duration ends.
    KeepaliveClient(KeepaliveClientArgs),
    /// Connects N times and closes each connection at once. Prints `done <N>`.
    LeakClient(LeakClientArgs),
    /// Connects once (before `ready`), prints `connected <local port>`, and exits without
    /// closing: the kernel closes the socket after the process is gone.
    ConnectAndExit(ConnectAndExitArgs),
    /// Accepts on every --listen address and holds each connection until the peer
    /// closes it, then closes its side: for tens of thousands of live connections.
    HoldServer(HoldServerArgs),
    /// Opens N connections and holds them; prints `held <N> <seconds> <no_local_port>`.
    /// Then, with --churn-rate, replaces the oldest one with a new one at that rate, and
    /// prints `done <held> <replaced> <seconds>`; with --close-on-go, closes them all on
    /// `go` and prints `closed <N>`.
    HoldClient(HoldClientArgs),
}

impl Role {
    /// The role's name on the command line, which is also its process name (comm).
    pub fn name(&self) -> &'static str {
        match self {
            Role::LeakServer(_) => "leak-server",
            Role::PreforkServer(_) => "prefork-server",
            Role::EchoServer(_) => "echo-server",
            Role::ChurnClient(_) => "churn-client",
            Role::KeepaliveClient(_) => "keepalive-client",
            Role::LeakClient(_) => "leak-client",
            Role::ConnectAndExit(_) => "connect-and-exit",
            Role::HoldServer(_) => "hold-server",
            Role::HoldClient(_) => "hold-client",
        }
    }
}

#[derive(Debug, Args)]
pub struct LeakServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:0 or [::1]:8080 (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub listen: SocketAddr,

    /// Accept exactly N connections, then stop listening and hold them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub leak: Option<u64>,

    /// Accept and leak every connection, for as long as the server runs (the default).
    #[arg(long, conflicts_with = "leak")]
    pub leak_all: bool,

    /// With --leak N: keep the listening socket open once N are accepted (accepting no
    /// more), as a server that stopped accepting still would. Default: close it, so that
    /// later connections are refused rather than queued.
    #[arg(long, requires = "leak")]
    pub keep_listening: bool,

    /// Write one byte (`a`) to each connection once accepted, so that a client run with
    /// --await-greeting closes only once its connection is accepted (and owned).
    #[arg(long)]
    pub greet: bool,

    /// Accept with accept(2) and accept4(2) in turn (the standard library only calls
    /// accept4), so that a tracer's hooks on both system calls are exercised.
    #[arg(long)]
    pub alternate_accept: bool,

    /// Listen and accept on a thread other than the main one, which prints
    /// `thread <tid>` after `ready`: its sockets belong to the process, not the thread.
    #[arg(long)]
    pub accept_thread: bool,

    /// With --leak N: once all N are in CLOSE_WAIT, fork; the child keeps the leaked
    /// sockets and prints `handed-over <child pid>`, and this process exits without
    /// closing them. The sockets then belong to a process that never accepted them.
    #[arg(long, requires = "leak")]
    pub hand_over: bool,
}

#[derive(Debug, Args)]
pub struct PreforkServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:0 or [::]:0 (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub listen: SocketAddr,

    /// The child accepts exactly N connections and holds them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub leak: u64,
}

#[derive(Debug, Args)]
pub struct EchoServerArgs {
    /// Address to listen on, e.g. 127.0.0.1:0 or [::1]:8080 (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub listen: SocketAddr,

    /// Serve connections on N threads that each accept and serve one connection at a
    /// time, instead of a new thread per connection: what a benchmark wants, as
    /// starting a thread costs more than a loopback connection. N must cover the
    /// connections open at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    /// Close each connection first, after answering N lines (0: as soon as it is
    /// accepted), so the TIME_WAIT lands on this side. Default: close after the peer.
    #[arg(long, value_name = "N")]
    pub close_after: Option<u32>,

    /// With --close-after: close no sooner than this long after accepting, e.g. 10ms.
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "close_after")]
    pub lifetime: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ChurnClientArgs {
    /// The echo-server to connect to, e.g. 127.0.0.1:8080 or [::1]:8080.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub connect: SocketAddr,

    /// Connections per second, over all threads; 0: as fast as possible.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: f64,

    /// Stop after N connections.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Stop after this long, e.g. 10s. Without --count or --duration: until killed.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Connections in flight at once.
    #[arg(long, value_name = "T", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// Request-response exchanges per connection; 0: connect and close.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub requests: u32,

    /// Which side closes each connection first, and so keeps its TIME_WAIT. `server`
    /// needs an echo-server started with `--close-after` the same number of requests:
    /// this client then waits for the server's FIN before closing.
    #[arg(long, value_enum, default_value_t = CloseFirst::Client)]
    pub close_first: CloseFirst,

    /// Keep each connection open this long after connecting before closing it, e.g.
    /// 10ms (--close-first client only; the server holds it with its own --lifetime).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub lifetime: Option<Duration>,

    /// With --close-first client: shut down only the sending side first, and release the
    /// socket once the server's FIN came back, so that each connection is over, on both
    /// sides, before the next one starts.
    #[arg(long, conflicts_with = "lifetime")]
    pub await_peer_close: bool,
}

/// The side of a connection that sends the first FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseFirst {
    Client,
    Server,
}

#[derive(Debug, Args)]
pub struct HoldServerArgs {
    /// Addresses to listen on (repeatable). Those after the first with port 0 take the
    /// first one's port, so one port number serves them all.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr, required = true)]
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct HoldClientArgs {
    /// Servers to connect to, in turn (repeatable): each (address, port) has its own
    /// budget of ephemeral ports, so several addresses allow more connections than the
    /// port range holds.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr, required = true)]
    pub connect: Vec<SocketAddr>,

    /// How many connections to open and hold.
    #[arg(long, value_name = "N")]
    pub count: u64,

    /// Connections opened per second while filling up; 0: as fast as possible.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,

    /// Once all are open, close the oldest and open a new one this many times per
    /// second (this side closes first); 0: just hold them.
    #[arg(long, value_name = "R", default_value_t = 0.0, value_parser = parse_rate)]
    pub churn_rate: f64,

    /// How long to churn, e.g. 60s. Default: until stopped.
    #[arg(long, value_name = "D", value_parser = parse_duration, requires = "churn_rate")]
    pub churn_duration: Option<Duration>,

    /// Begin churning only when a `go` line arrives on stdin (with --until-stdin-eof),
    /// so that several clients churn together.
    #[arg(long, requires = "churn_rate")]
    pub churn_on_go: bool,

    /// Once all are open, wait for a `go` line on stdin (with --until-stdin-eof), close
    /// them all and print `closed <N>`.
    #[arg(long, conflicts_with_all = ["churn_rate", "exit_when_held"])]
    pub close_on_go: bool,

    /// Once all are open, print `held ...` and exit, which closes them: for a client
    /// that only runs out of local ports.
    #[arg(long, conflicts_with = "churn_rate")]
    pub exit_when_held: bool,

    /// Count connects that fail for want of a local port (EADDRNOTAVAIL) and go on,
    /// instead of failing: for running out of ports on purpose.
    #[arg(long)]
    pub count_no_local_port: bool,
}

#[derive(Debug, Args)]
pub struct KeepaliveClientArgs {
    /// The echo-server to connect to, e.g. 127.0.0.1:8080 or [::1]:8080.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub connect: SocketAddr,

    /// Time between requests, e.g. 100ms.
    #[arg(long, value_name = "I", value_parser = parse_duration)]
    pub interval: Duration,

    /// Stop after this long, e.g. 10s. Default: until killed.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct LeakClientArgs {
    /// The server to connect to, e.g. 127.0.0.1:8080 or [::1]:8080.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub connect: SocketAddr,

    /// How many connections to open and close.
    #[arg(long, value_name = "N")]
    pub count: u64,

    /// Before closing each connection, wait for the byte a leak-server run with --greet
    /// writes: the connection is then accepted, and owned by the server, before the
    /// FIN arrives.
    #[arg(long)]
    pub await_greeting: bool,

    /// After `done`, stay alive until killed (or until stdin's EOF with
    /// --until-stdin-eof), so that the client is still there to be told apart from the
    /// server.
    #[arg(long)]
    pub stay: bool,
}

#[derive(Debug, Args)]
pub struct ConnectAndExitArgs {
    /// The server to connect to, e.g. 127.0.0.1:8080 or [::1]:8080.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    pub connect: SocketAddr,

    /// Wait for the byte a leak-server run with --greet writes before saying `ready`.
    #[arg(long)]
    pub await_greeting: bool,

    /// Exit only when a `go` line arrives on stdin (with --until-stdin-eof), rather than
    /// at once.
    #[arg(long)]
    pub exit_on_go: bool,
}

/// Numeric addresses only: workloads talk to this host, and a name lookup would only add a
/// way to fail.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("{text:?} is not an address and port such as 127.0.0.1:8080 or [::1]:8080")
    })
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: write connections per second, e.g. 200 or 0.5 (0: as fast as possible)"
        )),
    }
}

/// A duration such as `10s`, `500ms` or `1h30m`, longer than zero; the one parser of
/// portwatch's and its tasks' duration options, so they accept and reject the same
/// text with the same message.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("{err} (write a number and a unit, e.g. 10s, 2m, 1h)"))?;
    if duration.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        workload: WorkloadArgs,
    }

    fn parse(args: &[&str]) -> Result<WorkloadArgs, clap::Error> {
        Cli::try_parse_from(["portwatch-workload"].iter().chain(args)).map(|cli| cli.workload)
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").unwrap_err().contains("e.g. 10s"));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("longer than zero")
        );
    }

    #[test]
    fn hold_client_ends_in_one_way() {
        let args = parse(&[
            "--until-stdin-eof",
            "hold-client",
            "--connect",
            "127.0.0.1:80",
            "--count",
            "2",
            "--close-on-go",
        ])
        .unwrap();
        assert!(args.until_stdin_eof);
        let Role::HoldClient(hold) = args.role else {
            panic!("parsed as {:?}", args.role);
        };
        assert!(hold.close_on_go && !hold.exit_when_held);
        let base = ["hold-client", "--connect", "127.0.0.1:80", "--count", "2"];
        for extra in [
            &["--close-on-go", "--exit-when-held"][..],
            &["--close-on-go", "--churn-rate", "10"],
            &["--exit-when-held", "--churn-rate", "10"],
        ] {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            assert!(parse(&args).is_err(), "{args:?} parsed");
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let bad: [&[&str]; 5] = [
            &["leak-server", "--listen", "localhost:80"],
            &["leak-server", "--listen", "127.0.0.1:0", "--keep-listening"],
            &["prefork-server", "--listen", "127.0.0.1:0"],
            &["churn-client", "--connect", "127.0.0.1:80", "--rate", "-1"],
            &[
                "churn-client",
                "--connect",
                "127.0.0.1:80",
                "--rate",
                "1",
                "--await-peer-close",
                "--lifetime",
                "1s",
            ],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?} parsed");
        }
    }
}
