//! Planning a transaction: its ops applied in order to an in-memory overlay of the objects,
//! omaps and collections it touches. New data goes to freshly allocated blocks (copy-on-write;
//! partial blocks are read, merged and rewritten whole), so nothing on disk that committed
//! metadata references is overwritten. The plan yields the data writes and one RocksDB batch;
//! the store commits them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rocksdb::WriteBatch;

use crate::aligned::AlignedBuf;
use crate::allocator::Run;
use crate::coll_stats::StatsChange;
use crate::error::{Result, StoreError};
use crate::extents::{Extent, ExtentMap, Piece};
use crate::onode::*;
use crate::store::{put_whole_onode, ObjectStore};
use crate::txn::Op;
use crate::BLOCK_BYTES;

const B: u64 = BLOCK_BYTES as u64;
/// Largest object size and offset: keeps block arithmetic far from overflow.
pub const OBJECT_BYTES_MAX: u64 = 1 << 50;

type ObjKey = (String, String);
type Omap = BTreeMap<Vec<u8>, Vec<u8>>;

/// Changes to one object's omap within the transaction.
#[derive(Default, Clone)]
struct OmapOverlay {
    /// The committed entries are gone (cleared, removed, or replaced by a clone or rename).
    cleared: bool,
    entries: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

pub struct Plan<'a> {
    store: &'a ObjectStore,
    /// Objects touched: `None` once removed.
    onodes: BTreeMap<ObjKey, Option<Onode>>,
    /// The committed state of each object touched (`None`: it did not exist), which the batch
    /// compares against so it rewrites only what changed.
    bases: BTreeMap<ObjKey, Option<Arc<Onode>>>,
    omaps: BTreeMap<ObjKey, OmapOverlay>,
    collections: BTreeMap<String, bool>,
    /// Data to write before commit: first physical block → whole blocks.
    pub pending: HashMap<u64, AlignedBuf>,
    /// Small overwrites of committed blocks, rewritten in place after the commit: physical
    /// block → its new content. Their durable copy until then is a record in the RocksDB batch.
    pub deferred: BTreeMap<u64, AlignedBuf>,
    /// Blocks taken by this transaction (released if it fails).
    pub allocated: Vec<Run>,
    /// Blocks no longer referenced once it commits (released after the commit).
    pub freed: Vec<Run>,
    /// Whether the batch committed (set by the store).
    pub committed: bool,
}

