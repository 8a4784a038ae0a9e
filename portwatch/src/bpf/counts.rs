//! Reads the counting path's maps: `FLOWS` (monotonic counts per owner and
//! destination, of which the reader hands out what changed since its last reading) and
//! `CLOSE_WAITS` (the sockets in CLOSE_WAIT now).
use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use portwatch_common::{CloseWaitEntry, FlowCounts, FlowKey, names};
use rustc_hash::FxHashMap;

/// One changed flow: its key, its counts now, and at the previous reading (all zero for
/// a flow new since then).
pub type FlowReading = (FlowKey, FlowCounts, FlowCounts);

pub struct CountReader {
    flows: BpfHashMap<MapData, FlowKey, FlowCounts>,
    close_waits: BpfHashMap<MapData, u64, CloseWaitEntry>,
    /// Every flow's counts at the last reading.
    last: FxHashMap<FlowKey, FlowCounts>,
}

impl CountReader {
    pub(super) fn new(ebpf: &mut Ebpf) -> Result<CountReader> {
        let flows = ebpf.take_map(names::FLOWS).context("no FLOWS map")?;
        let close_waits = ebpf
            .take_map(names::CLOSE_WAITS)
            .context("no CLOSE_WAITS map")?;
        Ok(CountReader {
            flows: BpfHashMap::try_from(flows)?,
            close_waits: BpfHashMap::try_from(close_waits)?,
            last: FxHashMap::default(),
        })
    }

    /// The flows whose counts changed since the last call, into `out` (cleared first).
    ///
    /// Each is read with one lookup while the kernel may be adding to it: the counts
    /// are 8-byte words, each read whole, so a reading may have one count ahead of
    /// another, never a torn one; whatever lands after it shows in the next reading.
    pub fn read_flows(&mut self, out: &mut Vec<FlowReading>) -> Result<()> {
        out.clear();
        for item in self.flows.iter() {
            let (key, now) = item.context("reading the kernel's flow counts")?;
            let before = self.last.entry(key).or_insert(FlowCounts::ZERO);
            if counts_differ(&now, before) {
                out.push((key, now, *before));
                *before = now;
            }
        }
        Ok(())
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

fn counts_differ(a: &FlowCounts, b: &FlowCounts) -> bool {
    a.opened != b.opened
        || a.closed != b.closed
        || a.closed_first != b.closed_first
        || a.peer_closed_first != b.peer_closed_first
        || a.close_wait_left != b.close_wait_left
        || a.time_wait != b.time_wait
}
