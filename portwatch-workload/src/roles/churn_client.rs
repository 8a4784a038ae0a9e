//! `churn-client`: the other cause of port exhaustion. It opens short connections at a
//! steady rate, one request each, and closes first, so each of its sockets spends 60 s
//! in TIME_WAIT holding a local port toward the server.
//!
//! For benchmarks the shape of each connection is adjustable: how many requests (none:
//! connect and close), how long it stays open, and which side closes first (with
//! `--close-first server` the echo-server closes and keeps the TIME_WAIT). `made` counts
//! only connections that went through every step, so it is the exact number of
//! connections a tracer must account for.
use std::{
    io,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Instant,
};

use crate::{
    args::{ChurnClientArgs, CloseFirst},
    pacing::{Schedule, Step},
    shared::{self, EchoConnection, RoleError},
};

pub fn run(args: &ChurnClientArgs) -> Result<(), RoleError> {
    if args.close_first == CloseFirst::Server && args.await_peer_close {
        return Err(RoleError::Usage(
            "--await-peer-close is for --close-first client: with --close-first server, \
             the client always waits for the server's FIN"
                .into(),
        ));
    }
    if args.close_first == CloseFirst::Server && args.lifetime.is_some() {
        return Err(RoleError::Usage(
            "--lifetime is the closing side's: with --close-first server, give the \
             echo-server --lifetime"
                .into(),
        ));
    }
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
                run.fail(RoleError::Thread(err));
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
    error: Mutex<Option<RoleError>>,
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
                Err(RoleError::Connect { source, .. })
                    if source.kind() == io::ErrorKind::AddrNotAvailable =>
                {
                    self.no_local_port.fetch_add(1, Ordering::Relaxed)
                }
                Err(err) => return self.fail(err),
            };
        }
    }

    /// Connect, the requests (one by default), and close: first by default, so that the
    /// active close leaves this side's socket in TIME_WAIT; or after the server's FIN.
    fn connection(&self, slot: u64) -> Result<(), RoleError> {
        let opened = Instant::now();
        let mut connection = EchoConnection::open(self.args.connect)?;
        for request in 0..self.args.requests {
            // The first request keeps the text it always had; later ones are numbered.
            let line = match request {
                0 => format!("churn {slot}"),
                n => format!("churn {slot} {n}"),
            };
            connection.exchange(&line)?;
        }
        match self.args.close_first {
            CloseFirst::Client if self.args.await_peer_close => {
                connection.shut_down_sending()?;
                connection.wait_for_close()
            }
            CloseFirst::Client => {
                if let Some(lifetime) = self.args.lifetime {
                    shared::sleep_until(opened, lifetime);
                }
                Ok(())
            }
            CloseFirst::Server => connection.wait_for_close(),
        }
    }

    /// Keeps the first error and stops the other threads.
    fn fail(&self, err: RoleError) {
        self.failed.store(true, Ordering::Relaxed);
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        error.get_or_insert(err);
    }
}
