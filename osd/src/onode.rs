//! How objects are kept in RocksDB: key layout and the encoded object record ("onode").
//!
//! Keys (one key space, ordered bytewise):
//! - `S` — the superblock;
//! - `C<coll>` — a collection;
//! - `O<coll>\0<oid>` — an object's onode (size, attributes);
//! - `E<coll>\0<oid>\0<shard, 8 bytes big-endian>` — one shard of its extent map: the extents
//!   (with their block checksums) inside `EXTENT_SHARD_BLOCKS` logical blocks. A small
//!   overwrite rewrites one shard, not the map of the whole object;
//! - `M<coll>\0<oid>\0<key>` — one omap entry.
//!
//! Collection and object names may hold any byte but NUL, so prefixes never collide and a
//! collection's objects list in name order.

use std::collections::BTreeMap;

use crate::error::{Result, StoreError};
use crate::extents::{Extent, ExtentMap, Part};

pub const KEY_SUPERBLOCK: &[u8] = b"S";
/// Prefix of deferred-write records: `D<seq, 8 bytes big-endian>` → pblock (8 bytes) ‖ block.
pub const DEFERRED_PREFIX: &[u8] = b"D";
/// Longest collection or object name.
pub const NAME_BYTES_MAX: usize = 4096;
/// Logical blocks per extent-map shard (256 KiB of data, at most 64 checksums per record).
pub const EXTENT_SHARD_BLOCKS: u64 = 64;

#[derive(Clone, PartialEq, prost::Message)]
pub struct SuperblockRecord {
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    #[prost(uint32, tag = "2")]
    pub block_bytes: u32,
    #[prost(uint64, tag = "3")]
    pub total_blocks: u64,
    #[prost(string, tag = "4")]
    pub store_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtentRecord {
    #[prost(uint64, tag = "1")]
    pub lblock: u64,
    #[prost(uint64, tag = "2")]
    pub pblock: u64,
    #[prost(fixed32, repeated, tag = "3")]
    pub csums: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OnodeRecord {
    #[prost(uint64, tag = "1")]
    pub size: u64,
    /// The whole extent map, in stores of format 1 only (converted to shards at mount).
    #[prost(message, repeated, tag = "2")]
    pub extents: Vec<ExtentRecord>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    pub attrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtentShardRecord {
    #[prost(message, repeated, tag = "1")]
    pub extents: Vec<ExtentRecord>,
}

impl From<Part<'_>> for ExtentRecord {
    fn from(p: Part<'_>) -> ExtentRecord {
        ExtentRecord {
            lblock: p.lblock,
            pblock: p.pblock,
            csums: p.csums.to_vec(),
        }
    }
}

impl From<&Extent> for ExtentRecord {
    fn from(e: &Extent) -> ExtentRecord {
        ExtentRecord {
            lblock: e.lblock,
            pblock: e.pblock,
            csums: e.csums.clone(),
        }
    }
}

/// An object's metadata in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Onode {
    pub size: u64,
    pub extents: ExtentMap,
    pub attrs: BTreeMap<String, Vec<u8>>,
}

impl Onode {
    /// Decodes and checks an object's record and its extent-map shards (shard number and
    /// record) as read from RocksDB: nothing in them is trusted until every extent is known to
    /// be non-empty, inside its shard, ordered, disjoint, inside the object and the device.
    pub fn decode(meta: &[u8], shards: &[(u64, Vec<u8>)], total_blocks: u64) -> Result<Onode> {
        let r: OnodeRecord = prost::Message::decode(meta)
            .map_err(|e| StoreError::Corrupt(format!("undecodable onode: {e}")))?;
        let bad = |why: String| Err(StoreError::Corrupt(format!("onode: {why}")));
        if r.size > crate::apply::OBJECT_BYTES_MAX {
            return bad(format!("size {} exceeds the object limit", r.size));
        }
        let mut extents = r.extents;
        for (shard, bytes) in shards {
            let rec: ExtentShardRecord = prost::Message::decode(bytes.as_slice()).map_err(|e| {
                StoreError::Corrupt(format!("undecodable extent shard {shard}: {e}"))
            })?;
            let first = shard.saturating_mul(EXTENT_SHARD_BLOCKS);
            let outside = |e: &ExtentRecord| {
                e.lblock < first
                    || (e.lblock - first).saturating_add(e.csums.len() as u64) > EXTENT_SHARD_BLOCKS
            };
            if let Some(e) = rec.extents.iter().find(|e| outside(e)) {
                return bad(format!(
                    "extent at block {} lies outside its shard {shard}",
                    e.lblock
                ));
            }
            extents.extend(rec.extents);
        }
        extents.sort_by_key(|e| e.lblock);
        let blocks_max = r.size.div_ceil(crate::BLOCK_BYTES as u64);
        let mut next_free = 0u64;
        for e in &extents {
            let len = e.csums.len() as u64;
            let lend = e.lblock.checked_add(len);
            let pend = e.pblock.checked_add(len);
            if len == 0
                || e.lblock < next_free
                || lend.is_none_or(|end| end > blocks_max)
                || pend.is_none_or(|end| end > total_blocks)
            {
                return bad(format!(
                    "extent at block {} (+{len}) is empty, overlaps, or lies outside the object or the device",
                    e.lblock
                ));
            }
            next_free = lend.unwrap_or(u64::MAX);
        }
        Ok(Onode {
            size: r.size,
            extents: ExtentMap::from_extents(merge_contiguous(extents)),
            attrs: r.attrs,
        })
    }

