//! One module per subcommand: each wires the tracer, the model and an output together.
pub mod demo;
pub mod live_feed;
pub mod record;
pub mod report;
pub mod serve;
pub mod snapshot;
pub mod startup;
pub mod stream;
pub mod top;
pub mod trace;

use std::time::Duration;

use portwatch_common::Collect;

use crate::bpf::{Features, KernelPath};

/// Tells the user, once, which optional hooks this kernel cannot serve and what that
/// costs. The counting path uses neither syscall hook.
pub fn warn_about_missing_features(features: &Features, path: KernelPath) {
    if path.collect == Collect::Counts {
        if let Err(why) = &features.exit_hook {
            eprintln!("portwatch: warning: {why}; owners that exit are not marked as such");
        }
        return;
    }
    if let Err(why) = &features.accept_hook {
        eprintln!(
            "portwatch: warning: {why}; accepted sockets keep their listener's owner until \
             the accepting process acts on them"
        );
    }
    if let Err(why) = &features.connect_hook {
        eprintln!(
            "portwatch: warning: {why}; connects failing for want of a local port \
             (EADDRNOTAVAIL) are not counted"
        );
    }
    if let Err(why) = &features.exit_hook {
        eprintln!("portwatch: warning: {why}; owners that exit are not marked as such");
    }
}

/// The user's ways to stop a run: Ctrl-C, SIGTERM, SIGHUP, or a duration running out.
///
/// SIGHUP stops the run like Ctrl-C rather than killing the process (its default): a
/// terminal or SSH session that goes away must still leave the report or recording
/// written where its output was redirected, and the eBPF programs detached in order.
///
/// Install it before telling the user portwatch is running: until the handlers are in
/// place, a signal would kill the process before it can detach and report.
pub struct StopSignal {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    deadline: Option<tokio::time::Instant>,
}

impl StopSignal {
    pub fn install(duration: Option<Duration>) -> std::io::Result<StopSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
            deadline: duration.map(|duration| tokio::time::Instant::now() + duration),
        })
    }

    /// Resolves when a stop is requested.
    pub async fn requested(&mut self) {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
            _ = self.hangup.recv() => {}
            () = deadline => {}
        }
    }
}