impl<'a> Plan<'a> {
    pub fn new(store: &'a ObjectStore) -> Plan<'a> {
        Plan {
            store,
            onodes: BTreeMap::new(),
            bases: BTreeMap::new(),
            omaps: BTreeMap::new(),
            collections: BTreeMap::new(),
            pending: HashMap::new(),
            deferred: BTreeMap::new(),
            allocated: Vec::new(),
            freed: Vec::new(),
            committed: false,
        }
    }

    pub fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::CreateCollection { coll } => {
                validate_name("collection", coll)?;
                if self.collection_exists(coll)? {
                    return Err(StoreError::CollectionExists(coll.clone()));
                }
                self.collections.insert(coll.clone(), true);
            }
            Op::RemoveCollection { coll } => {
                if !self.collection_exists(coll)? {
                    return Err(StoreError::NoCollection(coll.clone()));
                }
                if !self.collection_empty(coll)? {
                    return Err(StoreError::CollectionNotEmpty(coll.clone()));
                }
                self.collections.insert(coll.clone(), false);
            }
            Op::Touch { coll, oid } => {
                self.object_or_create(coll, oid)?;
            }
            Op::Write {
                coll,
                oid,
                offset,
                data,
            } => self.write(coll, oid, *offset, data)?,
            Op::Zero {
                coll,
                oid,
                offset,
                len,
            } => self.zero(coll, oid, *offset, *len)?,
            Op::Truncate { coll, oid, size } => self.truncate(coll, oid, *size)?,
            Op::Remove { coll, oid } => {
                let onode = self.existing(coll, oid)?.clone();
                self.release_blocks(onode.extents.used_runs().collect());
                self.onodes.insert(key(coll, oid), None);
                self.omaps.insert(
                    key(coll, oid),
                    OmapOverlay {
                        cleared: true,
                        entries: BTreeMap::new(),
                    },
                );
            }
            Op::SetAttrs { coll, oid, attrs } => {
                let o = self.object_or_create(coll, oid)?;
                o.attrs
                    .extend(attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Op::RmAttr { coll, oid, name } => {
                self.existing(coll, oid)?.attrs.remove(name);
            }
            Op::OmapSet { coll, oid, entries } => {
                self.object_or_create(coll, oid)?;
                let overlay = self.omaps.entry(key(coll, oid)).or_default();
                for (k, v) in entries {
                    overlay.entries.insert(k.clone(), Some(v.clone()));
                }
            }
            Op::OmapRm { coll, oid, keys } => {
                self.existing(coll, oid)?;
                let overlay = self.omaps.entry(key(coll, oid)).or_default();
                for k in keys {
                    overlay.entries.insert(k.clone(), None);
                }
            }
            Op::OmapClear { coll, oid } => {
                self.object_or_create(coll, oid)?;
                self.omaps.insert(
                    key(coll, oid),
                    OmapOverlay {
                        cleared: true,
                        entries: BTreeMap::new(),
                    },
                );
            }
            Op::Clone { coll, src, dst } => self.clone_object(coll, src, dst)?,
            Op::Rename { coll, src, dst } => self.rename(coll, src, dst)?,
        }
        Ok(())
    }

    fn collection_exists(&self, coll: &str) -> Result<bool> {
        match self.collections.get(coll) {
            Some(exists) => Ok(*exists),
            None => self.store.collection_exists(coll),
        }
    }

    /// Whether the collection holds no object once this plan commits.
    fn collection_empty(&self, coll: &str) -> Result<bool> {
        let live_here = self
            .onodes
            .iter()
            .any(|((c, _), o)| c == coll && o.is_some());
        if live_here {
            return Ok(false);
        }
        let prefix = onode_prefix(coll);
        for item in self.store.db.prefix_iterator(&prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let oid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if !matches!(self.onodes.get(&key(coll, &oid)), Some(None)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Loads an object into the overlay (if not there yet); `None` when it does not exist.
    fn load(&mut self, coll: &str, oid: &str) -> Result<Option<&mut Onode>> {
        validate_name("object", oid)?;
        if !self.collection_exists(coll)? {
            return Err(StoreError::NoCollection(coll.to_string()));
        }
        let k = key(coll, oid);
        if !self.onodes.contains_key(&k) {
            let base = self.store.get_onode(coll, oid)?;
            self.onodes.insert(k.clone(), base.as_deref().cloned());
            self.bases.insert(k.clone(), base);
        }
        Ok(self.onodes.get_mut(&k).and_then(|o| o.as_mut()))
    }

    fn existing(&mut self, coll: &str, oid: &str) -> Result<&mut Onode> {
        self.load(coll, oid)?
            .ok_or_else(|| StoreError::no_object(coll, oid))
    }

    fn object_or_create(&mut self, coll: &str, oid: &str) -> Result<&mut Onode> {
        if self.load(coll, oid)?.is_none() {
            // No omap to clear: removing an object deletes its omap in the same batch.
            self.onodes.insert(key(coll, oid), Some(Onode::default()));
        }
        self.existing(coll, oid)
    }

    /// Marks physical runs unreferenced; data not yet written for them is dropped.
    fn release_blocks(&mut self, runs: Vec<Run>) {
        for r in &runs {
            let gone: Vec<u64> = self
                .deferred
                .range(r.start..r.start + r.len)
                .map(|(p, _)| *p)
                .collect();
            for p in gone {
                self.deferred.remove(&p);
            }
            if let Some(buf) = self.pending.get(&r.start) {
                if buf.len() as u64 == r.len * B {
                    self.pending.remove(&r.start);
                }
            }
        }
        self.freed.extend(runs);
    }

    /// One logical block of an object as it stands in this plan (holes are zeros).
    fn read_block(&mut self, coll: &str, oid: &str, lblock: u64) -> Result<Vec<u8>> {
        let onode = self.existing(coll, oid)?;
        let piece = onode.extents.pieces(lblock, lblock + 1).pop();
        let Some(Piece::Data(e)) = piece else {
            return Ok(vec![0u8; BLOCK_BYTES]);
        };
        if let Some(buf) = self.deferred.get(&e.pblock) {
            return Ok(buf.to_vec());
        }
        for (start, buf) in &self.pending {
            let len = buf.len() as u64 / B;
            if e.pblock >= *start && e.pblock < start + len {
                let at = ((e.pblock - start) * B) as usize;
                return Ok(buf[at..at + BLOCK_BYTES].to_vec());
            }
        }
        Ok(self.store.read_blocks(coll, oid, &[Piece::Data(e)])?.into())
    }

    /// Puts whole blocks at logical block `lblock`: fresh space, checksums, new extents; the
    /// blocks they replace are released.
    fn place(&mut self, coll: &str, oid: &str, lblock: u64, data: AlignedBuf) -> Result<()> {
        let n = (data.len() / BLOCK_BYTES) as u64;
        let runs = {
            let mut alloc = self.store.allocator();
            let available = alloc.free_blocks() * B;
            alloc.allocate(n).ok_or(StoreError::NoSpace {
                needed: n * B,
                available,
            })?
        };
        self.allocated.extend(runs.iter().copied());
        let old = self.existing(coll, oid)?.extents.punch(lblock, lblock + n);
        self.release_blocks(old);
        let mut at = 0usize;
        let mut lb = lblock;
        let single = runs.len() == 1;
        let mut whole = Some(data);
        for run in runs {
            let bytes = run.len as usize * BLOCK_BYTES;
            let buf = if single {
                whole.take().expect("one run takes the whole buffer")
            } else {
                let src = whole.as_ref().expect("buffer kept for several runs");
                let mut b = AlignedBuf::zeroed(bytes);
                b.copy_from_slice(&src[at..at + bytes]);
                b
            };
            let csums = buf.chunks(BLOCK_BYTES).map(crc32c::crc32c).collect();
            self.existing(coll, oid)?.extents.insert(Extent {
                lblock: lb,
                pblock: run.start,
                csums,
            });
            self.pending.insert(run.start, buf);
            at += bytes;
            lb += run.len;
        }
        Ok(())
    }

    fn write(&mut self, coll: &str, oid: &str, offset: u64, data: &[u8]) -> Result<()> {
        let end = checked_end(offset, data.len() as u64)?;
        if data.len() as u64 > crate::IO_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "a write op carries at most {} bytes; split it",
                crate::IO_BYTES_MAX
            )));
        }
        self.object_or_create(coll, oid)?;
        if data.is_empty() {
            return Ok(());
        }
        let b0 = offset / B;
        let b1 = end.div_ceil(B);
        let n = (b1 - b0) as usize;
        let at = (offset - b0 * B) as usize;
        let data_end = at + data.len();
        let mut buf = AlignedBuf::with_data(n * BLOCK_BYTES, at, data);
        // Partial first and last blocks keep the bytes around the data (one block may be both).
        let tail_from = (n - 1) * BLOCK_BYTES;
        if at > 0 {
            let head = self.read_block(coll, oid, b0)?;
            buf[..at].copy_from_slice(&head[..at]);
            if n == 1 {
                buf[data_end..].copy_from_slice(&head[data_end..]);
            }
        }
        if data_end < n * BLOCK_BYTES && (n > 1 || at == 0) {
            let tail = self.read_block(coll, oid, b1 - 1)?;
            buf[data_end..].copy_from_slice(&tail[data_end - tail_from..]);
        }
        match self.deferrable(coll, oid, b0, b1, data.len())? {
            Some(pblocks) => self.defer(coll, oid, b0, &pblocks, &buf)?,
            None => self.place(coll, oid, b0, buf)?,
        }
        let o = self.existing(coll, oid)?;
        o.size = o.size.max(end);
        Ok(())
    }

