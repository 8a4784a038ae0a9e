//! Reads ring-buffer records as they arrive.
//!
//! The reader is awake or asleep:
//! - awake, while records keep coming: the eBPF programs submit them without waking the
//!   reader (a wakeup per record would cost the traced tasks more than the tracing
//!   itself), and the reader drains the ring every `DRAIN_EVERY`, or at once when the
//!   kernel wakes it because an eighth of the ring is waiting (`WAKEUP_BYTES`);
//! - asleep, once a drain found the ring empty: it tells the kernel so (`READER` map),
//!   and the next record wakes it. An idle host costs it no timer ticks.
//!
//! Each drain takes every record in the ring, in one batch.
use std::{
    io,
    sync::atomic::{Ordering, fence},
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use portwatch_common::READER_ASLEEP;
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Interval, MissedTickBehavior},
};

/// The longest a record waits in the ring before portwatch sees it while records keep
/// coming (and the kernel does not wake the reader sooner).
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// How often an asleep reader looks at the ring anyway. The kernel decides whether to
/// wake the reader when it submits a record; one submitted in the instant the reader
/// fell asleep may have been decided before the reader said so, and would otherwise
/// wait for the next record. Not a poll for records: one look a second while idle.
pub const ASLEEP_BACKSTOP: Duration = Duration::from_secs(1);

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// `READER[0]`: whether the kernel should wake us for every record.
    state: Array<MapData, u32>,
    tick: Interval,
    backstop: Duration,
    asleep: bool,
}

impl EventReader {
    /// Must be called within a tokio runtime (it starts the drain timer).
    pub(super) fn new(ring: RingBuf<MapData>, state: Array<MapData, u32>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map's fd, which stays open and unchanged until the
        // RingBuf is dropped, and the AsyncFd owns the RingBuf, so it is dropped first.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        // A reader that was busy does not need the ticks it missed.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(EventReader {
            ring,
            state,
            tick,
            backstop: ASLEEP_BACKSTOP,
            asleep: false,
        })
    }

    /// Waits for the next drain (the timer while awake, a wakeup from the kernel), then
    /// passes every record in the ring to `handle`. Returns how many it passed (possibly
    /// 0).
    pub async fn read_batch(&mut self, mut handle: impl FnMut(&[u8])) -> io::Result<usize> {
        if self.asleep {
            let woken = tokio::select! {
                guard = self.ring.readable_mut() => {
                    guard?.clear_ready();
                    true
                }
                () = tokio::time::sleep(self.backstop) => false,
            };
            // Awake before draining: records that arrive meanwhile wake us again, which
            // costs a little, rather than waiting unseen.
            if woken {
                self.wake()?;
            }
            let count = drain_ring(self.ring.get_mut(), &mut handle);
            if !woken && count > 0 {
                self.wake()?;
            }
            return Ok(count);
        }
        tokio::select! {
            guard = self.ring.readable_mut() => {
                let mut guard = guard?;
                let count = drain_ring(guard.get_inner_mut(), handle);
                // Clear readiness only after the ring was seen empty: a wakeup for a
                // record committed after our last read re-arms epoll.
                guard.clear_ready();
                Ok(count)
            }
            _ = self.tick.tick() => {
                let count = drain_ring(self.ring.get_mut(), &mut handle);
                if count > 0 {
                    return Ok(count);
                }
                self.fall_asleep(handle)
            }
        }
    }

    /// Tells the kernel to wake us for the next record, then looks once more: a record
    /// submitted before the kernel saw the change came without a wakeup. Stays awake if
    /// there was one, and returns how many records it passed to `handle`. `read_batch`
    /// calls it when a drain found the ring empty; public for tests.
    pub fn fall_asleep(&mut self, handle: impl FnMut(&[u8])) -> io::Result<usize> {
        self.set_asleep(true)?;
        // The map update is a store made by the kernel in our system call; the ring's
        // positions are read from shared memory: keep the read after the store.
        fence(Ordering::SeqCst);
        let count = drain_ring(self.ring.get_mut(), handle);
        if count > 0 {
            self.set_asleep(false)?;
        }
        Ok(count)
    }

    fn wake(&mut self) -> io::Result<()> {
        self.set_asleep(false)?;
        self.tick.reset();
        Ok(())
    }

    fn set_asleep(&mut self, asleep: bool) -> io::Result<()> {
        self.state
            .set(0, if asleep { READER_ASLEEP } else { 0 }, 0)
            .map_err(io::Error::other)?;
        self.asleep = asleep;
        Ok(())
    }

    /// Whether the reader waits for the kernel to wake it (for tests).
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Replaces [`ASLEEP_BACKSTOP`], so a test can tell a kernel wakeup from the
    /// backstop.
    pub fn set_backstop(&mut self, backstop: Duration) {
        self.backstop = backstop;
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
