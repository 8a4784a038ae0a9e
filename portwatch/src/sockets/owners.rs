//! Socket owners: who owns a socket, and each owner stored once for the socket table.
//!
//! A host with 100,000 connections has a handful of owners: storing a 40-byte owner in
//! every socket made it a third of each table entry. Sockets keep a 4-byte id instead.
//! Owners no socket refers to any more are dropped by a compaction, run when the list
//! has doubled since the last one, so the list stays proportional to the owners in use
//! however many processes come and go.
use std::num::NonZeroU32;

use rustc_hash::FxHashMap;

use crate::{
    event::{Comm, OwnerSource},
    process::Process,
};

/// Who owns a socket, as far as portwatch knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketOwner {
    /// The process, in the life the socket table knew when it learned the owner.
    pub process: Process,
    pub comm: Comm,
    pub cgroup_id: u64,
    pub source: OwnerSource,
}

/// An owner in [`Owners`]. Only meaningful with the `Owners` that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerId(NonZeroU32);

#[derive(Debug, Default)]
pub struct Owners {
    list: Vec<SocketOwner>,
    ids: FxHashMap<SocketOwner, OwnerId>,
    /// The list's length after the last compaction.
    compacted_len: usize,
}

/// Compactions wait until at least this many owners were added since the last one.
const COMPACT_SLACK: usize = 1024;

impl Owners {
    /// The id of `owner`, adding it if it is new.
    pub fn intern(&mut self, owner: SocketOwner) -> OwnerId {
        if let Some(&id) = self.ids.get(&owner) {
            return id;
        }
        self.list.push(owner);
        let id = OwnerId(id_for(self.list.len()));
        self.ids.insert(owner, id);
        id
    }

    pub fn get(&self, id: OwnerId) -> SocketOwner {
        self.list[id.0.get() as usize - 1]
    }

    /// Whether enough owners were added since the last compaction to run one.
    pub fn wants_compaction(&self) -> bool {
        self.list.len() > 2 * self.compacted_len + COMPACT_SLACK
    }

    /// Keeps only the owners `in_use` refers to, and renumbers those ids.
    pub fn compact<'a>(&mut self, in_use: impl Iterator<Item = &'a mut OwnerId>) {
        let mut list = Vec::new();
        let mut ids = FxHashMap::default();
        for id in in_use {
            let owner = self.get(*id);
            *id = *ids.entry(owner).or_insert_with(|| {
                list.push(owner);
                OwnerId(id_for(list.len()))
            });
        }
        self.compacted_len = list.len();
        self.list = list;
        self.ids = ids;
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }
}

/// Ids count from 1, so that `Option<OwnerId>` takes no more room than the id.
fn id_for(len: usize) -> NonZeroU32 {
    u32::try_from(len)
        .ok()
        .and_then(NonZeroU32::new)
        .expect("fewer than 4 billion distinct owners between compactions")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> SocketOwner {
        SocketOwner {
            process: Process::after_exits(pid, 0),
            comm: Comm::new("x"),
            cgroup_id: 0,
            source: OwnerSource::Connect,
        }
    }

    #[test]
    fn one_id_per_owner() {
        let mut owners = Owners::default();
        let a = owners.intern(owner(1));
        let b = owners.intern(owner(2));
        assert_ne!(a, b);
        assert_eq!(owners.intern(owner(1)), a);
        assert_eq!(owners.get(b), owner(2));
        assert_eq!(size_of::<Option<OwnerId>>(), 4);
    }

    #[test]
    fn compaction_keeps_owners_in_use_under_new_ids() {
        let mut owners = Owners::default();
        let mut held: Vec<OwnerId> = (0..3000).map(|pid| owners.intern(owner(pid))).collect();
        assert!(owners.wants_compaction());
        // Only every hundredth owner is still referred to (twice).
        held.retain(|id| owners.get(*id).process.pid % 100 == 0);
        let mut twice = held.clone();
        owners.compact(held.iter_mut().chain(twice.iter_mut()));
        assert_eq!(owners.len(), 30);
        assert!(!owners.wants_compaction());
        for (i, id) in held.iter().enumerate() {
            assert_eq!(owners.get(*id).process.pid, i as u32 * 100);
            assert_eq!(*id, twice[i]);
        }
        // New owners still get their own ids, and known ones theirs.
        assert_eq!(owners.intern(owner(100)), held[1]);
        let seven = owners.intern(owner(7));
        assert_eq!(owners.get(seven), owner(7));
    }
}
