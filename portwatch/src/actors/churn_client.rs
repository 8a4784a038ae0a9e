//! `churn-client`: the other cause of port exhaustion. It opens short connections at a
//! steady rate, one request each, and closes first, so each of its sockets spends 60 s
//! in TIME_WAIT holding a local port toward the server.
use std::{
    io,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Instant,
};

use super::{
    pacing::{Schedule, Step},
    shared::{self, ActorError, EchoConnection},
};
use crate::cli::ChurnClientArgs;

pub fn run(args: &ChurnClientArgs) -> Result<(), ActorError> {
    let schedule = Schedule::per_second(args.rate)
        .with_count(args.count)
        .with_duration(args.duration);
    shared::say_ready(args.connect.port())?;
    let run = Run {
        args,
        schedule,
        start: Instant::now(),
        next_slot: AtomicU64::new(0),
        made: AtomicU64::new(0),
        no_local_port: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    thread::scope(|scope| {
        for _ in 0..args.threads {
            let started = thread::Builder::new()
                .name("churn-client".into())
                .spawn_scoped(scope, || run.work());
            if let Err(err) = started {
                run.fail(ActorError::Thread(err));
                break;
            }
        }
    });
    if let Some(err) = run.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err);
    }

    // A paced run lasts to the end of its last slot, so made / elapsed is the rate.
    if let Some(end) = schedule.end() {
        shared::sleep_until(run.start, end);
    }
    let elapsed = run.start.elapsed().as_secs_f64();
    shared::say(&format!(
        "done {} {elapsed:.3} {}",
        run.made.into_inner(),
        run.no_local_port.into_inner()
    ))
}

/// One run, shared by its threads: they take slots in turn from `next_slot`.
struct Run<'a> {
    args: &'a ChurnClientArgs,
    schedule: Schedule,
    start: Instant,
    next_slot: AtomicU64,
    made: AtomicU64,
    /// Connects refused for want of a free local port (EADDRNOTAVAIL): the exhaustion this
    /// client exists to cause. They use up their slot and the run goes on.
    no_local_port: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<ActorError>>,
}

impl Run<'_> {
    fn work(&self) {
        while !self.failed.load(Ordering::Relaxed) {
            let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
            let Step::StartAt(at) = self.schedule.next(slot, self.start.elapsed()) else {
                return;
            };
            shared::sleep_until(self.start, at);
            match self.connection(slot) {
                Ok(()) => self.made.fetch_add(1, Ordering::Relaxed),
                Err(ActorError::Connect { source, .. })
                    if source.kind() == io::ErrorKind::AddrNotAvailable =>
                {
                    self.no_local_port.fetch_add(1, Ordering::Relaxed)
                }
                Err(err) => return self.fail(err),
            };
        }
    }

    /// Connect, one request, and close first: the active close leaves this side's socket
    /// in TIME_WAIT.
    fn connection(&self, slot: u64) -> Result<(), ActorError> {
        let mut connection = EchoConnection::open(self.args.connect)?;
        connection.exchange(&format!("churn {slot}"))
    }

    /// Keeps the first error and stops the other threads.
    fn fail(&self, err: ActorError) {
        self.failed.store(true, Ordering::Relaxed);
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        error.get_or_insert(err);
    }
}
