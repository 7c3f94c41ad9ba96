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
use cairn_common::proto::LogEntry;

use crate::error::StoreError;
use crate::mutation::{decode_u64, encode_u64};
use crate::{ObjectStore, Op, Transaction};

/// The object in each PG collection holding the PG's own state: attribute `last_update`
/// and the log as omap (version → entry). Its name starts with a byte clients cannot use.
pub const PG_META: &str = "\u{1}pg";
const ATTR_LAST_UPDATE: &str = "last_update";
/// The rules the member's log was kept by (see `LOG_RULES`); absent: 0.
const ATTR_LOG_RULES: &str = "log_rules";
/// The rules this version keeps logs by: entries name their objects, an activation's log keeps
/// every entry heard and names every object it settled. A log an older primary replaced (0)
/// cannot say which objects a member may hold otherwise than its peers.
pub const LOG_RULES: u32 = 1;
/// The object listing what the member lacks (omap: object name → the PG's version of it, see
/// `PgState::missing`).
pub const MISSING: &str = "\u{1}missing";
/// Whether an object of a PG collection is the PG's own bookkeeping (`PG_META`, the rollback
/// stash): names clients cannot use, left out of listings and comparisons.
pub fn is_internal(name: &str) -> bool {
    name.starts_with('\u{1}')
}

/// Log entries each member keeps: for retried requests, and for peering to tell from the logs
/// which objects a member that was away lacks (`peering::candidates`).
pub const LOG_ENTRIES_KEPT: usize = 2000;

/// The first byte of a stored log entry that names its object (see `encode_entry`). A stored
/// entry of an older version is the bare request id, a Rust string: never this byte.
const NAMED_ENTRY: u8 = 0xff;

/// A log entry's stored value: the marker, the request id's length (u32, little-endian),
/// the request id, then the object's name.
fn encode_entry(reqid: &str, object: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + reqid.len() + object.len());
    out.push(NAMED_ENTRY);
    out.extend_from_slice(&(reqid.len() as u32).to_le_bytes());
    out.extend_from_slice(reqid.as_bytes());
    out.extend_from_slice(object.as_bytes());
    out
}

/// A log entry from its stored value; an entry stored before logs named objects (or one
/// that does not parse) comes back without an object.
fn decode_entry(version: u64, value: &[u8]) -> LogEntry {
    let named = value
        .split_first()
        .filter(|(marker, _)| **marker == NAMED_ENTRY)
        .and_then(|(_, rest)| {
            let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            Some((rest.get(4..4 + n)?, &rest[4 + n..]))
        });
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match named {
        Some((reqid, object)) => LogEntry {
            version,
            reqid: text(reqid),
            object: Some(text(object)),
        },
        None => LogEntry {
            version,
            reqid: text(value),
            object: None,
        },
    }
}

