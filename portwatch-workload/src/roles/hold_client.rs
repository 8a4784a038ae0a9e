//! `hold-client`: the client side of a host with many live connections. It opens
//! `--count` connections, spread over its `--connect` servers (each server address has
//! its own ephemeral-port budget, so several of them get past the port range), and
//! holds them. With `--churn-rate` it then keeps the count constant while replacing
//! connections: close the oldest (first, so the TIME_WAIT is this side's), open a new
//! one, at that rate. With `--close-on-go` it closes them all when told; with
//! `--count-no-local-port` it runs out of local ports on purpose and counts the
//! connects that fail for it.
use std::{collections::VecDeque, io, net::TcpStream, time::Instant};

use crate::{
    args::HoldClientArgs,
    pacing::{Schedule, Step},
    shared::{self, RoleError},
};

pub fn run(args: &HoldClientArgs) -> Result<(), RoleError> {
    shared::raise_open_files_limit();
    shared::say_ready(args.connect[0].port())?;
    let mut servers = args.connect.iter().copied().cycle();
    let mut held = VecDeque::with_capacity(args.count as usize);

    let start = Instant::now();
    let filling = Schedule::per_second(args.rate).with_count(Some(args.count));
    let mut opened = 0;
    let mut no_local_port = 0;
    while let Step::StartAt(at) = filling.next(opened, start.elapsed()) {
        shared::sleep_until(start, at);
        match open(servers.next()) {
            Ok(stream) => held.push_back(stream),
            Err(RoleError::Connect { source, .. })
                if args.count_no_local_port && source.kind() == io::ErrorKind::AddrNotAvailable =>
            {
                no_local_port += 1;
            }
            Err(err) => return Err(err),
        }
        opened += 1;
    }
    shared::say(&format!(
        "held {} {:.3} {no_local_port}",
        held.len(),
        start.elapsed().as_secs_f64()
    ))?;
    if args.exit_when_held {
        // Returning closes them all, as the process exits.
        return Ok(());
    }
    if args.close_on_go {
        shared::wait_for_go()?;
        let closed = held.len();
        held.clear();
        shared::say(&format!("closed {closed}"))?;
        shared::hold_forever()
    }
    if args.churn_rate <= 0.0 {
        shared::hold_forever()
    }
    if args.churn_on_go {
        shared::wait_for_go()?;
    }

    let start = Instant::now();
    let churn = Schedule::per_second(args.churn_rate).with_duration(args.churn_duration);
    let mut replaced = 0;
    while let Step::StartAt(at) = churn.next(replaced, start.elapsed()) {
        shared::sleep_until(start, at);
        drop(held.pop_front());
        held.push_back(open(servers.next())?);
        replaced += 1;
    }
    shared::say(&format!(
        "done {} {replaced} {:.3}",
        held.len(),
        start.elapsed().as_secs_f64()
    ))?;
    // Holding on until stopped, so whoever measures sees the count stay where it is.
    shared::hold_forever()
}

fn open(server: Option<std::net::SocketAddr>) -> Result<TcpStream, RoleError> {
    // `cycle` over a non-empty list (clap requires one) never ends.
    let server = server.ok_or_else(|| RoleError::Usage("no --connect address".into()))?;
    shared::connect(server)
}
