//! Reads ring-buffer records as they arrive, without polling.
//!
//! The kernel wakes the ring buffer's epoll waiters only when the consumer has caught up
//! (its default adaptive wakeup), so under load one wakeup carries many records: each
//! readiness notification drains the whole ring in one batch.
use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged until the
        // RingBuf is dropped, and the AsyncFd owns the RingBuf, so it is dropped first.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(EventReader { ring })
    }

    /// Waits for records, then passes every record in the ring to `handle`. Returns how
    /// many it passed (possibly 0 after a spurious wakeup).
    pub async fn read_batch(&mut self, handle: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let count = drain_ring(guard.get_inner_mut(), handle);
        // Clear readiness only after the ring was seen empty: a record committed after
        // our last read re-arms epoll, so nothing is left waiting.
        guard.clear_ready();
        Ok(count)
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