    /// The object's record without its extent map (kept in shards).
    pub fn encode_meta(&self) -> Vec<u8> {
        let r = OnodeRecord {
            size: self.size,
            extents: Vec::new(),
            attrs: self.attrs.clone(),
        };
        prost::Message::encode_to_vec(&r)
    }

    /// Whether the object's record (size, attributes) differs from `other`'s.
    pub fn meta_differs(&self, other: &Onode) -> bool {
        self.size != other.size || self.attrs != other.attrs
    }
}

/// Ordered extents with the pieces the sharding cut apart joined again: logical and physical
/// blocks both follow on.
fn merge_contiguous(sorted: Vec<ExtentRecord>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(sorted.len());
    for e in sorted {
        match out.last_mut() {
            Some(last) if last.end() == e.lblock && last.pblock + last.len() == e.pblock => {
                last.csums.extend(e.csums)
            }
            _ => out.push(Extent {
                lblock: e.lblock,
                pblock: e.pblock,
                csums: e.csums,
            }),
        }
    }
    out
}

/// The extent-map shards whose content differs between `old` and `new`, each with its new
/// record (`None`: the shard holds nothing now and its key goes).
pub fn changed_shards(old: Option<&ExtentMap>, new: &ExtentMap) -> Vec<(u64, Option<Vec<u8>>)> {
    let empty = ExtentMap::default();
    let old = old.unwrap_or(&empty);
    let mut shards = old.shards(EXTENT_SHARD_BLOCKS);
    shards.extend(new.shards(EXTENT_SHARD_BLOCKS));
    let mut out = Vec::new();
    for shard in shards {
        let (from, to) = (
            shard * EXTENT_SHARD_BLOCKS,
            (shard + 1) * EXTENT_SHARD_BLOCKS,
        );
        if old.parts(from, to).eq(new.parts(from, to)) {
            continue;
        }
        let extents: Vec<ExtentRecord> = new.parts(from, to).map(ExtentRecord::from).collect();
        let record = (!extents.is_empty())
            .then(|| prost::Message::encode_to_vec(&ExtentShardRecord { extents }));
        out.push((shard, record));
    }
    out
}

pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX || name.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "{what} name must be 1 to {NAME_BYTES_MAX} bytes without NUL"
        )));
    }
    Ok(())
}

pub fn collection_key(coll: &str) -> Vec<u8> {
    [b"C", coll.as_bytes()].concat()
}

/// Prefix of every onode key of a collection.
pub fn onode_prefix(coll: &str) -> Vec<u8> {
    [b"O", coll.as_bytes(), b"\0"].concat()
}

pub fn onode_key(coll: &str, oid: &str) -> Vec<u8> {
    [onode_prefix(coll).as_slice(), oid.as_bytes()].concat()
}

/// Prefix of every extent-map shard key of an object.
pub fn extent_shard_prefix(coll: &str, oid: &str) -> Vec<u8> {
    [b"E", coll.as_bytes(), b"\0", oid.as_bytes(), b"\0"].concat()
}

pub fn extent_shard_key(coll: &str, oid: &str, shard: u64) -> Vec<u8> {
    shard_key_under(&extent_shard_prefix(coll, oid), shard)
}

/// The key of shard `shard` under an object's extent-shard prefix.
pub fn shard_key_under(prefix: &[u8], shard: u64) -> Vec<u8> {
    [prefix, &shard.to_be_bytes()].concat()
}

/// Splits `O<coll>\0<oid>` / `M<coll>\0<oid>\0<key>` keys into collection and object.
pub fn split_object_key(k: &[u8]) -> (String, String) {
    let mut parts = k.get(1..).unwrap_or_default().splitn(3, |b| *b == 0);
    let coll = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let oid = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (coll, oid)
}

/// The extent-map shard prefix of the object whose onode key is `onode_key`.
pub fn extent_shard_prefix_of(onode_key: &[u8]) -> Vec<u8> {
    [b"E", &onode_key[1..], b"\0"].concat()
}

/// The shard number of an extent-map shard key under `prefix`.
pub fn shard_of_key(prefix: &[u8], key: &[u8]) -> Result<u64> {
    key.get(prefix.len()..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt("malformed extent shard key".into()))
}

/// Prefix of every omap key of an object.
pub fn omap_prefix(coll: &str, oid: &str) -> Vec<u8> {
    [b"M", coll.as_bytes(), b"\0", oid.as_bytes(), b"\0"].concat()
}

pub fn omap_key(coll: &str, oid: &str, key: &[u8]) -> Vec<u8> {
    [omap_prefix(coll, oid).as_slice(), key].concat()
}