/// The stored value of `entry` (the bare request id when it names no object).
fn entry_value(entry: &LogEntry) -> Vec<u8> {
    match &entry.object {
        Some(object) => encode_entry(&entry.reqid, object),
        None => entry.reqid.as_bytes().to_vec(),
    }
}

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
    /// The rules the member's log is kept by (`LOG_RULES`; 0: an older primary's).
    pub log_rules: u32,
    /// The newest entries, oldest first.
    log: VecDeque<LogEntry>,
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
        self.log_rules = decode_u64(attrs.get(ATTR_LOG_RULES)).min(u64::from(u32::MAX)) as u32;
        self.stashed = crate::stash::read(store, coll)?.is_some();
        self.missing = read_missing(store, coll)?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.omap_get(coll, PG_META, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in page {
                self.remember(decode_entry(decode_u64(Some(&k)), &v));
            }
        }
        self.loaded = true;
        Ok(())
    }

    fn remember(&mut self, entry: LogEntry) {
        if !entry.reqid.is_empty() {
            self.reqids.insert(entry.reqid.clone(), entry.version);
        }
        self.log.push_back(entry);
    }

    /// The version a request already applied at, if the log still holds it.
    pub fn applied(&self, reqid: &str) -> Option<u64> {
        if reqid.is_empty() {
            return None;
        }
        self.reqids.get(reqid).copied()
    }

    /// Adds the PG bookkeeping of a change to `txn`: the new `last_update` (the entry's
    /// version), the entry, and the trimming of the oldest entry beyond the bound.
    pub fn log_ops(&self, txn: &mut Transaction, coll: &str, entry: &LogEntry) {
        txn.push(Op::SetAttrs {
            coll: coll.into(),
            oid: PG_META.into(),
            attrs: [(ATTR_LAST_UPDATE.to_string(), encode_u64(entry.version))].into(),
        });
        txn.push(Op::OmapSet {
            coll: coll.into(),
            oid: PG_META.into(),
            entries: [(encode_u64(entry.version), entry_value(entry))].into(),
        });
        if self.log.len() >= LOG_ENTRIES_KEPT {
            if let Some(oldest) = self.log.front() {
                txn.push(Op::OmapRm {
                    coll: coll.into(),
                    oid: PG_META.into(),
                    keys: vec![encode_u64(oldest.version)],
                });
            }
        }
    }

    /// Records in memory what `log_ops` committed.
    pub fn logged(&mut self, entry: LogEntry) {
        self.last_update = entry.version;
        self.remember(entry);
        while self.log.len() > LOG_ENTRIES_KEPT {
            if let Some(old) = self.log.pop_front() {
                if self.reqids.get(&old.reqid) == Some(&old.version) {
                    self.reqids.remove(&old.reqid);
                }
            }
        }
    }

    /// Sets the member's version without a log entry, and the rules its log is kept by (the
    /// start of an interval).
    pub fn start_interval_ops(txn: &mut Transaction, coll: &str, version: u64, log_rules: u32) {
        txn.push(Op::SetAttrs {
            coll: coll.into(),
            oid: PG_META.into(),
            attrs: [
                (ATTR_LAST_UPDATE.to_string(), encode_u64(version)),
                (ATTR_LOG_RULES.to_string(), encode_u64(u64::from(log_rules))),
            ]
            .into(),
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
    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.log.iter()
    }

    /// Adds to `txn` the replacement of the stored log by `entries`.
    pub fn replace_log_ops(txn: &mut Transaction, coll: &str, entries: &[LogEntry]) {
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
                    .map(|e| (encode_u64(e.version), entry_value(e)))
                    .collect(),
            });
        }
    }

    /// Records in memory what `replace_log_ops` committed.
    pub fn replaced_log(&mut self, entries: Vec<LogEntry>) {
        self.log.clear();
        self.reqids.clear();
        for entry in entries {
            self.remember(entry);
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
    fn log_entries_keep_their_object_and_old_entries_read_without_one() {
        let named = LogEntry {
            version: 7,
            reqid: "client.4:12".into(),
            object: Some("obj\u{0}with:colons".into()),
        };
        assert_eq!(decode_entry(7, &entry_value(&named)), named);
        let unnamed = LogEntry {
            version: 8,
            reqid: "client.4:13".into(),
            object: None,
        };
        assert_eq!(decode_entry(8, &entry_value(&unnamed)), unnamed);
        // A stored request id alone (an older OSD's entry), and a truncated named value.
        assert_eq!(
            decode_entry(9, b"r"),
            LogEntry {
                version: 9,
                reqid: "r".into(),
                object: None
            }
        );
        assert_eq!(
            decode_entry(9, &[NAMED_ENTRY, 9, 0, 0, 0, b'x']).object,
            None
        );
    }

    #[test]
    fn collection_names() {
        let pg = PgId { pool: 1, seed: 31 };
        assert_eq!(collection(pg, -1), "pg.1.1f");
        assert_eq!(collection(pg, 2), "pg.1.1fs2");
    }
}
