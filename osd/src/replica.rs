//! What a PG member does for its primary: apply a sub-op, describe its state (query), and
//! hand over an object whole (pull). The primary calls the same functions on itself.

use std::collections::HashMap;

use cairn_common::placement::PgId;
use cairn_common::proto::{
    LogEntry, Mutation, OpResult, PgPullReply, PgQueryReply, ShardReadReply, ShardReadRequest,
    SubOpReply, SubOpRequest,
};

use crate::error::StoreError;
use crate::mutation::{self, decode_u64, ATTR_VERSION};
use crate::node::OsdNode;
use crate::pg::{is_internal, Pg, PgState};
use crate::{stash, Transaction};

/// Loads the member's PG state from the store once (creating its collection on first use).
pub async fn ensure_loaded(node: &OsdNode, pg: &Pg, st: &mut PgState) -> Result<(), StoreError> {
    if st.loaded {
        return Ok(());
    }
    let coll = pg.coll.clone();
    let loaded = node
        .blocking(move |store| {
            let mut fresh = PgState::default();
            fresh.load(store, &coll)?;
            Ok(fresh)
        })
        .await?;
    *st = loaded;
    Ok(())
}

pub fn result_of(e: &StoreError) -> OpResult {
    match e {
        StoreError::NoObject { .. } => OpResult::NotFound,
        StoreError::NoSpace { .. } => OpResult::NoSpace,
        StoreError::Invalid(_) => OpResult::Invalid,
        StoreError::ChecksumMismatch { .. } | StoreError::Io(_) | StoreError::Corrupt(_) => {
            OpResult::IoError
        }
        _ => OpResult::Retry,
    }
}

fn sub_reply(result: OpResult, message: impl Into<String>) -> SubOpReply {
    SubOpReply {
        result: result as i32,
        message: message.into(),
    }
}

/// Applies a primary's change durably. A regular sub-op must follow the member's current
/// version exactly (`prior_version`); a member out of step refuses, and the primary brings it
/// in line before writing again.
pub async fn apply_sub_op(node: &OsdNode, req: SubOpRequest) -> SubOpReply {
    if !req.recovery {
        node.recovery_throttle.client_io();
    }
    let pg = node.pg_of(req.pool, req.pg, req.shard);
    let mut st = pg.state.lock().await;
    apply_locked(node, &pg, &mut st, req).await
}

/// `apply_sub_op` with the PG's lock already held (the primary applying to itself).
pub async fn apply_locked(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    req: SubOpRequest,
) -> SubOpReply {
    if let Err(e) = ensure_loaded(node, pg, st).await {
        return sub_reply(result_of(&e), e.to_string());
    }
    if req.osdmap_epoch < st.min_epoch {
        return sub_reply(
            OpResult::Retry,
            format!(
                "osd.{} serves pg {} for an interval of epoch {}; this change is from epoch {}",
                node.id, pg.id, st.min_epoch, req.osdmap_epoch
            ),
        );
    }
    if !req.recovery && st.last_update != req.prior_version {
        return sub_reply(
            OpResult::Retry,
            format!(
                "osd.{} is out of step in pg {}: at version {:#x}, the primary wrote after {:#x}",
                node.id, pg.id, st.last_update, req.prior_version
            ),
        );
    }
    if !req.recovery && st.missing.contains_key(&req.object) {
        // The primary recovers an object before it writes it; a write on a stale copy
        // would be applied to the wrong state.
        return sub_reply(
            OpResult::Retry,
            format!(
                "osd.{} lacks the current version of {} in pg {}: recover it first",
                node.id, req.object, pg.id
            ),
        );
    }
    let set_version_only = req.recovery && req.object.is_empty();
    if set_version_only && req.expect_prior && st.last_update != req.prior_version {
        // Something changed the member since the primary's query (a stray write of an older
        // primary after a restart lost the fence): the primary must ask again.
        return sub_reply(
            OpResult::Retry,
            format!(
                "osd.{} moved to version {:#x} in pg {} since it was queried at {:#x}",
                node.id, st.last_update, pg.id, req.prior_version
            ),
        );
    }
    let found = req.recovery && !set_version_only && st.missing.contains_key(&req.object);
    let stashing = req.stash && !req.recovery && !set_version_only;
    let existed = if stashing {
        match exists(node, &pg.coll, &req.object).await {
            Ok(e) => e,
            Err(e) => return sub_reply(result_of(&e), e.to_string()),
        }
    } else {
        false
    };
    let entry = entry_of(&req);
    let mut txn = Transaction::new();
    let new_log: Option<Vec<LogEntry>> = (set_version_only && req.replace_log).then_some(req.log);
    if set_version_only {
        PgState::start_interval_ops(&mut txn, &pg.coll, req.version, req.log_rules);
        if let Some(entries) = &new_log {
            PgState::replace_log_ops(&mut txn, &pg.coll, entries);
        }
        if !req.missing.is_empty() || !st.missing.is_empty() {
            let missing = req.missing.iter().map(|(k, v)| (k.clone(), *v)).collect();
            PgState::replace_missing_ops(&mut txn, &pg.coll, &missing);
        }
        // Every member is in line: no write can need rolling back.
        if st.stashed {
            stash::clear_ops(&mut txn, &pg.coll);
        }
    } else {
        if stashing {
            let (coll, oid) = (&pg.coll, &req.object);
            stash::stash_ops(&mut txn, coll, oid, req.version, existed, st.stashed);
        }
        if let Err(e) =
            mutation::to_store_ops(&mut txn, &pg.coll, &req.object, req.mutations, req.version)
        {
            return sub_reply(OpResult::Invalid, e.to_string());
        }
        if !req.recovery {
            st.log_ops(&mut txn, &pg.coll, &entry);
        }
        if found {
            PgState::found_ops(&mut txn, &pg.coll, &req.object);
        }
    }
    match node.blocking(move |store| store.apply(&txn)).await {
        Ok(()) => {
            if set_version_only {
                st.last_update = req.version;
                st.log_rules = req.log_rules;
                st.stashed = false;
                st.missing = req.missing.into_iter().collect();
                if let Some(entries) = new_log {
                    st.replaced_log(entries);
                }
            } else if !req.recovery {
                st.stashed |= stashing;
                st.logged(entry);
            } else if found {
                st.missing.remove(&req.object);
            }
            sub_reply(OpResult::Ok, "")
        }
        Err(e) => {
            tracing::warn!(pg = %pg.id, object = %req.object, error = %e, "sub-op failed");
            sub_reply(result_of(&e), e.to_string())
        }
    }
}

