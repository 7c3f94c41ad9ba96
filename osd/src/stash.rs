//! Rollback stashes for erasure-coded writes in a degraded PG. With fewer than 2k − 1 shards
//! up, a write that reaches some members and not others can leave neither the old nor the new
//! version on k shards (the old stripes overwritten on some, the new ones missing on others).
//! So each member keeps, in the same transaction as the change, the object as it was before
//! it — one stash per PG member, since a PG's writes run one at a time, each acknowledged
//! before the next. Activation counts a stashed state as a shard of its version (rolling the
//! write back when the new version cannot be decoded) and clears the stashes once every
//! member is in line.

use cairn_common::proto::Stashed;

use crate::error::StoreError;
use crate::mutation::{decode_u64, encode_u64, ATTR_VERSION};
use crate::{ObjectStore, Op, Transaction};

/// The stash object of a PG member's collection (its name starts with a byte clients cannot use).
pub const STASH: &str = "\u{1}stash";
/// Attributes of the stash itself, never copied out of it.
pub const ATTR_PREFIX: &str = "_stash";
const ATTR_OF: &str = "_stash_of";
const ATTR_FOR: &str = "_stash_for";
const ATTR_ABSENT: &str = "_stash_absent";

/// Whether writes to an erasure-coded PG of `members` members up must stash (fewer than
/// 2k − 1: a write reaching some of them could leave neither version on k shards).
pub fn needed(k: usize, members: usize) -> bool {
    members + 1 < 2 * k
}

/// Adds to `txn` the stash of `oid` as it is before its change at `version`.
pub fn stash_ops(
    txn: &mut Transaction,
    coll: &str,
    oid: &str,
    version: u64,
    existed: bool,
    had_stash: bool,
) {
    let (c, s) = (coll.to_string(), STASH.to_string());
    let mut attrs = std::collections::BTreeMap::from([
        (ATTR_OF.to_string(), oid.as_bytes().to_vec()),
        (ATTR_FOR.to_string(), encode_u64(version)),
    ]);
    if existed {
        txn.push(Op::Clone {
            coll: c.clone(),
            src: oid.to_string(),
            dst: s.clone(),
        });
    } else {
        if had_stash {
            txn.push(Op::Remove {
                coll: c.clone(),
                oid: s.clone(),
            });
        }
        txn.push(Op::Touch {
            coll: c.clone(),
            oid: s.clone(),
        });
        attrs.insert(ATTR_ABSENT.to_string(), vec![1]);
    }
    txn.push(Op::SetAttrs {
        coll: c,
        oid: s,
        attrs,
    });
}

/// Adds to `txn` the removal of the member's stash.
pub fn clear_ops(txn: &mut Transaction, coll: &str) {
    txn.push(Op::Remove {
        coll: coll.to_string(),
        oid: STASH.to_string(),
    });
}

/// The member's stash, if it has one.
pub fn read(store: &ObjectStore, coll: &str) -> Result<Option<Stashed>, StoreError> {
    let attrs = match store.getattrs(coll, STASH) {
        Ok(a) => a,
        Err(StoreError::NoObject { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(Stashed {
        object: String::from_utf8_lossy(attrs.get(ATTR_OF).map_or(&[][..], |v| v)).into_owned(),
        for_version: decode_u64(attrs.get(ATTR_FOR)),
        absent: attrs.contains_key(ATTR_ABSENT),
        version: decode_u64(attrs.get(ATTR_VERSION)),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stashing_is_needed_only_where_a_partial_write_can_strand_both_versions() {
        // 2+1: with all three shards up, one of the versions always keeps two shards.
        assert!(!super::needed(2, 3));
        assert!(super::needed(2, 2));
        // 4+2: a write reaching three of six leaves neither version on four.
        assert!(super::needed(4, 6));
    }
}
