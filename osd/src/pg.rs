//! A placement group as one OSD holds it: its collection in the object store, its version
//! and log, and (on the primary) the map epoch it was brought in line under.
//!
//! Versions order every change of a PG: `(epoch << 32) | seq`, where epoch is the map epoch
//! of the interval the primary activated in. A later interval's writes always sort after an
//! earlier one's, so when members disagree the newest version wins even over a write a
//! failed primary applied alone at the same sequence number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use cairn_common::placement::PgId;

use crate::error::StoreError;
use crate::mutation::{decode_u64, encode_u64};
use crate::{ObjectStore, Op, Transaction};

/// The object in each PG collection holding the PG's own state: attribute `last_update`
/// and the log as omap (version → entry). Its name starts with a byte clients cannot use.
pub const PG_META: &str = "\u{1}pg";
const ATTR_LAST_UPDATE: &str = "last_update";
/// The object listing what the member lacks (omap: object name → the PG's version of it, see
/// `PgState::missing`).
pub const MISSING: &str = "\u{1}missing";
/// Whether an object of a PG collection is the PG's own bookkeeping (`PG_META`, the rollback
/// stash): names clients cannot use, left out of listings and comparisons.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('\u{1}')
}

/// Log entries each member keeps (for retried requests now; for recovery later).
pub const LOG_ENTRIES_KEPT: usize = 2000;

/// The collection of one PG member: `pg.1.1f` (replicated) or `pg.1.1fs2` (shard 2).
pub fn collection(pg: PgId, shard: i32) -> String {
    if shard < 0 {
        format!("pg.{pg}")
    } else {
        format!("pg.{pg}s{shard}")
    }
}

/// The version after `last` for a write in an interval that began at `epoch`.
pub fn next_version(last: u64, epoch: u64) -> u64 {
    if last >> 32 >= epoch {
        last + 1
    } else {
        (epoch << 32) | 1
    }
}

/// What one member knows of its PG, guarded by the PG's lock: writes, sub-ops and
/// activation run one at a time per PG, which keeps every member's history a prefix of the
/// primary's plus at most the one write in flight.
#[derive(Default)]
pub struct PgState {
    pub loaded: bool,
    pub last_update: u64,
    /// (version, request id) of the newest entries, oldest first.
    log: VecDeque<(u64, String)>,
    reqids: HashMap<String, u64>,
    /// On the primary: the map epoch it brought the PG in line under. A map's epoch fixes
    /// the PG's members (and their boot epochs), so any change of them changes the epoch.
    pub active: Option<u64>,
    /// The newest interval epoch a primary has queried this member for: sub-ops from a
    /// primary of an older interval (one with an old map) are refused, so it cannot write
    /// behind the back of its successor.
    pub min_epoch: u64,
    /// The member holds a rollback stash (see `stash`).
    pub stashed: bool,
    /// Objects this member lacks the PG's version of, as its primary left them for recovery
    /// in the background: name → that version (0: the PG holds none). Kept in the store, so
    /// that a member never passes for holding what it has not received yet.
    pub missing: BTreeMap<String, u64>,
    /// On the primary: what recovery still has to bring in line in the active interval.
    pub recovery: crate::recovery::Plan,
    /// On the primary: members that held nothing of the PG when it activated (new or emptied
    /// OSDs), whose filling is backfill.
    pub empty_members: std::collections::BTreeSet<crate::members::Member>,
}

pub struct Pg {
    pub id: PgId,
    pub shard: i32,
    pub coll: String,
    pub state: tokio::sync::Mutex<PgState>,
}

impl Pg {
    pub fn new(id: PgId, shard: i32) -> Arc<Pg> {
        Arc::new(Pg {
            id,
            shard,
            coll: collection(id, shard),
            state: tokio::sync::Mutex::new(PgState::default()),
        })
    }
}

impl PgState {
    /// Reads the PG's version and log from the store, creating its collection on first use.
    pub fn load(&mut self, store: &ObjectStore, coll: &str) -> Result<(), StoreError> {
        if self.loaded {
            return Ok(());
        }
        if !store.list_collections()?.iter().any(|c| c == coll) {
            let mut txn = Transaction::new();
            txn.create_collection(coll);
            txn.push(Op::Touch {
                coll: coll.into(),
                oid: PG_META.into(),
            });
            store.apply(&txn)?;
        }
        let attrs = store.getattrs(coll, PG_META)?;
        self.last_update = decode_u64(attrs.get(ATTR_LAST_UPDATE));
        self.stashed = crate::stash::read(store, coll)?.is_some();
        self.missing = read_missing(store, coll)?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.omap_get(coll, PG_META, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in page {
                let version = decode_u64(Some(&k));
                let reqid = String::from_utf8_lossy(&v).into_owned();
                self.remember(version, reqid);
            }
        }
        self.loaded = true;
        Ok(())
    }

    fn remember(&mut self, version: u64, reqid: String) {
        if !reqid.is_empty() {
            self.reqids.insert(reqid.clone(), version);
        }
        self.log.push_back((version, reqid));
    }

