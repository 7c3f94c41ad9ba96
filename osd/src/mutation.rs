//! Mutations (the wire form of a change to one object, as the primary resolved it) turned into
//! object-store transactions, the same way on every member; and an object's whole state
//! turned back into mutations, to copy it to a member that lacks it.
//!
//! Inside a PG collection, an object's bookkeeping lives in store attributes with reserved
//! prefixes next to the user's: `u.NAME` user xattrs, `_v` the object's version, `_size` the
//! logical size of an erasure-coded object (its shard holds whole stripes). The PG's own
//! state lives in the object `PG_META` (see `pg`).

use prost::bytes::Bytes;
use std::collections::BTreeMap;

use cairn_common::proto::mutation::M;
use cairn_common::proto::{
    BytesKeyValue, Empty, KeyValue, Mutation, OmapEntries, OmapKeys, WriteAt,
};

use crate::error::StoreError;
use crate::{ObjectStore, Op, Transaction};

pub const ATTR_VERSION: &str = "_v";
pub const ATTR_LOGICAL_SIZE: &str = "_size";
const USER_ATTR_PREFIX: &str = "u.";

/// The store attribute holding user xattr `name`.
pub fn user_attr(name: &str) -> String {
    format!("{USER_ATTR_PREFIX}{name}")
}

/// The user xattrs among an object's store attributes.
pub fn user_attrs(attrs: &BTreeMap<String, Vec<u8>>) -> Vec<KeyValue> {
    attrs
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(USER_ATTR_PREFIX).map(|name| KeyValue {
                key: name.to_string(),
                value: v.clone(),
            })
        })
        .collect()
}

pub fn encode_u64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

pub fn decode_u64(bytes: Option<&Vec<u8>>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub fn write(offset: u64, data: impl Into<Bytes>) -> Mutation {
    Mutation {
        m: Some(M::Write(WriteAt {
            offset,
            data: data.into(),
        })),
    }
}

pub fn truncate(size: u64) -> Mutation {
    Mutation {
        m: Some(M::Truncate(size)),
    }
}

pub fn touch() -> Mutation {
    Mutation {
        m: Some(M::Touch(Empty {})),
    }
}

pub fn remove() -> Mutation {
    Mutation {
        m: Some(M::Remove(Empty {})),
    }
}

pub fn set_attr(key: &str, value: Vec<u8>) -> Mutation {
    Mutation {
        m: Some(M::SetXattr(KeyValue {
            key: key.to_string(),
            value,
        })),
    }
}

/// Whether the mutations leave the object removed.
pub fn ends_removed(muts: &[Mutation]) -> bool {
    matches!(muts.last().and_then(|m| m.m.as_ref()), Some(M::Remove(_)))
}

/// Appends the store ops for `muts` on `coll/oid`, then stamps the object with `version`
/// (unless the mutations remove it). Attribute names in `SetXattr`/`RmXattr` are store
/// attribute names: callers map user names through `user_attr`. Takes the mutations, so
/// their data moves into the transaction without a copy.
pub fn to_store_ops(
    txn: &mut Transaction,
    coll: &str,
    oid: &str,
    muts: Vec<Mutation>,
    version: u64,
) -> Result<(), StoreError> {
    let (c, o) = (coll.to_string(), oid.to_string());
    let removed = ends_removed(&muts);
    for m in muts {
        let op = match m.m {
            Some(M::Write(w)) => Op::Write {
                coll: c.clone(),
                oid: o.clone(),
                offset: w.offset,
                data: w.data,
            },
            Some(M::Truncate(size)) => Op::Truncate {
                coll: c.clone(),
                oid: o.clone(),
                size,
            },
            Some(M::Remove(_)) => Op::Remove {
                coll: c.clone(),
                oid: o.clone(),
            },
            Some(M::Touch(_)) => Op::Touch {
                coll: c.clone(),
                oid: o.clone(),
            },
            Some(M::SetXattr(kv)) => Op::SetAttrs {
                coll: c.clone(),
                oid: o.clone(),
                attrs: BTreeMap::from([(kv.key, kv.value)]),
            },
            Some(M::RmXattr(name)) => Op::RmAttr {
                coll: c.clone(),
                oid: o.clone(),
                name,
            },
            Some(M::OmapSet(e)) => Op::OmapSet {
                coll: c.clone(),
                oid: o.clone(),
                entries: e.entries.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            },
            Some(M::OmapRm(k)) => Op::OmapRm {
                coll: c.clone(),
                oid: o.clone(),
                keys: k.keys,
            },
            None => return Err(StoreError::Invalid("an empty mutation".into())),
        };
        txn.push(op);
    }
    if !removed {
        txn.push(Op::SetAttrs {
            coll: c,
            oid: o,
            attrs: BTreeMap::from([(ATTR_VERSION.to_string(), encode_u64(version))]),
        });
    }
    Ok(())
}

/// Chunk size for copying object data in mutations.
const COPY_CHUNK_BYTES: u64 = 4 << 20;

/// The object's whole state (data, store attributes, omap) as mutations that recreate it from
/// nothing, or `None` when it does not exist.
pub fn object_state(
    store: &ObjectStore,
    coll: &str,
    oid: &str,
) -> Result<Option<Vec<Mutation>>, StoreError> {
    let attrs = match store.getattrs(coll, oid) {
        Ok(a) => a,
        Err(StoreError::NoObject { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = store.stat(coll, oid)?;
    let mut muts = vec![touch()];
    let mut offset = 0;
    while offset < size {
        let data = store.read(coll, oid, offset, COPY_CHUNK_BYTES)?;
        let n = data.len() as u64;
        muts.push(write(offset, data));
        offset += n.max(1);
    }
    muts.push(truncate(size));
    let copied = |k: &String| k != ATTR_VERSION && !k.starts_with(crate::stash::ATTR_PREFIX);
    for (k, v) in attrs.into_iter().filter(|(k, _)| copied(k)) {
        muts.push(set_attr(&k, v));
    }
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.omap_get(coll, oid, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        muts.push(Mutation {
            m: Some(M::OmapSet(OmapEntries {
                entries: page
                    .into_iter()
                    .map(|(key, value)| BytesKeyValue { key, value })
                    .collect(),
            })),
        });
    }
    Ok(Some(muts))
}

/// Mutations that replace whatever a member holds with `state` (or remove it when `None`).
pub fn replace_with(existing: bool, state: Option<Vec<Mutation>>) -> Vec<Mutation> {
    let mut muts = Vec::new();
    if existing {
        muts.push(remove());
    }
    if let Some(s) = state {
        muts.extend(s);
    }
    muts
}

pub fn omap_rm(keys: Vec<Vec<u8>>) -> Mutation {
    Mutation {
        m: Some(M::OmapRm(OmapKeys { keys })),
    }
}
