//! `hold-client`: the client side of a host with many live connections. It opens
//! `--count` connections, spread over its `--connect` servers (each server address has
//! its own ephemeral-port budget, so several of them get past the port range), and
//! holds them. With `--churn-rate` it then keeps the count constant while replacing
//! connections: close the oldest (first, so the TIME_WAIT is this side's), open a new
//! one, at that rate.
use std::{collections::VecDeque, net::TcpStream, time::Instant};

use super::{
    pacing::{Schedule, Step},
    shared::{self, ActorError},
};
use crate::cli::HoldClientArgs;

pub fn run(args: &HoldClientArgs) -> Result<(), ActorError> {
    shared::raise_open_files_limit();
    shared::say_ready(args.connect[0].port())?;
    let mut servers = args.connect.iter().copied().cycle();
    let mut held = VecDeque::with_capacity(args.count as usize);

    let start = Instant::now();
    let filling = Schedule::per_second(args.rate).with_count(Some(args.count));
    let mut opened = 0;
    while let Step::StartAt(at) = filling.next(opened, start.elapsed()) {
        shared::sleep_until(start, at);
        held.push_back(open(servers.next())?);
        opened += 1;
    }
    shared::say(&format!(
        "held {} {:.3}",
        held.len(),
        start.elapsed().as_secs_f64()
    ))?;
    if args.churn_rate <= 0.0 {
        shared::hold_forever()
    }
    if args.churn_on_go {
        shared::wait_for_go();
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

fn open(server: Option<std::net::SocketAddr>) -> Result<TcpStream, ActorError> {
    // `cycle` over a non-empty list (clap requires one) never ends.
    let server = server.ok_or_else(|| ActorError::Usage("no --connect address".into()))?;
    shared::connect(server)
}