    /// The version a request already applied at, if the log still holds it.
    pub fn applied(&self, reqid: &str) -> Option<u64> {
        if reqid.is_empty() {
            return None;
        }
        self.reqids.get(reqid).copied()
    }

    /// Adds the PG bookkeeping of a change at `version` to `txn`: the new `last_update`,
    /// a log entry, and the trimming of the oldest entry beyond the bound.
    pub fn log_ops(&self, txn: &mut Transaction, coll: &str, version: u64, reqid: &str) {
        txn.push(Op::SetAttrs {
            coll: coll.into(),
            oid: PG_META.into(),
            attrs: [(ATTR_LAST_UPDATE.to_string(), encode_u64(version))].into(),
        });
        txn.push(Op::OmapSet {
            coll: coll.into(),
            oid: PG_META.into(),
            entries: [(encode_u64(version), reqid.as_bytes().to_vec())].into(),
        });
        if self.log.len() >= LOG_ENTRIES_KEPT {
            if let Some((oldest, _)) = self.log.front() {
                txn.push(Op::OmapRm {
                    coll: coll.into(),
                    oid: PG_META.into(),
                    keys: vec![encode_u64(*oldest)],
                });
            }
        }
    }

    /// Records in memory what `log_ops` committed.
    pub fn logged(&mut self, version: u64, reqid: &str) {
        self.last_update = version;
        self.remember(version, reqid.to_string());
        while self.log.len() > LOG_ENTRIES_KEPT {
            if let Some((old_version, old)) = self.log.pop_front() {
                if self.reqids.get(&old) == Some(&old_version) {
                    self.reqids.remove(&old);
                }
            }
        }
    }

    /// Sets the member's version without a log entry (the end of recovery).
    pub fn set_last_update_ops(txn: &mut Transaction, coll: &str, version: u64) {
        txn.push(Op::SetAttrs {
            coll: coll.into(),
            oid: PG_META.into(),
            attrs: [(ATTR_LAST_UPDATE.to_string(), encode_u64(version))].into(),
        });
    }

    /// Adds to `txn` the replacement of the member's missing list by `missing`.
    pub fn replace_missing_ops(txn: &mut Transaction, coll: &str, missing: &BTreeMap<String, u64>) {
        txn.push(Op::Touch {
            coll: coll.into(),
            oid: MISSING.into(),
        });
        txn.push(Op::OmapClear {
            coll: coll.into(),
            oid: MISSING.into(),
        });
        if !missing.is_empty() {
            txn.push(Op::OmapSet {
                coll: coll.into(),
                oid: MISSING.into(),
                entries: missing
                    .iter()
                    .map(|(name, v)| (name.as_bytes().to_vec(), encode_u64(*v)))
                    .collect(),
            });
        }
    }

    /// Adds to `txn` taking `object` off the member's missing list (it was just recovered).
    pub fn found_ops(txn: &mut Transaction, coll: &str, object: &str) {
        txn.push(Op::OmapRm {
            coll: coll.into(),
            oid: MISSING.into(),
            keys: vec![object.as_bytes().to_vec()],
        });
    }

    /// The log, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &(u64, String)> {
        self.log.iter()
    }

    /// Adds to `txn` the replacement of the stored log by `entries`.
    pub fn replace_log_ops(txn: &mut Transaction, coll: &str, entries: &[(u64, String)]) {
        txn.push(Op::OmapClear {
            coll: coll.into(),
            oid: PG_META.into(),
        });
        if !entries.is_empty() {
            txn.push(Op::OmapSet {
                coll: coll.into(),
                oid: PG_META.into(),
                entries: entries
                    .iter()
                    .map(|(v, reqid)| (encode_u64(*v), reqid.as_bytes().to_vec()))
                    .collect(),
            });
        }
    }

    /// Records in memory what `replace_log_ops` committed.
    pub fn replaced_log(&mut self, entries: Vec<(u64, String)>) {
        self.log.clear();
        self.reqids.clear();
        for (version, reqid) in entries {
            self.remember(version, reqid);
        }
    }
}

/// The member's missing list as stored (none before the first activation that left one).
fn read_missing(store: &ObjectStore, coll: &str) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = match store.omap_get(coll, MISSING, after.as_deref(), 1024) {
            Ok(page) => page,
            Err(StoreError::NoObject { .. }) => return Ok(out),
            Err(e) => return Err(e),
        };
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        after = Some(last.clone());
        for (k, v) in page {
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                decode_u64(Some(&v)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_a_later_interval_sort_after() {
        let v1 = next_version(0, 5);
        assert_eq!(v1, (5 << 32) | 1);
        let v2 = next_version(v1, 5);
        assert_eq!(v2, v1 + 1);
        let v3 = next_version(v2, 9);
        assert!(v3 > v2 && v3 >> 32 == 9);
        // A stale interval epoch never moves a version backwards.
        assert!(next_version(v3, 5) > v3);
    }

    #[test]
    fn collection_names() {
        let pg = PgId { pool: 1, seed: 31 };
        assert_eq!(collection(pg, -1), "pg.1.1f");
        assert_eq!(collection(pg, 2), "pg.1.1fs2");
    }
}
