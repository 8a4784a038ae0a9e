//! The workload roles (`portwatch-workload <ROLE>`), run as the real binary.
//! UNPRIVILEGED: no eBPF; the kernel's socket tables in /proc show what the roles did.
use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, SocketAddr, TcpListener},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use portwatch_workload::{Launcher, WorkloadProcess};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_portwatch-workload");
const TIMEOUT: Duration = Duration::from_secs(10);

fn launcher() -> Launcher {
    Launcher::binary(WORKLOAD)
}

fn spawn(role_args: &[&str]) -> WorkloadProcess {
    launcher()
        .spawn(role_args)
        .unwrap_or_else(|err| panic!("{role_args:?}: {err:#}"))
}

fn echo_server(listen: &str) -> WorkloadProcess {
    spawn(&["echo-server", "--listen", listen])
}

fn done(workload: &mut WorkloadProcess) -> Vec<String> {
    workload
        .wait_line_timeout("done", TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"))
}

/// TCP states as /proc/net/tcp numbers them (include/net/tcp_states.h).
const ESTABLISHED: u8 = 1;
const TIME_WAIT: u8 = 6;
const CLOSE_WAIT: u8 = 8;
const LISTEN: u8 = 10;

#[derive(Debug, Clone, Copy)]
struct TcpSocket {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    inode: u64,
}

/// Every TCP socket of this network namespace, IPv4 and IPv6, TIME_WAIT ones included.
fn tcp_sockets() -> Vec<TcpSocket> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_else(|err| panic!("{table}: {err}"));
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            sockets.push(TcpSocket {
                local: proc_address(fields[1]),
                remote: proc_address(fields[2]),
                state: u8::from_str_radix(fields[3], 16).expect("hex state"),
                inode: fields[9].parse().expect("inode"),
            });
        }
    }
    sockets
}

/// `0100007F:1F90`: the address as the kernel's 32-bit words in host byte order, each
/// in hex, then the port in hex.
fn proc_address(text: &str) -> SocketAddr {
    let (words, port) = text.split_once(':').expect("address:port");
    let port = u16::from_str_radix(port, 16).expect("hex port");
    let bytes: Vec<u8> = words
        .as_bytes()
        .chunks(8)
        .flat_map(|word| {
            let word = std::str::from_utf8(word).expect("ascii");
            u32::from_str_radix(word, 16)
                .expect("hex word")
                .to_ne_bytes()
        })
        .collect();
    let ip = match <[u8; 4]>::try_from(bytes.as_slice()) {
        Ok(v4) => IpAddr::from(v4),
        Err(_) => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).expect("16 bytes")),
    };
    SocketAddr::new(ip, port)
}

fn count(pred: impl Fn(&TcpSocket) -> bool) -> usize {
    tcp_sockets().iter().filter(|socket| pred(socket)).count()
}

/// Inodes of the sockets process `pid` holds open.
fn socket_inodes_of(pid: u32) -> HashSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{dir}: {err}"))
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Polls `check` until it passes; panics with its last complaint after `TIMEOUT`.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match check() {
            Ok(()) => return,
            Err(complaint) if Instant::now() >= deadline => {
                panic!("{what}: still not true after {TIMEOUT:?}: {complaint}")
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn expect_count(what: &str, want: usize, pred: impl Fn(&TcpSocket) -> bool) {
    eventually(what, || match count(&pred) {
        got if got == want => Ok(()),
        got => Err(format!("{got} sockets, expected {want}")),
    });
}

fn seconds(word: &str) -> f64 {
    word.parse()
        .unwrap_or_else(|_| panic!("{word:?} is not seconds"))
}

/// Each test that counts sockets by address has a loopback address of its own, so that
/// another test's TIME_WAITs toward a port the kernel handed out again do not count.
fn server_on(ip: &str, server: &WorkloadProcess) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), server.port)
}

#[test]
fn churn_client_keeps_its_rate_and_leaves_time_wait_on_its_side() {
    let server = echo_server("127.0.10.1:0");
    let server_addr = server_on("127.0.10.1", &server);
    let target = server_addr.to_string();
    let mut client = spawn(&[
        "churn-client",
        "--connect",
        &target,
        "--rate",
        "200",
        "--count",
        "200",
    ]);
    assert_eq!(client.port, server.port);

    let done = done(&mut client);
    assert_eq!(done[0], "200", "connections made: {done:?}");
    let elapsed = seconds(&done[1]);
    assert!(
        (0.9..=1.1).contains(&elapsed),
        "200 at 200/s took {elapsed} s"
    );
    assert_eq!(done[2], "0", "connects without a local port: {done:?}");

    // The client closed first every time: 200 TIME_WAITs toward the server, none on the
    // server's side, and the server closed each of its sockets (no CLOSE_WAIT).
    expect_count("client TIME_WAITs", 200, |s| {
        s.remote == server_addr && s.state == TIME_WAIT
    });
    expect_count("server sockets besides the listener", 0, |s| {
        s.local == server_addr && s.state != LISTEN
    });
}