    /// The physical blocks of `[b0, b1)` if a write there may go in place: small, and every
    /// block mapped to committed space (not to blocks this transaction allocated).
    fn deferrable(
        &mut self,
        coll: &str,
        oid: &str,
        b0: u64,
        b1: u64,
        len: usize,
    ) -> Result<Option<Vec<u64>>> {
        if len as u64 > crate::DEFERRED_WRITE_BYTES_MAX {
            return Ok(None);
        }
        let pieces = self.existing(coll, oid)?.extents.pieces(b0, b1);
        let mut pblocks = Vec::new();
        for p in pieces {
            let Piece::Data(e) = p else { return Ok(None) };
            pblocks.extend(e.pblock..e.pblock + e.len());
        }
        let fresh = pblocks.iter().any(|p| {
            self.allocated
                .iter()
                .any(|r| *p >= r.start && *p < r.start + r.len)
        });
        Ok((!fresh).then_some(pblocks))
    }

    /// Rewrites mapped blocks in place (after the commit): new checksums now, the data kept
    /// in the plan and, durably, in the batch until it is on disk.
    fn defer(&mut self, coll: &str, oid: &str, b0: u64, pblocks: &[u64], buf: &[u8]) -> Result<()> {
        for (i, p) in pblocks.iter().enumerate() {
            let block = &buf[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
            let mut one = AlignedBuf::zeroed(BLOCK_BYTES);
            one.copy_from_slice(block);
            self.existing(coll, oid)?
                .extents
                .set_csum(b0 + i as u64, crc32c::crc32c(block));
            self.deferred.insert(*p, one);
        }
        Ok(())
    }

    /// Zeroes bytes `[from, to)` that lie inside one block, rewriting the block if it holds data.
    fn zero_within_block(&mut self, coll: &str, oid: &str, from: u64, to: u64) -> Result<()> {
        let lblock = from / B;
        let mapped = matches!(
            self.existing(coll, oid)?
                .extents
                .pieces(lblock, lblock + 1)
                .first(),
            Some(Piece::Data(_))
        );
        if !mapped || from >= to {
            return Ok(());
        }
        let mut block = self.read_block(coll, oid, lblock)?;
        block[(from - lblock * B) as usize..(to - lblock * B) as usize].fill(0);
        let mut buf = AlignedBuf::zeroed(BLOCK_BYTES);
        buf.copy_from_slice(&block);
        self.place(coll, oid, lblock, buf)
    }

    fn zero(&mut self, coll: &str, oid: &str, offset: u64, len: u64) -> Result<()> {
        let end = checked_end(offset, len)?;
        self.object_or_create(coll, oid)?;
        if len == 0 {
            return Ok(());
        }
        let full0 = offset.div_ceil(B);
        let full1 = end / B;
        if full0 < full1 {
            let freed = self.existing(coll, oid)?.extents.punch(full0, full1);
            self.release_blocks(freed);
        }
        let head_end = end.min(full0 * B);
        if !offset.is_multiple_of(B) {
            self.zero_within_block(coll, oid, offset, head_end)?;
        }
        if !end.is_multiple_of(B) && end / B >= full0 {
            self.zero_within_block(coll, oid, (end / B) * B, end)?;
        }
        let o = self.existing(coll, oid)?;
        o.size = o.size.max(end);
        Ok(())
    }

    fn truncate(&mut self, coll: &str, oid: &str, size: u64) -> Result<()> {
        checked_end(size, 0)?;
        let o = self.object_or_create(coll, oid)?;
        if size < o.size {
            let keep = size.div_ceil(B);
            let end = o.extents.end().max(keep);
            let freed = o.extents.punch(keep, end);
            self.release_blocks(freed);
            // Bytes past the new size inside its last block must read as zeros if it grows again.
            if !size.is_multiple_of(B) {
                self.zero_within_block(coll, oid, size, (size / B + 1) * B)?;
            }
        }
        self.existing(coll, oid)?.size = size;
        Ok(())
    }

    /// The object's omap as it stands in this plan.
    fn effective_omap(&self, coll: &str, oid: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let overlay = self.omaps.get(&key(coll, oid)).cloned().unwrap_or_default();
        let mut out = BTreeMap::new();
        if !overlay.cleared {
            let prefix = omap_prefix(coll, oid);
            for item in self.store.db.prefix_iterator(&prefix) {
                let (k, v) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                out.insert(k[prefix.len()..].to_vec(), v.to_vec());
            }
        }
        for (k, v) in overlay.entries {
            match v {
                Some(v) => out.insert(k, v),
                None => out.remove(&k),
            };
        }
        Ok(out)
    }

    fn replace_omap(&mut self, coll: &str, oid: &str, entries: BTreeMap<Vec<u8>, Vec<u8>>) {
        self.omaps.insert(
            key(coll, oid),
            OmapOverlay {
                cleared: true,
                entries: entries.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            },
        );
    }

    /// The source of a clone or rename as this plan has it (object and omap); `None` when
    /// source and destination are the same object, which makes the op a no-op.
    fn source(&mut self, coll: &str, src: &str, dst: &str) -> Result<Option<(Onode, Omap)>> {
        let source = self.existing(coll, src)?.clone();
        if src == dst {
            return Ok(None);
        }
        Ok(Some((source, self.effective_omap(coll, src)?)))
    }

    fn clone_object(&mut self, coll: &str, src: &str, dst: &str) -> Result<()> {
        let Some((source, omap)) = self.source(coll, src, dst)? else {
            return Ok(());
        };
        let target = self.object_or_create(coll, dst)?;
        let old = target.extents.punch(0, target.extents.end());
        *target = Onode {
            size: source.size,
            extents: Default::default(),
            attrs: source.attrs.clone(),
        };
        self.release_blocks(old);
        // Copy data extent by extent, keeping holes as holes.
        for e in source.extents.iter() {
            let mut buf = AlignedBuf::zeroed(e.len() as usize * BLOCK_BYTES);
            for i in 0..e.len() {
                let block = self.read_block(coll, src, e.lblock + i)?;
                buf[i as usize * BLOCK_BYTES..(i as usize + 1) * BLOCK_BYTES]
                    .copy_from_slice(&block);
            }
            self.place(coll, dst, e.lblock, buf)?;
        }
        self.replace_omap(coll, dst, omap);
        Ok(())
    }

    fn rename(&mut self, coll: &str, src: &str, dst: &str) -> Result<()> {
        let Some((source, omap)) = self.source(coll, src, dst)? else {
            return Ok(());
        };
        if let Some(old) = self.load(coll, dst)? {
            let runs = old.extents.used_runs().collect();
            self.release_blocks(runs);
        }
        self.onodes.insert(key(coll, dst), Some(source));
        self.replace_omap(coll, dst, omap);
        self.onodes.insert(key(coll, src), None);
        self.replace_omap(coll, src, BTreeMap::new());
        Ok(())
    }

    /// The objects this plan touched and what they become (`None`: removed).
    pub fn onodes(&self) -> impl Iterator<Item = (&(String, String), &Option<Onode>)> {
        self.onodes.iter()
    }

    /// What the plan changes in each collection's counts (`coll_stats`).
    pub fn stats_changes(&self) -> BTreeMap<String, StatsChange> {
        let mut out: BTreeMap<String, StatsChange> = BTreeMap::new();
        for (k, after) in &self.onodes {
            let before = self.bases.get(k).and_then(|b| b.as_deref());
            if before.is_none() && after.is_none() {
                continue;
            }
            out.entry(k.0.clone())
                .or_default()
                .record(before, after.as_ref());
        }
        out
    }

    /// The collections the plan creates (`true`) or removes (`false`).
    pub fn collections(&self) -> impl Iterator<Item = (String, bool)> + '_ {
        self.collections.iter().map(|(c, e)| (c.clone(), *e))
    }

