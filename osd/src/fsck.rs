//! Consistency check of a mounted store: metadata (onodes decode, belong to a collection,
//! extents fit the object and the device, no block referenced twice, no orphan omap), the
//! allocator against the extents (nothing leaked, nothing double-booked), the collections'
//! counts against their objects, and with `deep` every block's checksum.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::aligned::AlignedBuf;
use crate::allocator::{Allocator, Run};
use crate::coll_stats::StatsTable;
use crate::error::{Result, StoreError};
use crate::extents::Extent;
use crate::io::IoOp;
use crate::onode::{extent_shard_prefix_of, split_object_key, Onode};
use crate::store::{extent_shards, verify, ObjectStore};
use crate::BLOCK_BYTES;

/// A damaged range of an object found by a deep check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Damage {
    pub collection: String,
    pub object: String,
    pub offset: u64,
    pub length: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub collections: u64,
    pub objects: u64,
    pub omap_entries: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
    pub errors: Vec<String>,
    pub damaged: Vec<Damage>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.damaged.is_empty()
    }
}

impl ObjectStore {
    pub fn fsck(&self, deep: bool) -> Result<FsckReport> {
        // Blocks still queued for their in-place write would read as damaged.
        self.deferred.drain()?;
        let mut report = FsckReport::default();
        let collections: BTreeSet<String> = self.list_collections()?.into_iter().collect();
        report.collections = collections.len() as u64;
        let mut objects = BTreeSet::new();
        let counted = StatsTable::default();
        for coll in &collections {
            counted.count_collection(coll);
        }
        let mut used: Vec<Run> = Vec::new();
        let mut to_verify: Vec<(String, String, Extent)> = Vec::new();
        for item in self.db.prefix_iterator(b"O") {
            let (k, v) = item?;
            if !k.starts_with(b"O") {
                break;
            }
            let (coll, oid) = split_object_key(&k);
            report.objects += 1;
            objects.insert((coll.clone(), oid.clone()));
            if !collections.contains(&coll) {
                report
                    .errors
                    .push(format!("object {coll}/{oid} belongs to no collection"));
            }
            let shards = extent_shards(&self.db, &extent_shard_prefix_of(&k))?;
            let onode = match Onode::decode(&v, &shards, self.total_blocks()) {
                Ok(o) => o,
                Err(e) => {
                    report.errors.push(format!("object {coll}/{oid}: {e}"));
                    continue;
                }
            };
            counted.count_object(&coll, &onode);
            let blocks_max = onode.size.div_ceil(BLOCK_BYTES as u64);
            for e in onode.extents.iter() {
                if e.end() > blocks_max {
                    report.errors.push(format!(
                        "object {coll}/{oid}: extent at block {} runs past its size {}",
                        e.lblock, onode.size
                    ));
                }
                if e.pblock + e.len() > self.total_blocks() {
                    report.errors.push(format!(
                        "object {coll}/{oid}: extent lies beyond the device"
                    ));
                }
                used.push(e.run());
                if deep {
                    to_verify.push((coll.clone(), oid.clone(), e.clone()));
                }
            }
        }
        for item in self.db.prefix_iterator(b"E") {
            let (k, _) = item?;
            if !k.starts_with(b"E") {
                break;
            }
            let (coll, oid) = split_object_key(&k);
            if !objects.contains(&(coll.clone(), oid.clone())) {
                report
                    .errors
                    .push(format!("extent shard of missing object {coll}/{oid}"));
            }
        }
        for item in self.db.prefix_iterator(b"M") {
            let (k, _) = item?;
            if !k.starts_with(b"M") {
                break;
            }
            report.omap_entries += 1;
            let (coll, oid) = split_object_key(&k);
            if !objects.contains(&(coll.clone(), oid.clone())) {
                report
                    .errors
                    .push(format!("omap entry of missing object {coll}/{oid}"));
            }
        }
        report.used_blocks = used.iter().map(|r| r.len).sum();
        match Allocator::rebuild(self.total_blocks(), used) {
            Ok(expected) => {
                let alloc = self.allocator();
                report.free_blocks = alloc.free_blocks();
                if !alloc.same_free_space(&expected) {
                    report.errors.push(format!(
                        "the allocator's free space ({} blocks) differs from what the extents leave ({} blocks): space leaked or double-booked",
                        alloc.free_blocks(),
                        expected.free_blocks()
                    ));
                }
            }
            Err(e) => report
                .errors
                .push(format!("extents overlap or overflow: {e}")),
        }
        let (kept, found) = (self.collection_stats(), counted.snapshot());
        for coll in kept.keys().chain(found.keys()).collect::<BTreeSet<_>>() {
            if kept.get(coll) != found.get(coll) {
                report.errors.push(format!(
                    "collection {coll}: the counts kept in memory ({:?}) differ from its objects ({:?})",
                    kept.get(coll),
                    found.get(coll)
                ));
            }
        }
        for (coll, oid, e) in to_verify {
            self.deep_check(&coll, &oid, &e, &mut report)?;
        }
        report.damaged.sort();
        report.damaged.dedup();
        Ok(report)
    }

    /// Reads one extent and records each block whose checksum fails.
    fn deep_check(&self, coll: &str, oid: &str, e: &Extent, report: &mut FsckReport) -> Result<()> {
        let buf = self
            .io
            .run(vec![IoOp::Read {
                buf: AlignedBuf::zeroed(e.len() as usize * BLOCK_BYTES),
                offset: e.pblock * BLOCK_BYTES as u64,
            }])?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("a read returned no buffer".into()))?;
        for i in 0..e.len() {
            let one = Extent {
                lblock: e.lblock + i,
                pblock: e.pblock + i,
                csums: vec![e.csums[i as usize]],
            };
            let at = i as usize * BLOCK_BYTES;
            if let Err(StoreError::ChecksumMismatch { offset, length, .. }) =
                verify(coll, oid, &one, &buf[at..at + BLOCK_BYTES])
            {
                report.damaged.push(Damage {
                    collection: coll.to_string(),
                    object: oid.to_string(),
                    offset,
                    length,
                });
            }
        }
        Ok(())
    }
}