/// The log entry of a client write's sub-op.
fn entry_of(req: &SubOpRequest) -> LogEntry {
    LogEntry {
        version: req.version,
        reqid: req.reqid.clone(),
        object: Some(req.object.clone()),
    }
}

async fn exists(node: &OsdNode, coll: &str, oid: &str) -> Result<bool, StoreError> {
    let (coll, oid) = (coll.to_string(), oid.to_string());
    node.blocking(move |store| match store.getattrs(&coll, &oid) {
        Ok(_) => Ok(true),
        Err(StoreError::NoObject { .. }) => Ok(false),
        Err(e) => Err(e),
    })
    .await
}

/// Which objects' versions a query lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Every object's (an older primary's query, or a backfill).
    All,
    /// These objects' (those the logs say members may disagree on); with none named, no
    /// version but the count of objects the member holds.
    Named(Vec<String>),
}

impl Listing {
    pub fn of_request(skip_objects: bool, names: Vec<String>) -> Listing {
        if skip_objects {
            Listing::Named(names)
        } else {
            Listing::All
        }
    }
}

/// The member's version of the PG, its log, and the versions of the objects `listing` asks for.
pub async fn query(
    node: &OsdNode,
    pg_id: PgId,
    shard: i32,
    epoch: u64,
    listing: Listing,
) -> PgQueryReply {
    let pg = node.pg(pg_id, shard);
    let mut st = pg.state.lock().await;
    query_locked(node, &pg, &mut st, epoch, listing).await
}

/// `query` with the PG's lock already held. The querying primary's interval `epoch` fences
/// primaries of older intervals from then on.
pub async fn query_locked(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    epoch: u64,
    listing: Listing,
) -> PgQueryReply {
    if epoch < st.min_epoch {
        return PgQueryReply {
            result: OpResult::Retry as i32,
            message: format!(
                "osd.{} serves pg {} for an interval of epoch {}, newer than {epoch}",
                node.id, pg.id, st.min_epoch
            ),
            ..PgQueryReply::default()
        };
    }
    st.min_epoch = epoch;
    if let Err(e) = ensure_loaded(node, pg, st).await {
        return PgQueryReply {
            result: result_of(&e) as i32,
            message: e.to_string(),
            ..PgQueryReply::default()
        };
    }
    let coll = pg.coll.clone();
    let stashed = st.stashed;
    let objects = node
        .blocking(move |store| {
            let stash = if stashed {
                stash::read(store, &coll)?
            } else {
                None
            };
            let (objects, count) = match listing {
                Listing::All => {
                    let all = object_versions(store, &coll)?;
                    let count = all.len() as u64;
                    (all, count)
                }
                Listing::Named(names) if names.is_empty() => {
                    (HashMap::new(), object_count(store, &coll)?)
                }
                Listing::Named(names) => (named_versions(store, &coll, &names)?, 0),
            };
            Ok((objects, count, stash))
        })
        .await;
    match objects {
        Ok((objects, object_count, stashed)) => PgQueryReply {
            result: OpResult::Ok as i32,
            message: String::new(),
            last_update: st.last_update,
            log_rules: st.log_rules,
            objects,
            object_count,
            stashed,
            missing: st.missing.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            log: st.entries().cloned().collect(),
        },
        Err(e) => PgQueryReply {
            result: result_of(&e) as i32,
            message: e.to_string(),
            ..PgQueryReply::default()
        },
    }
}

