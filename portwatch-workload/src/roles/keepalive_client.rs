//! `keepalive-client`: the healthy way to talk to a server. One connection, kept open,
//! one request per interval: no TIME_WAIT churn, no CLOSE_WAIT.
use std::time::Instant;

use crate::{
    args::KeepaliveClientArgs,
    pacing::{Schedule, Step},
    shared::{self, EchoConnection, RoleError},
};

pub fn run(args: &KeepaliveClientArgs) -> Result<(), RoleError> {
    let schedule = Schedule::every(args.interval).with_duration(args.duration);
    let mut connection = EchoConnection::open(args.connect)?;
    shared::say_ready(args.connect.port())?;

    let start = Instant::now();
    let mut requests = 0;
    while let Step::StartAt(at) = schedule.next(requests, start.elapsed()) {
        shared::sleep_until(start, at);
        connection.exchange(&format!("keepalive {requests}"))?;
        requests += 1;
    }
    if let Some(end) = schedule.end() {
        shared::sleep_until(start, end);
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The one close of the run: the only TIME_WAIT this client ever leaves.
    drop(connection);
    shared::say(&format!("done {requests} {elapsed:.3}"))
}