#[test]
fn churn_client_threads_share_one_rate_until_the_duration() {
    let server = echo_server("127.0.0.1:0");
    let target = format!("127.0.0.1:{}", server.port);
    let mut client = spawn(&[
        "churn-client",
        "--connect",
        &target,
        "--rate",
        "400",
        "--duration",
        "500ms",
        "--threads",
        "4",
    ]);
    let done = done(&mut client);
    // Slots every 2.5 ms, starting before 500 ms: 0 ms, 2.5 ms, ... 497.5 ms.
    assert_eq!(done[0], "200", "connections made: {done:?}");
    let elapsed = seconds(&done[1]);
    assert!((0.45..=0.55).contains(&elapsed), "500ms took {elapsed} s");
}

#[test]
fn churn_client_speaks_ipv6() {
    let server = echo_server("[::1]:0");
    let target = format!("[::1]:{}", server.port);
    let mut client = spawn(&[
        "churn-client",
        "--connect",
        &target,
        "--rate",
        "0",
        "--count",
        "20",
    ]);
    assert_eq!(done(&mut client)[0], "20");
}

#[test]
fn with_the_server_closing_first_the_time_wait_is_the_servers() {
    let server = spawn(&[
        "echo-server",
        "--listen",
        "127.0.10.5:0",
        "--workers",
        "2",
        "--close-after",
        "0",
    ]);
    let server_addr = server_on("127.0.10.5", &server);
    let target = server_addr.to_string();
    let mut client = spawn(&[
        "churn-client",
        "--connect",
        &target,
        "--rate",
        "0",
        "--count",
        "50",
        "--threads",
        "2",
        "--requests",
        "0",
        "--close-first",
        "server",
    ]);
    assert_eq!(done(&mut client)[0], "50");
    // Every TIME_WAIT is the server's. (Not always 50 of them: the client may reuse a
    // port at once, having no TIME_WAIT of its own, and a SYN that finds the server's
    // TIME_WAIT for the same 4-tuple replaces it.)
    let server_time_waits = count(|s| s.local == server_addr && s.state == TIME_WAIT);
    assert!(
        (40..=50).contains(&server_time_waits),
        "{server_time_waits} server TIME_WAITs"
    );
    expect_count("client TIME_WAITs", 0, |s| {
        s.remote == server_addr && s.state == TIME_WAIT
    });
}

