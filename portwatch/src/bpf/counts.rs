//! Reads the counting path's maps: `FLOWS` (monotonic counts per owner and
//! destination, of which the reader hands out what changed since its last reading) and
//! `CLOSE_WAITS` (the sockets in CLOSE_WAIT now).
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use portwatch_common::{CloseWaitEntry, FlowCounts, FlowKey, names};
use rustc_hash::FxHashMap;

/// Readings (seconds) a flow may stay unchanged before it leaves the kernel's map: a
/// host that starts a process per request makes new flows all day, and a full map
/// costs records (see portwatch-ebpf's `counting`).
const IDLE_READINGS: u16 = 60;

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (include/uapi/linux/bpf.h); hash maps since 5.14.
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// A flow's counts at the last reading, and for how many readings they have not
/// changed.
#[derive(Clone, Copy)]
struct Last {
    counts: FlowCounts,
    idle: u16,
}

/// One changed flow: its key, its counts now, and at the previous reading (all zero for
/// a flow new since then).
pub type FlowReading = (FlowKey, FlowCounts, FlowCounts);

pub struct CountReader {
    flows: BpfHashMap<MapData, FlowKey, FlowCounts>,
    /// `flows`' descriptor, for the deletion aya 0.14 does not offer.
    flows_fd: OwnedFd,
    close_waits: BpfHashMap<MapData, u64, CloseWaitEntry>,
    /// Every flow's counts at the last reading.
    last: FxHashMap<FlowKey, Last>,
    /// Idle flows found by the last reading, to delete.
    idle: Vec<FlowKey>,
    /// False once the kernel said it cannot look up and delete in one step (before
    /// 5.14): idle flows then stay, and a full map sends records instead.
    deletes: bool,
    idle_readings: u16,
}

impl CountReader {
    pub(super) fn new(ebpf: &mut Ebpf) -> Result<CountReader> {
        let flows = ebpf.take_map(names::FLOWS).context("no FLOWS map")?;
        let flows_fd = match &flows {
            aya::maps::Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned()?,
            _ => anyhow::bail!("FLOWS is not a hash map"),
        };
        let close_waits = ebpf
            .take_map(names::CLOSE_WAITS)
            .context("no CLOSE_WAITS map")?;
        Ok(CountReader {
            flows: BpfHashMap::try_from(flows)?,
            flows_fd,
            close_waits: BpfHashMap::try_from(close_waits)?,
            last: FxHashMap::default(),
            idle: Vec::new(),
            deletes: true,
            idle_readings: IDLE_READINGS,
        })
    }

    /// The flows whose counts changed since the last call, into `out` (cleared first).
    ///
    /// Each is read with one lookup while the kernel may be adding to it: the counts
    /// are 8-byte words, each read whole, so a reading may have one count ahead of
    /// another, never a torn one; whatever lands after it shows in the next reading.
    ///
    /// Flows unchanged for [`IDLE_READINGS`] are then deleted from the kernel's map in
    /// one step with their last counts (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`), so that an
    /// add landing between the reading and the deletion is not lost: it is in the
    /// counts returned, or it made the flow anew, from zero.
    pub fn read_flows(&mut self, out: &mut Vec<FlowReading>) -> Result<()> {
        out.clear();
        self.idle.clear();
        for item in self.flows.iter() {
            let (key, now) = item.context("reading the kernel's flow counts")?;
            let last = self.last.entry(key).or_insert(Last {
                counts: FlowCounts::ZERO,
                idle: 0,
            });
            if counts_differ(&now, &last.counts) || now.created_ns != last.counts.created_ns {
                out.push((key, now, before_of(&now, &last.counts)));
                *last = Last {
                    counts: now,
                    idle: 0,
                };
            } else {
                last.idle = last.idle.saturating_add(1);
                if last.idle >= self.idle_readings {
                    self.idle.push(key);
                }
            }
        }
        // After the walk: deleting during one restarts the kernel's iteration.
        if self.deletes {
            for key in std::mem::take(&mut self.idle) {
                let Some(last) = self.last.get(&key).copied() else {
                    continue;
                };
                match lookup_and_delete(self.flows_fd.as_fd(), &key) {
                    Ok(now) => {
                        if counts_differ(&now, &last.counts) {
                            out.push((key, now, before_of(&now, &last.counts)));
                        }
                        self.last.remove(&key);
                    }
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                        self.last.remove(&key);
                    }
                    // EINVAL or ENOTSUPP (524) before 5.14: keep them, stop trying.
                    Err(_) => self.deletes = false,
                }
            }
        }
        Ok(())
    }

    /// Deletes flows unchanged for `readings` readings rather than [`IDLE_READINGS`]:
    /// for tests, which cannot wait a minute.
    pub fn set_idle_readings(&mut self, readings: u16) {
        self.idle_readings = readings.max(1);
    }

    /// Whether this kernel deletes idle flows (5.14 or newer).
    pub fn deletes_idle_flows(&self) -> bool {
        self.deletes
    }

    /// How many flows of thread group `tgid` the kernel's map holds now.
    pub fn kernel_flows_of(&self, tgid: u32) -> usize {
        self.flows
            .keys()
            .filter(|key| key.as_ref().is_ok_and(|key| key.tgid == tgid))
            .count()
    }

    /// How many flows the kernel holds now.
    pub fn flows_len(&self) -> usize {
        self.last.len()
    }

    /// Every socket in CLOSE_WAIT now, into `out` (cleared first).
    pub fn read_close_waits(&self, out: &mut Vec<(u64, CloseWaitEntry)>) -> Result<()> {
        out.clear();
        for item in self.close_waits.iter() {
            match item {
                Ok(entry) => out.push(entry),
                // Gone between finding its key and reading it: it left CLOSE_WAIT.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("reading the kernel's CLOSE_WAIT sockets"),
            }
        }
        Ok(())
    }
}

/// What `now` is to be compared with: `last`, or zero for a flow the kernel made anew
/// (deleted as idle, then used again) since.
fn before_of(now: &FlowCounts, last: &FlowCounts) -> FlowCounts {
    if now.created_ns == last.created_ns {
        *last
    } else {
        FlowCounts::ZERO
    }
}

/// Looks a flow up and deletes it in one step; its counts at deletion.
fn lookup_and_delete(map: BorrowedFd<'_>, key: &FlowKey) -> io::Result<FlowCounts> {
    /// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = FlowCounts::ZERO;
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(&mut value) as u64,
        flags: 0,
    };
    // SAFETY: the bpf() system call reads `attr` (its size passed with it) and writes
    // one value of the map's value size (size_of::<FlowCounts>(), which the map was
    // created with) to `value`; `key` is one key of the map's key size. Both outlive
    // the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_ref(&attr),
            size_of::<ElemAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

fn counts_differ(a: &FlowCounts, b: &FlowCounts) -> bool {
    a.opened != b.opened
        || a.closed != b.closed
        || a.closed_first != b.closed_first
        || a.peer_closed_first != b.peer_closed_first
        || a.close_wait_left != b.close_wait_left
        || a.time_wait != b.time_wait
}