    /// The metadata changes as one RocksDB batch, with a record per deferred block (keys from
    /// `next_record` up); returns the batch and the record keys.
    pub fn batch(
        &self,
        next_record: &std::sync::atomic::AtomicU64,
    ) -> Result<(WriteBatch, Vec<Vec<u8>>)> {
        let mut batch = WriteBatch::default();
        let mut records = Vec::new();
        for (pblock, data) in &self.deferred {
            let seq = next_record.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let key = deferred_key(seq);
            batch.put(&key, encode_deferred(*pblock, data));
            records.push(key);
        }
        for (coll, exists) in &self.collections {
            if *exists {
                batch.put(collection_key(coll), b"");
            } else {
                batch.delete(collection_key(coll));
            }
        }
        for (k, onode) in &self.onodes {
            put_onode(&mut batch, k, onode.as_ref(), self.bases.get(k));
        }
        for ((coll, oid), overlay) in &self.omaps {
            if overlay.cleared {
                let prefix = omap_prefix(coll, oid);
                batch.delete_range(&prefix, &prefix_end(&prefix));
            }
            for (k, v) in &overlay.entries {
                match v {
                    Some(v) => batch.put(omap_key(coll, oid, k), v),
                    None => batch.delete(omap_key(coll, oid, k)),
                }
            }
        }
        Ok((batch, records))
    }
}

