//! Wakes the screen's thread from its wait at once: to stop (the tracing loop ended,
//! SIGTERM, the replay's signals) or to look at the terminal again (a resize).
//!
//! Without it the screen has to wake on a timer to check (it did, ten times a second),
//! and top is meant to stay attached to busy hosts, where every wakeup can preempt a
//! thread of the workload. Now the screen wakes only to draw a frame, for a key, for a
//! resize or to stop; paused, not at all.
use std::{
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd as _, BorrowedFd},
        unix::net::UnixStream,
    },
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinHandle,
};

pub struct Bell {
    stopped: AtomicBool,
    ring: UnixStream,
    hear: UnixStream,
}

impl Bell {
    pub fn new() -> io::Result<Bell> {
        let (ring, hear) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        hear.set_nonblocking(true)?;
        Ok(Bell {
            stopped: AtomicBool::new(false),
            ring,
            hear,
        })
    }

    /// Wakes the screen's thread to look at the terminal again.
    pub fn ring(&self) {
        // Would block only with the socket's buffer full of earlier rings, which still
        // wake the screen: nothing is lost.
        let _ = (&self.ring).write(&[1]);
    }

    /// Tells the screen's thread to end, and wakes it.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.ring();
    }

    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Readable while rung: for the screen's poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.hear.as_fd()
    }

    /// Takes the rings heard so far, so that the next wait sleeps again.
    pub fn quiet(&self) {
        let mut rings = [0u8; 64];
        while matches!((&self.hear).read(&mut rings), Ok(read) if read > 0) {}
    }
}

/// Rings `bell` at every resize of the terminal (SIGWINCH) until the task is aborted.
/// The signal may land on any thread; crossterm's own handler has queued the resize by
/// the time the screen, woken, asks crossterm for events.
pub fn ring_on_resize(bell: Arc<Bell>) -> io::Result<JoinHandle<()>> {
    let mut resized = signal(SignalKind::window_change())?;
    Ok(tokio::spawn(async move {
        while resized.recv().await.is_some() {
            bell.ring();
        }
    }))
}