/// Calls `f` with the name of every object of the PG (not its own bookkeeping).
fn each_object(
    store: &crate::ObjectStore,
    coll: &str,
    mut f: impl FnMut(String) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        let (names, next) = store.list(coll, after.as_deref(), 1024)?;
        for name in names.into_iter().filter(|n| !is_internal(n)) {
            f(name)?;
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

fn object_versions(
    store: &crate::ObjectStore,
    coll: &str,
) -> Result<HashMap<String, u64>, StoreError> {
    let mut out = HashMap::new();
    each_object(store, coll, |name| {
        let attrs = store.getattrs(coll, &name)?;
        out.insert(name, decode_u64(attrs.get(ATTR_VERSION)));
        Ok(())
    })?;
    Ok(out)
}

/// The versions of those of `names` the member holds.
fn named_versions(
    store: &crate::ObjectStore,
    coll: &str,
    names: &[String],
) -> Result<HashMap<String, u64>, StoreError> {
    let mut out = HashMap::new();
    for name in names.iter().filter(|n| !is_internal(n)) {
        match store.getattrs(coll, name) {
            Ok(attrs) => {
                out.insert(name.clone(), decode_u64(attrs.get(ATTR_VERSION)));
            }
            Err(StoreError::NoObject { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// How many objects the member holds in the PG (names only: no object is read).
fn object_count(store: &crate::ObjectStore, coll: &str) -> Result<u64, StoreError> {
    let mut count = 0;
    each_object(store, coll, |_| {
        count += 1;
        Ok(())
    })?;
    Ok(count)
}

/// One object of the member's PG, whole, as mutations that recreate it.
pub async fn pull(node: &OsdNode, pg_id: PgId, shard: i32, object: String) -> PgPullReply {
    let pg = node.pg(pg_id, shard);
    let coll = pg.coll.clone();
    let state = node
        .blocking(move |store| {
            let state = mutation::object_state(store, &coll, &object)?;
            let version = match &state {
                Some(_) => decode_u64(store.getattrs(&coll, &object)?.get(ATTR_VERSION)),
                None => 0,
            };
            Ok((state, version))
        })
        .await;
    match state {
        Ok((state, version)) => PgPullReply {
            result: OpResult::Ok as i32,
            message: String::new(),
            exists: state.is_some(),
            mutations: state.unwrap_or_default(),
            version,
        },
        Err(e) => PgPullReply {
            result: result_of(&e) as i32,
            message: e.to_string(),
            ..PgPullReply::default()
        },
    }
}

/// A byte range of the member's shard of `object`, with the object's version.
pub async fn shard_read(node: &OsdNode, req: ShardReadRequest) -> ShardReadReply {
    let pg = node.pg_of(req.pool, req.pg, req.shard);
    let coll = pg.coll.clone();
    let result = node
        .blocking(move |store| {
            let version = decode_u64(store.getattrs(&coll, &req.object)?.get(ATTR_VERSION));
            let data = store.read(&coll, &req.object, req.offset, req.length)?;
            Ok((data, version))
        })
        .await;
    match result {
        Ok((data, version)) => ShardReadReply {
            result: OpResult::Ok as i32,
            message: String::new(),
            data,
            version,
        },
        Err(e) => {
            if let StoreError::ChecksumMismatch { .. } = e {
                metrics::counter!("cairn_osd_checksum_errors_total").increment(1);
                tracing::error!(pg = %pg.id, shard = pg.shard, error = %e, "shard read failed its checksum");
            }
            ShardReadReply {
                result: result_of(&e) as i32,
                message: e.to_string(),
                ..ShardReadReply::default()
            }
        }
    }
}

/// Mutations from a pull reply: the object's state, or `None` when the source lacks it.
pub fn pulled_state(reply: &PgPullReply) -> Option<Vec<Mutation>> {
    reply.exists.then(|| reply.mutations.clone())
}