/// Puts the changes to one object: its record if it is new, removed, or its size or
/// attributes changed, and the extent shards whose content changed (deleted one key at a time,
/// as the committed map names them: no range tombstones for RocksDB to skip over later).
fn put_onode(
    batch: &mut WriteBatch,
    (coll, oid): &ObjKey,
    onode: Option<&Onode>,
    base: Option<&Option<Arc<Onode>>>,
) {
    let Some(base) = base else {
        // Every object is loaded before it changes; if one were not, replace it whole.
        let shard_prefix = extent_shard_prefix(coll, oid);
        match onode {
            Some(o) => put_whole_onode(batch, &onode_key(coll, oid), &shard_prefix, o),
            None => {
                batch.delete(onode_key(coll, oid));
                batch.delete_range(&shard_prefix, &prefix_end(&shard_prefix));
            }
        }
        return;
    };
    let base = base.as_deref();
    match onode {
        None => batch.delete(onode_key(coll, oid)),
        Some(o) if base.is_none_or(|b| o.meta_differs(b)) => {
            batch.put(onode_key(coll, oid), o.encode_meta())
        }
        Some(_) => {}
    }
    let removed = ExtentMap::default();
    let extents = onode.map_or(&removed, |o| &o.extents);
    for (shard, record) in changed_shards(base.map(|b| &b.extents), extents) {
        let k = extent_shard_key(coll, oid, shard);
        match record {
            Some(r) => batch.put(k, r),
            None => batch.delete(k),
        }
    }
}

fn key(coll: &str, oid: &str) -> ObjKey {
    (coll.to_string(), oid.to_string())
}

fn checked_end(offset: u64, len: u64) -> Result<u64> {
    offset
        .checked_add(len)
        .filter(|end| *end <= OBJECT_BYTES_MAX)
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "range {offset}+{len} exceeds the object size limit of {OBJECT_BYTES_MAX} bytes"
            ))
        })
}