#[test]
fn churn_client_exchanges_its_requests_and_keeps_each_connection_its_lifetime() {
    let server = spawn(&["echo-server", "--listen", "127.0.10.6:0", "--workers", "2"]);
    let target = server_on("127.0.10.6", &server).to_string();
    let mut client = spawn(&[
        "churn-client",
        "--connect",
        &target,
        "--rate",
        "0",
        "--count",
        "4",
        "--threads",
        "2",
        "--requests",
        "3",
        "--lifetime",
        "100ms",
    ]);
    let done = done(&mut client);
    assert_eq!(done[0], "4");
    // Two threads, two connections each, each open for 100 ms.
    let elapsed = seconds(&done[1]);
    assert!((0.2..1.0).contains(&elapsed), "took {elapsed} s");

    // The lifetime belongs to the side that closes first.
    let output = Command::new(WORKLOAD)
        .args(["churn-client", "--connect", &target, "--rate", "1"])
        .args(["--close-first", "server", "--lifetime", "10ms"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--lifetime"), "{stderr}");
}

#[test]
fn hold_roles_hold_their_connections_and_replace_them_on_go() {
    let server = spawn(&[
        "hold-server",
        "--listen",
        "127.0.10.7:0",
        "--listen",
        "127.0.10.8:0",
    ]);
    let servers = [
        server_on("127.0.10.7", &server),
        server_on("127.0.10.8", &server),
    ];
    let mut client = spawn(&[
        "hold-client",
        "--connect",
        &servers[0].to_string(),
        "--connect",
        &servers[1].to_string(),
        "--count",
        "20",
        "--churn-rate",
        "100",
        "--churn-duration",
        "200ms",
        "--churn-on-go",
    ]);
    let held = client
        .wait_line_timeout("held", TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert_eq!(held[0], "20");
    for server in servers {
        expect_count("connections to each server address", 10, |s| {
            s.remote == server && s.state == ESTABLISHED
        });
    }
    client.tell("go").unwrap();
    let done = done(&mut client);
    assert_eq!(&done[..2], ["20", "20"], "{done:?}");
    // Still 20 open; the 20 replaced ones closed on both sides, the client's first.
    expect_count("connections held", 20, |s| {
        servers.contains(&s.remote) && s.state == ESTABLISHED
    });
    expect_count("replaced connections in TIME_WAIT", 20, |s| {
        servers.contains(&s.remote) && s.state == TIME_WAIT
    });
    expect_count("server sockets closed with their peer", 0, |s| {
        servers.contains(&s.local) && s.state == CLOSE_WAIT
    });
}

#[test]
fn leak_server_holds_exactly_the_connections_it_leaked_in_close_wait() {
    let mut server = spawn(&["leak-server", "--listen", "127.0.10.3:0", "--leak", "3"]);
    let server_addr = server_on("127.0.10.3", &server);
    let target = server_addr.to_string();
    let mut client = spawn(&["leak-client", "--connect", &target, "--count", "3"]);
    assert_eq!(done(&mut client), ["3"]);
    // The server says done once it read EOF on all three: they are in CLOSE_WAIT now.
    assert_eq!(done(&mut server), ["3"]);

    let held = socket_inodes_of(server.pid);
    let close_wait: Vec<TcpSocket> = tcp_sockets()
        .into_iter()
        .filter(|s| s.local == server_addr && s.state == CLOSE_WAIT)
        .collect();
    assert_eq!(close_wait.len(), 3, "{close_wait:?}");
    for socket in &close_wait {
        assert!(
            held.contains(&socket.inode),
            "{socket:?} is not held by the leak-server (pid {}), which holds {held:?}",
            server.pid
        );
    }

    // It accepted exactly 3 and stopped listening: a fourth connection is refused.
    let mut late = spawn(&["leak-client", "--connect", &target, "--count", "1"]);
    let err = late.wait_line_timeout("done", TIMEOUT).unwrap_err();
    assert!(
        format!("{err:#}").contains("Connection refused"),
        "unexpected error: {err:#}"
    );
    assert_eq!(
        count(|s| s.local == server_addr && s.state == CLOSE_WAIT),
        3
    );
}

#[test]
fn leak_server_leaks_every_connection_by_default() {
    let server = spawn(&["leak-server", "--listen", "[::1]:0"]);
    let server_addr = server_on("::1", &server);
    let target = server_addr.to_string();
    let mut client = spawn(&["leak-client", "--connect", &target, "--count", "5"]);
    assert_eq!(done(&mut client), ["5"]);
    eventually("5 sockets in CLOSE_WAIT held by the leak-server", || {
        let held = socket_inodes_of(server.pid);
        let leaked =
            count(|s| s.local == server_addr && s.state == CLOSE_WAIT && held.contains(&s.inode));
        if leaked == 5 {
            Ok(())
        } else {
            Err(format!("{leaked} held in CLOSE_WAIT"))
        }
    });
}

#[test]
fn keepalive_client_uses_one_connection_for_every_request() {
    let server = echo_server("127.0.10.4:0");
    let server_addr = server_on("127.0.10.4", &server);
    let target = server_addr.to_string();
    let mut client = spawn(&[
        "keepalive-client",
        "--connect",
        &target,
        "--interval",
        "50ms",
        "--duration",
        "2s",
    ]);
    // `ready` comes once it is connected: from then on, exactly one connection. Looked at
    // during the first second only, well before the client closes it at 2 s.
    let ready = Instant::now();
    let mut looks = 0;
    while ready.elapsed() < Duration::from_secs(1) {
        let toward_server: Vec<u8> = tcp_sockets()
            .iter()
            .filter(|s| s.remote == server_addr)
            .map(|s| s.state)
            .collect();
        assert_eq!(
            toward_server,
            [ESTABLISHED],
            "states of the client's sockets"
        );
        looks += 1;
        thread::sleep(Duration::from_millis(100));
    }
    assert!(looks > 0);

    let done = done(&mut client);
    // One request every 50 ms, starting before 2 s: 0, 50, ... 1950 ms.
    assert_eq!(done[0], "40", "requests: {done:?}");
    let elapsed = seconds(&done[1]);
    assert!((1.9..=2.1).contains(&elapsed), "2s took {elapsed} s");
    // The one close at the end is the only TIME_WAIT, and the server closed its side.
    expect_count("client TIME_WAITs", 1, |s| {
        s.remote == server_addr && s.state == TIME_WAIT
    });
    expect_count("server sockets besides the listener", 0, |s| {
        s.local == server_addr && s.state != LISTEN
    });
}

#[test]
fn a_workload_exits_cleanly_when_its_stdin_closes() {
    let mut server = echo_server("127.0.0.1:0");
    server.close_stdin();
    let status = server
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"));
    assert!(status.success(), "{status}");
}

#[test]
fn an_unreachable_server_is_one_line_on_stderr_and_exit_code_1() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = Command::new(WORKLOAD)
        .args(["churn-client", "--rate", "10", "--count", "1"])
        .args(["--connect", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.starts_with(&format!(
            "portwatch-workload: churn-client: cannot connect to 127.0.0.1:{port}: Connection refused"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn spawning_a_workload_that_cannot_start_says_why() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = launcher()
        .spawn(&["echo-server", "--listen", &addr])
        .err()
        .expect("the port is taken");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("cannot listen on {addr}")) && message.contains("in use"),
        "{message}"
    );
}
