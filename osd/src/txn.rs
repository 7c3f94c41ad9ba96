//! Transactions: a batch of operations the store applies atomically and durably. When
//! `ObjectStore::apply` returns Ok, every op is durable; when it returns an error, none is.
//!
//! Object operations other than `Remove`, `RmAttr`, `OmapRm`, `Clone` and `Rename` create the
//! object when it does not exist. Every object operation needs its collection to exist.

use std::collections::BTreeMap;

use prost::bytes::Bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    CreateCollection {
        coll: String,
    },
    /// The collection must be empty.
    RemoveCollection {
        coll: String,
    },
    /// Creates the object if it does not exist.
    Touch {
        coll: String,
        oid: String,
    },
    Write {
        coll: String,
        oid: String,
        offset: u64,
        data: Bytes,
    },
    /// Zeroes `[offset, offset + len)`; extends the object if the range ends past its size.
    Zero {
        coll: String,
        oid: String,
        offset: u64,
        len: u64,
    },
    Truncate {
        coll: String,
        oid: String,
        size: u64,
    },
    Remove {
        coll: String,
        oid: String,
    },
    SetAttrs {
        coll: String,
        oid: String,
        attrs: BTreeMap<String, Vec<u8>>,
    },
    RmAttr {
        coll: String,
        oid: String,
        name: String,
    },
    OmapSet {
        coll: String,
        oid: String,
        entries: BTreeMap<Vec<u8>, Vec<u8>>,
    },
    OmapRm {
        coll: String,
        oid: String,
        keys: Vec<Vec<u8>>,
    },
    OmapClear {
        coll: String,
        oid: String,
    },
    /// Makes `dst` a copy of `src` (data, attributes, omap), replacing what `dst` held.
    Clone {
        coll: String,
        src: String,
        dst: String,
    },
    /// Moves `src` to `dst`, replacing what `dst` held.
    Rename {
        coll: String,
        src: String,
        dst: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new() -> Transaction {
        Transaction::default()
    }

    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    pub fn create_collection(&mut self, coll: &str) -> &mut Self {
        self.push(Op::CreateCollection { coll: coll.into() })
    }

    pub fn write(&mut self, coll: &str, oid: &str, offset: u64, data: &[u8]) -> &mut Self {
        self.write_bytes(coll, oid, offset, Bytes::copy_from_slice(data))
    }

    /// A write of data already in a `Bytes` (as the OSD receives it), without a copy.
    pub fn write_bytes(&mut self, coll: &str, oid: &str, offset: u64, data: Bytes) -> &mut Self {
        self.push(Op::Write {
            coll: coll.into(),
            oid: oid.into(),
            offset,
            data,
        })
    }

    pub fn remove(&mut self, coll: &str, oid: &str) -> &mut Self {
        self.push(Op::Remove {
            coll: coll.into(),
            oid: oid.into(),
        })
    }

    /// Every (collection, object) the transaction touches, in a stable order (for locking).
    pub fn objects(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .ops
            .iter()
            .flat_map(|op| match op {
                Op::CreateCollection { coll } | Op::RemoveCollection { coll } => {
                    vec![(coll.clone(), String::new())]
                }
                Op::Touch { coll, oid }
                | Op::Write { coll, oid, .. }
                | Op::Zero { coll, oid, .. }
                | Op::Truncate { coll, oid, .. }
                | Op::Remove { coll, oid }
                | Op::SetAttrs { coll, oid, .. }
                | Op::RmAttr { coll, oid, .. }
                | Op::OmapSet { coll, oid, .. }
                | Op::OmapRm { coll, oid, .. }
                | Op::OmapClear { coll, oid } => vec![(coll.clone(), oid.clone())],
                Op::Clone { coll, src, dst } | Op::Rename { coll, src, dst } => {
                    vec![(coll.clone(), src.clone()), (coll.clone(), dst.clone())]
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}
