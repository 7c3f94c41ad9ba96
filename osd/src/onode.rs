//! How objects are kept in RocksDB: key layout and the encoded object record ("onode").
//!
//! Keys (one key space, ordered bytewise):
//! - `S` — the superblock;
//! - `C<coll>` — a collection;
//! - `O<coll>\0<oid>` — an object's onode (size, extents with checksums, attributes);
//! - `M<coll>\0<oid>\0<key>` — one omap entry.
//!
//! Collection and object names may hold any byte but NUL, so prefixes never collide and a
//! collection's objects list in name order.

use std::collections::BTreeMap;

use crate::error::{Result, StoreError};
use crate::extents::{Extent, ExtentMap};

pub const KEY_SUPERBLOCK: &[u8] = b"S";
/// Prefix of deferred-write records: `D<seq, 8 bytes big-endian>` → pblock (8 bytes) ‖ block.
pub const DEFERRED_PREFIX: &[u8] = b"D";
/// Longest collection or object name.
pub const NAME_BYTES_MAX: usize = 4096;

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
    #[prost(message, repeated, tag = "2")]
    pub extents: Vec<ExtentRecord>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    pub attrs: BTreeMap<String, Vec<u8>>,
}

/// An object's metadata in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Onode {
    pub size: u64,
    pub extents: ExtentMap,
    pub attrs: BTreeMap<String, Vec<u8>>,
}

impl Onode {
    /// Decodes and checks a record read from RocksDB: nothing in it is trusted until its
    /// extents are known to be non-empty, ordered, disjoint, inside the object and the device.
    pub fn decode(bytes: &[u8], total_blocks: u64) -> Result<Onode> {
        let r: OnodeRecord = prost::Message::decode(bytes)
            .map_err(|e| StoreError::Corrupt(format!("undecodable onode: {e}")))?;
        let bad = |why: String| Err(StoreError::Corrupt(format!("onode: {why}")));
        if r.size > crate::apply::OBJECT_BYTES_MAX {
            return bad(format!("size {} exceeds the object limit", r.size));
        }
        let blocks_max = r.size.div_ceil(crate::BLOCK_BYTES as u64);
        let mut next_free = 0u64;
        let mut sorted = r.extents.clone();
        sorted.sort_by_key(|e| e.lblock);
        for e in &sorted {
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
            extents: ExtentMap::from_extents(r.extents.into_iter().map(|e| Extent {
                lblock: e.lblock,
                pblock: e.pblock,
                csums: e.csums,
            })),
            attrs: r.attrs,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let r = OnodeRecord {
            size: self.size,
            extents: self
                .extents
                .iter()
                .map(|e| ExtentRecord {
                    lblock: e.lblock,
                    pblock: e.pblock,
                    csums: e.csums.clone(),
                })
                .collect(),
            attrs: self.attrs.clone(),
        };
        prost::Message::encode_to_vec(&r)
    }
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

    #[test]
    fn onodes_round_trip() {
        let mut o = Onode {
            size: 12345,
            ..Default::default()
        };
        o.extents.insert(Extent {
            lblock: 2,
            pblock: 77,
            csums: vec![1, 2, 3],
        });
        o.attrs.insert("_".into(), b"v".to_vec());
        o.size = 5 * crate::BLOCK_BYTES as u64;
        assert_eq!(Onode::decode(&o.encode(), 100).unwrap(), o);
        assert!(Onode::decode(&[0xff, 0xff, 0xff], 100).is_err());
        // Outside the device, past the size, overlapping, empty: all refused.
        assert!(Onode::decode(&o.encode(), 79).is_err());
        let mut small = o.clone();
        small.size = 100;
        assert!(Onode::decode(&small.encode(), 100).is_err());
        let mut r: OnodeRecord = prost::Message::decode(o.encode().as_slice()).unwrap();
        r.extents.push(ExtentRecord {
            lblock: 3,
            pblock: 90,
            csums: vec![0],
        });
        assert!(Onode::decode(&prost::Message::encode_to_vec(&r), 100).is_err());
        r.extents.pop();
        r.extents.push(ExtentRecord {
            lblock: 0,
            pblock: 90,
            csums: vec![],
        });
        assert!(Onode::decode(&prost::Message::encode_to_vec(&r), 100).is_err());
    }

    #[test]
    fn keys_nest_by_prefix() {
        assert!(onode_key("c", "a").starts_with(&onode_prefix("c")));
        assert!(!onode_key("cc", "a").starts_with(&onode_prefix("c")));
        assert!(omap_key("c", "o", b"k") < prefix_end(&omap_prefix("c", "o")));
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert!(validate_name("object", "a\0b").is_err());
    }
}
