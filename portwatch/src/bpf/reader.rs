//! Reads ring-buffer records as they arrive.
//!
//! The eBPF programs submit records without waking the reader until an eighth of the
//! ring is waiting (`WAKEUP_BYTES`): a wakeup per record would cost the traced tasks
//! more than the tracing itself. So the reader drains the ring every `DRAIN_EVERY`,
//! and at once when the kernel does wake it (a burst). Each drain takes every record
//! in the ring, in one batch.
use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Interval, MissedTickBehavior},
};

/// The longest a record waits in the ring before portwatch sees it, when the kernel
/// does not wake the reader sooner.
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    tick: Interval,
}

impl EventReader {
    /// Must be called within a tokio runtime (it starts the drain timer).
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged until the
        // RingBuf is dropped, and the AsyncFd owns the RingBuf, so it is dropped first.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        // A reader that was busy does not need the ticks it missed.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(EventReader { ring, tick })
    }

    /// Waits for the next drain (the timer, or a wakeup from the kernel), then passes
    /// every record in the ring to `handle`. Returns how many it passed (possibly 0).
    pub async fn read_batch(&mut self, handle: impl FnMut(&[u8])) -> io::Result<usize> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard?;
                let count = drain_ring(guard.get_inner_mut(), handle);
                // Clear readiness only after the ring was seen empty: a wakeup for a
                // record committed after our last read re-arms epoll.
                guard.clear_ready();
                Ok(count)
            }
            _ = self.tick.tick() => Ok(drain_ring(self.ring.get_mut(), handle)),
        }
    }

    /// Passes every record already in the ring to `handle`, without waiting.
    pub fn drain(&mut self, handle: impl FnMut(&[u8])) -> usize {
        drain_ring(self.ring.get_mut(), handle)
    }
}

fn drain_ring(ring: &mut RingBuf<MapData>, mut handle: impl FnMut(&[u8])) -> usize {
    let mut count = 0;
    while let Some(record) = ring.next() {
        handle(&record);
        count += 1;
    }
    count
}
