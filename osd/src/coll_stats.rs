//! What each collection holds — objects, their bytes, the blocks they take — for the OSD to
//! report per pool (`cairn df`). Kept in memory only: mounting reads every object record to
//! rebuild the allocator anyway, and counts them on the way; each committed transaction then
//! moves the counts by what it changed. A crash loses nothing the next mount does not count
//! again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::onode::Onode;
use crate::BLOCK_BYTES;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectionStats {
    pub objects: u64,
    /// The objects' sizes (holes included: what a reader sees).
    pub bytes: u64,
    /// The blocks their data takes on the device (holes excluded).
    pub allocated_bytes: u64,
}

impl CollectionStats {
    pub fn of(onode: &Onode) -> CollectionStats {
        CollectionStats {
            objects: 1,
            bytes: onode.size,
            allocated_bytes: onode.extents.iter().map(|e| e.len()).sum::<u64>()
                * BLOCK_BYTES as u64,
        }
    }

    fn add(&mut self, other: &CollectionStats) {
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.allocated_bytes += other.allocated_bytes;
    }

    /// Never below zero: counts that were right before a change stay right after it, so a
    /// subtraction that would go under zero can only come from a bug, and clamps.
    fn subtract(&mut self, other: &CollectionStats) {
        self.objects = self.objects.saturating_sub(other.objects);
        self.bytes = self.bytes.saturating_sub(other.bytes);
        self.allocated_bytes = self.allocated_bytes.saturating_sub(other.allocated_bytes);
    }
}

/// What one transaction changes in one collection: the objects it leaves (as they are after
/// it) and the objects it replaced (as they were before it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsChange {
    pub added: CollectionStats,
    pub removed: CollectionStats,
}

impl StatsChange {
    /// Object `before` (committed state; `None`: absent) becomes `after`.
    pub fn record(&mut self, before: Option<&Onode>, after: Option<&Onode>) {
        if let Some(o) = before {
            self.removed.add(&CollectionStats::of(o));
        }
        if let Some(o) = after {
            self.added.add(&CollectionStats::of(o));
        }
    }
}

#[derive(Default)]
pub struct StatsTable {
    all: Mutex<HashMap<String, CollectionStats>>,
}

impl StatsTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CollectionStats>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At mount: a collection (counted empty until its objects are).
    pub fn count_collection(&self, coll: &str) {
        self.lock().entry(coll.to_string()).or_default();
    }

    /// At mount: one object record.
    pub fn count_object(&self, coll: &str, onode: &Onode) {
        self.lock()
            .entry(coll.to_string())
            .or_default()
            .add(&CollectionStats::of(onode));
    }

    /// After a commit: the objects it changed, then the collections it created (`true`) or
    /// removed (`false`; only an empty collection can be).
    pub fn committed(
        &self,
        changes: BTreeMap<String, StatsChange>,
        collections: impl Iterator<Item = (String, bool)>,
    ) {
        let mut all = self.lock();
        for (coll, change) in changes {
            let stats = all.entry(coll).or_default();
            stats.add(&change.added);
            stats.subtract(&change.removed);
        }
        for (coll, exists) in collections {
            if exists {
                all.entry(coll).or_default();
            } else {
                all.remove(&coll);
            }
        }
    }

    /// Every collection's counts, by name.
    pub fn snapshot(&self) -> BTreeMap<String, CollectionStats> {
        self.lock().iter().map(|(c, s)| (c.clone(), *s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extents::Extent;

    fn onode(size: u64, blocks: &[(u64, u64)]) -> Onode {
        Onode {
            size,
            extents: crate::extents::ExtentMap::from_extents(blocks.iter().map(|(l, n)| Extent {
                lblock: *l,
                pblock: 100 + l,
                csums: vec![0; *n as usize],
            })),
            attrs: Default::default(),
        }
    }

    #[test]
    fn a_change_replaces_what_the_object_was_with_what_it_is() {
        let table = StatsTable::default();
        table.count_collection("c");
        let sparse = onode(10 * BLOCK_BYTES as u64, &[(0, 1), (9, 1)]);
        table.count_object("c", &sparse);
        let block = BLOCK_BYTES as u64;
        let expect = |objects, bytes, allocated| CollectionStats {
            objects,
            bytes,
            allocated_bytes: allocated,
        };
        assert_eq!(table.snapshot()["c"], expect(1, 10 * block, 2 * block));

        let mut change = StatsChange::default();
        let truncated = onode(block, &[(0, 1)]);
        change.record(Some(&sparse), Some(&truncated));
        change.record(None, Some(&onode(3, &[(0, 1)])));
        table.committed(
            BTreeMap::from([("c".to_string(), change)]),
            std::iter::empty(),
        );
        assert_eq!(table.snapshot()["c"], expect(2, block + 3, 2 * block));

        let mut change = StatsChange::default();
        change.record(Some(&truncated), None);
        change.record(Some(&onode(3, &[(0, 1)])), None);
        table.committed(
            BTreeMap::from([("c".to_string(), change)]),
            [("c".to_string(), false), ("d".to_string(), true)].into_iter(),
        );
        assert_eq!(
            table.snapshot(),
            BTreeMap::from([("d".to_string(), CollectionStats::default())])
        );
    }
}