pub fn deferred_key(seq: u64) -> Vec<u8> {
    [DEFERRED_PREFIX, &seq.to_be_bytes()].concat()
}

pub fn encode_deferred(pblock: u64, data: &[u8]) -> Vec<u8> {
    [&pblock.to_be_bytes()[..], data].concat()
}

/// A deferred record's physical block and data, if well formed.
pub fn decode_deferred(value: &[u8]) -> Option<(u64, &[u8])> {
    if value.len() != 8 + crate::BLOCK_BYTES {
        return None;
    }
    let (p, data) = value.split_at(8);
    Some((u64::from_be_bytes(p.try_into().ok()?), data))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The object's record and every shard of its extent map, as a store of format 2 has them.
    fn stored(o: &Onode) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
        let shards = changed_shards(None, &o.extents)
            .into_iter()
            .map(|(s, rec)| (s, rec.expect("a shard with data")))
            .collect();
        (o.encode_meta(), shards)
    }

    fn sample() -> Onode {
        let mut o = Onode {
            size: 200 * crate::BLOCK_BYTES as u64,
            ..Default::default()
        };
        // Crosses two shard boundaries.
        o.extents.insert(Extent {
            lblock: 60,
            pblock: 1000,
            csums: (0..80).collect(),
        });
        o.extents.insert(Extent {
            lblock: 2,
            pblock: 77,
            csums: vec![1, 2, 3],
        });
        o.attrs.insert("_".into(), b"v".to_vec());
        o
    }

    #[test]
    fn onodes_round_trip_through_shards() {
        let o = sample();
        let (meta, shards) = stored(&o);
        assert_eq!(
            shards.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(Onode::decode(&meta, &shards, 2000).unwrap(), o);
        assert!(Onode::decode(&[0xff, 0xff, 0xff], &shards, 2000).is_err());
        assert!(Onode::decode(&meta, &[(0, vec![0xff, 0xff])], 2000).is_err());
        // Outside the device, past the size: refused.
        assert!(Onode::decode(&meta, &shards, 1079).is_err());
        let mut small = o.clone();
        small.size = 100;
        assert!(Onode::decode(&small.encode_meta(), &shards, 2000).is_err());
    }

    #[test]
    fn shard_records_are_checked() {
        let o = sample();
        let (meta, mut shards) = stored(&o);
        let record = |extents: Vec<ExtentRecord>| {
            prost::Message::encode_to_vec(&ExtentShardRecord { extents })
        };
        let one = |lblock, pblock, n| ExtentRecord {
            lblock,
            pblock,
            csums: vec![0; n],
        };
        // Overlapping another shard's extent, outside its own shard, empty: all refused.
        for (shard, ext) in [
            (0, one(3, 500, 1)),
            (3, one(150, 500, 1)),
            (3, one(195, 500, 0)),
        ] {
            shards.push((shard, record(vec![ext])));
            assert!(
                Onode::decode(&meta, &shards, 2000).is_err(),
                "shard {shard}"
            );
            shards.pop();
        }
        shards.push((3, record(vec![one(195, 500, 2)])));
        assert!(Onode::decode(&meta, &shards, 2000).is_ok());
    }

    #[test]
    fn a_small_overwrite_changes_one_shard() {
        let o = sample();
        let mut changed = o.clone();
        changed.extents.set_csum(70, 0xdead);
        let shards = changed_shards(Some(&o.extents), &changed.extents);
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].0, 1);
        assert!(changed_shards(Some(&o.extents), &o.extents).is_empty());
        // Punching a whole shard's data out deletes its key.
        changed.extents.punch(128, 140);
        let shards = changed_shards(Some(&o.extents), &changed.extents);
        assert!(shards.contains(&(2, None)), "{shards:?}");
        assert!(!changed.meta_differs(&o));
        changed.size += 1;
        assert!(changed.meta_differs(&o));
    }

    #[test]
    fn format_1_records_keep_their_extents() {
        let o = sample();
        let r = OnodeRecord {
            size: o.size,
            extents: o.extents.iter().map(ExtentRecord::from).collect(),
            attrs: o.attrs.clone(),
        };
        assert_eq!(
            Onode::decode(&prost::Message::encode_to_vec(&r), &[], 2000).unwrap(),
            o
        );
    }

    #[test]
    fn keys_nest_by_prefix() {
        assert!(onode_key("c", "a").starts_with(&onode_prefix("c")));
        assert!(!onode_key("cc", "a").starts_with(&onode_prefix("c")));
        assert!(omap_key("c", "o", b"k") < prefix_end(&omap_prefix("c", "o")));
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert!(validate_name("object", "a\0b").is_err());
        let prefix = extent_shard_prefix("c", "o");
        assert_eq!(extent_shard_prefix_of(&onode_key("c", "o")), prefix);
        let k = extent_shard_key("c", "o", 7);
        assert_eq!(shard_of_key(&prefix, &k).unwrap(), 7);
        assert!(k < prefix_end(&prefix));
        assert!(!extent_shard_key("c", "o\u{1}", 0).starts_with(&prefix));
    }
}
