//! Client ops on the primary of their PG: check the op is for this OSD in the newest map,
//! bring the PG in line for its interval, then read locally or resolve a write into
//! mutations, apply them here and on every other member at once, and acknowledge only when
//! all have them durable.

use std::sync::atomic::{AtomicBool, Ordering};

use cairn_common::auth::Need;
use cairn_common::maps::{ClusterMaps, OsdMap, Pool};
use cairn_common::placement::{all_pgs, object_pg, pg_acting, primary, PgId};
use cairn_common::proto::object_op::Op;
use cairn_common::proto::{Mutation, OpReply, OpRequest, OpResult, SubOpRequest};
use prost::bytes::Bytes;

use crate::activate::ensure_active;
use crate::ec::Codec;
use crate::erasure;
use crate::error::StoreError;
use crate::members::{self, Member};
use crate::mutation::{self, decode_u64, user_attr, user_attrs, ATTR_VERSION};
use crate::node::OsdNode;
use crate::pg::{is_internal, next_version, Pg, PgState};
use crate::recovery;
use crate::replica::{self, result_of};
use crate::scrub::{self, Scrub};

/// Longest object name, in bytes.
pub const OBJECT_NAME_BYTES_MAX: usize = 1024;
/// Largest object: recovery moves an object whole in one message and one transaction
/// (Ceph's `osd_max_object_size` is 128 MiB), so this bound keeps every object recoverable.
pub const OBJECT_BYTES_MAX: u64 = crate::IO_BYTES_MAX;

/// Refuses a write or truncate that would make the object larger than `OBJECT_BYTES_MAX`.
pub fn check_object_end(op: &Op, size: Option<u64>) -> Result<(), Box<OpReply>> {
    let end = match op {
        Op::WriteFull(d) => Some(d.len() as u64),
        Op::Write(w) => w.offset.checked_add(w.data.len() as u64),
        Op::Append(d) => size.unwrap_or(0).checked_add(d.len() as u64),
        Op::Truncate(n) => Some(*n),
        _ => return Ok(()),
    };
    match end {
        Some(end) if end <= OBJECT_BYTES_MAX => Ok(()),
        _ => Err(refuse(
            OpResult::Invalid,
            format!("objects are limited to {OBJECT_BYTES_MAX} bytes"),
        )),
    }
}

/// Most entries one omap read or listing returns.
pub const PAGE_ENTRIES_MAX: u32 = 10_000;

pub fn reply(result: OpResult, message: impl Into<String>) -> OpReply {
    OpReply {
        result: result as i32,
        message: message.into(),
        ..OpReply::default()
    }
}

/// A reply that ends an op before it is served (boxed: replies are large).
fn refuse(result: OpResult, message: impl Into<String>) -> Box<OpReply> {
    Box::new(reply(result, message))
}

fn store_error(e: &StoreError) -> OpReply {
    reply(result_of(e), e.to_string())
}

/// Object names: 1 to 1024 bytes, no NUL (the store's key separator), not starting with the
/// byte reserved for a PG's own bookkeeping.
pub fn validate_object_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > OBJECT_NAME_BYTES_MAX {
        return Err(format!(
            "object names are 1 to {OBJECT_NAME_BYTES_MAX} bytes, not {}",
            name.len()
        ));
    }
    if name.contains('\0') || name.starts_with('\u{1}') {
        return Err("object names cannot contain NUL or start with \\x01".into());
    }
    Ok(())
}

fn is_write(op: &Op) -> bool {
    !matches!(
        op,
        Op::Read(_)
            | Op::Stat(_)
            | Op::GetXattrs(_)
            | Op::OmapGet(_)
            | Op::List(_)
            | Op::Scrub(_)
            | Op::PgQuery(_)
    )
}

fn op_of(req: &OpRequest) -> Option<&Op> {
    req.op.as_ref().and_then(|o| o.op.as_ref())
}

/// Whether the op changes data (for the I/O counters).
pub fn op_writes(req: &OpRequest) -> bool {
    op_of(req).is_some_and(is_write)
}

/// The OSD caps an op needs, and what it does (for the refusal).
pub fn op_need(req: &OpRequest) -> (Need, &'static str) {
    match op_of(req) {
        Some(Op::Scrub(_)) => (Need::All, "scrub or repair pgs"),
        Some(op) if is_write(op) => (Need::Write, "write objects"),
        _ => (Need::Read, "read objects"),
    }
}

/// The PG of an op, its members, and this OSD's place among them.
struct Target {
    pg: PgId,
    members: Vec<Member>,
    me: Member,
}

pub async fn handle_op(node: &OsdNode, req: OpRequest) -> OpReply {
    let writes = op_writes(&req);
    let client_io = !matches!(op_of(&req), Some(Op::Scrub(_) | Op::PgQuery(_)));
    if client_io {
        node.recovery_throttle.client_io();
    }
    let written = match op_of(&req) {
        Some(Op::WriteFull(d) | Op::Append(d)) => d.len(),
        Some(Op::Write(w)) => w.data.len(),
        _ => 0,
    } as u64;
    let out = handle_op_inner(node, req).await;
    if out.result == OpResult::Ok as i32 && client_io {
        let io = &node.io;
        let (ops, bytes, n) = if writes {
            (&io.writes, &io.written_bytes, written)
        } else {
            (&io.reads, &io.read_bytes, out.data.len() as u64)
        };
        ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    out
}

async fn handle_op_inner(node: &OsdNode, req: OpRequest) -> OpReply {
    let maps = node.maps_at_least(req.osdmap_epoch).await;
    if let Some(instance) = fenced_instance(&maps.osdmap, &req.reqid) {
        let mut out = reply(
            OpResult::Blocklisted,
            format!("{instance} is blocklisted: it was fenced (its role or its files were given to another)"),
        );
        out.osdmap_epoch = maps.osdmap.epoch;
        return out;
    }
    let mut out = match route(node, &maps, &req) {
        Ok((pool, target)) => {
            let Some(op) = req.op.and_then(|o| o.op) else {
                return reply(OpResult::Invalid, "the request holds no op");
            };
            serve(node, &maps, pool, target, &req.object, &req.reqid, op).await
        }
        Err(refusal) => *refusal,
    };
    out.osdmap_epoch = maps.osdmap.epoch;
    out
}

/// The sender's instance when the map fences it. A request id reads `entity|instance:number`
/// (the OSD prefixes the authenticated entity); the blocklist names instances.
fn fenced_instance<'a>(osdmap: &cairn_common::maps::OsdMap, reqid: &'a str) -> Option<&'a str> {
    let (_, rest) = reqid.split_once('|')?;
    let (instance, _) = rest.rsplit_once(':')?;
    osdmap
        .is_blocklisted(instance, cairn_common::now_ms())
        .then_some(instance)
}

/// Checks the op belongs here, now: the pool exists, this OSD is the PG's primary, enough
/// members are up.
fn route<'a>(
    node: &OsdNode,
    maps: &'a ClusterMaps,
    req: &OpRequest,
) -> Result<(&'a Pool, Target), Box<OpReply>> {
    let osdmap = &maps.osdmap;
    let Some(pool) = osdmap.pools.get(&req.pool) else {
        if req.osdmap_epoch < osdmap.epoch {
            return Err(misdirected(
                maps,
                format!("pool {} does not exist", req.pool),
            ));
        }
        return Err(refuse(
            OpResult::NotFound,
            format!("pool {} does not exist", req.pool),
        ));
    };
    let whole_pg = match op_of(req) {
        Some(Op::List(l)) => Some(l.pg),
        Some(Op::Scrub(s)) => Some(s.pg),
        Some(Op::PgQuery(q)) => Some(q.pg),
        _ => None,
    };
    let pg = match whole_pg {
        Some(seed) if seed < pool.pg_num => PgId {
            pool: req.pool,
            seed,
        },
        Some(seed) => {
            return Err(refuse(
                OpResult::Invalid,
                format!("pool {} has no pg {seed:x}", pool.name),
            ))
        }
        _ => {
            validate_object_name(&req.object).map_err(|e| refuse(OpResult::Invalid, e))?;
            object_pg(req.pool, pool, &req.object)
        }
    };
    let target = target_of(node.id, osdmap, pool, pg).ok_or_else(|| {
        misdirected(
            maps,
            format!(
                "osd.{} is not the primary of pg {pg} at epoch {}",
                node.id, osdmap.epoch
            ),
        )
    })?;
    // A query is answered however few members are up: a PG that cannot serve is what one
    // asks about.
    let query = matches!(op_of(req), Some(Op::PgQuery(_)));
    if target.members.len() < pool.min_size() && !query {
        return Err(refuse(
            OpResult::Retry,
            format!(
                "pg {pg} has {} of {} members up and needs {} (min_size) to serve",
                target.members.len(),
                pool.width(),
                pool.min_size()
            ),
        ));
    }
    Ok((pool, target))
}

/// The PG's members in `osdmap` when OSD `me` is its primary there.
fn target_of(me: u32, osdmap: &OsdMap, pool: &Pool, pg: PgId) -> Option<Target> {
    if primary(&pg_acting(osdmap, pool, pg)) != Some(me) {
        return None;
    }
    let members = crate::peering::members_of(osdmap, pool, pg);
    let me = *members.iter().find(|m| m.osd == me)?;
    Some(Target { pg, members, me })
}

/// PGs a primary activates at once after a map change (each under its own lock): activation
/// only asks the members and decides; the copying is `recovery`'s.
const ACTIVATIONS_AT_ONCE: usize = 4;

/// Activates every PG this OSD is primary of in the current map, then recovers what their
/// members lack in the background, `osd.recovery_pgs_at_once` PGs at a time, so members
/// catch up after a change without waiting for a client op. One pass at a time; a map that
/// arrives during a pass ends its recovery and starts another.
pub async fn activate_primaries(node: &OsdNode, running: &AtomicBool, again: &AtomicBool) {
    again.store(true, Ordering::Release);
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    while again.swap(false, Ordering::AcqRel) {
        let maps = node.maps();
        let osdmap = &maps.osdmap;
        let pools: Vec<_> = osdmap
            .pools
            .iter()
            .filter_map(|(id, pool)| Some((*id, pool, erasure::codec_of(pool).ok()?)))
            .collect();
        // Owned items (a PG and its pool's index): the stream's closures then take no
        // borrowed arguments, which a spawned future needs.
        let pgs: Vec<(PgId, usize)> = pools
            .iter()
            .enumerate()
            .flat_map(|(i, (id, pool, _))| all_pgs(*id, pool).map(move |pg| (pg, i)))
            .collect();
        let pools = &pools;
        use futures::StreamExt;
        let to_recover: Vec<(std::sync::Arc<Pg>, usize)> = futures::stream::iter(pgs)
            .map(|(pg, i)| async move {
                let (_, pool, codec) = &pools[i];
                if node.maps().osdmap.epoch != osdmap.epoch {
                    return None;
                }
                let t = target_of(node.id, osdmap, pool, pg)?;
                if t.members.len() < pool.min_size() {
                    return None;
                }
                let pg_state = node.pg(pg, t.me.shard);
                let mut st = pg_state.state.lock().await;
                let activated = ensure_active(
                    node,
                    &pg_state,
                    &mut st,
                    &t.members,
                    codec.as_ref(),
                    osdmap.epoch,
                )
                .await;
                if let Err(why) = activated {
                    tracing::info!(pg = %pg, %why, "pg not active yet");
                }
                let pending = !st.recovery.is_empty();
                drop(st);
                pending.then_some((pg_state, i))
            })
            .buffer_unordered(ACTIVATIONS_AT_ONCE)
            .filter_map(|pg| async move { pg })
            .collect()
            .await;
        // Recovery's share of the OSD: a bounded number of PGs, one object each at a time.
        let at_once = node.settings.recovery_pgs_at_once.max(1);
        futures::stream::iter(to_recover)
            .for_each_concurrent(at_once, |(pg, i)| async move {
                crate::recovery::drain(node, &pg, pools[i].2.as_ref(), osdmap.epoch).await
            })
            .await;
    }
    running.store(false, Ordering::Release);
}

fn misdirected(maps: &ClusterMaps, message: String) -> Box<OpReply> {
    Box::new(OpReply {
        maps_json: serde_json::to_vec(maps).unwrap_or_default(),
        ..reply(OpResult::Misdirected, message)
    })
}

async fn serve(
    node: &OsdNode,
    maps: &ClusterMaps,
    pool: &Pool,
    t: Target,
    object: &str,
    reqid: &str,
    op: Op,
) -> OpReply {
    let codec = match erasure::codec_of(pool) {
        Ok(c) => c,
        Err(e) => return reply(OpResult::Invalid, e),
    };
    let pg = node.pg(t.pg, t.me.shard);
    let epoch = maps.osdmap.epoch;
    if let Op::PgQuery(_) = op {
        let detail = crate::pg_detail::detail(node, &pg, &t.members, epoch).await;
        return match serde_json::to_vec(&detail) {
            Ok(data) => OpReply {
                data: data.into(),
                ..reply(OpResult::Ok, "")
            },
            Err(e) => reply(OpResult::IoError, format!("cannot encode the answer: {e}")),
        };
    }
    let mut st = pg.state.lock().await;
    // The op was routed with the map of its arrival; a newer one may have moved the PG while
    // it waited for the lock: route it again.
    let now = node.maps();
    if now.osdmap.epoch != epoch {
        return *misdirected(
            &now,
            format!(
                "the map moved to epoch {} while the op waited",
                now.osdmap.epoch
            ),
        );
    }
    let activated = ensure_active(node, &pg, &mut st, &t.members, codec.as_ref(), epoch);
    if let Err(why) = activated.await {
        tracing::info!(pg = %t.pg, %why, "pg not active yet");
        return reply(OpResult::Retry, format!("pg {} is peering: {why}", t.pg));
    }
    let recovered = match &op {
        // Comparing copies while some are still being brought in line finds only that.
        Op::Scrub(_) if !st.recovery.is_empty() => Err("its members are recovering".to_string()),
        Op::Scrub(_) => Ok(()),
        // The primary lists its own copy of the PG, which must be complete first.
        Op::List(_) if !st.missing.is_empty() => {
            recovery::recover_all(node, &pg, &mut st, codec.as_ref(), epoch).await
        }
        Op::List(_) => Ok(()),
        _ => recovery::before_op(node, &pg, &mut st, codec.as_ref(), object, epoch).await,
    };
    if let Err(why) = recovered {
        return reply(OpResult::Retry, format!("pg {} is recovering: {why}", t.pg));
    }
    if let Op::Scrub(how) = op {
        drop(st);
        let scrub = Scrub {
            node,
            pg: &pg,
            members: &t.members,
            codec: codec.as_ref(),
            epoch,
        };
        return match scrub.run(&how).await {
            Ok(result) => OpReply {
                scrub: Some(result),
                ..reply(OpResult::Ok, "")
            },
            Err(why) => reply(OpResult::Retry, why),
        };
    }
    match (is_write(&op), &codec) {
        (true, _) => {
            write(
                node,
                &pg,
                &mut st,
                &t.members,
                codec.as_ref(),
                object,
                reqid,
                op,
            )
            .await
        }
        (false, Some(c)) => erasure::read(node, &pg, &t.members, c, object, op).await,
        (false, None) => read_replicated(node, &pg, &mut st, &t.members, object, op, epoch).await,
    }
}

/// A read of a replicated object on the primary. A copy failing its checksums is rewritten
/// from another member and read again: the client gets the right bytes or an error, never
/// the damaged ones.
async fn read_replicated(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    object: &str,
    op: Op,
    epoch: u64,
) -> OpReply {
    match read(node, pg, object, op.clone()).await {
        Ok(out) => out,
        Err(e @ StoreError::ChecksumMismatch { .. }) => {
            metrics::counter!("cairn_osd_checksum_errors_total").increment(1);
            tracing::error!(pg = %pg.id, object, error = %e, "read failed its checksum; repairing from a replica");
            match scrub::repair_local_copy(node, pg, st, members, object, epoch).await {
                Ok(()) => read(node, pg, object, op)
                    .await
                    .unwrap_or_else(|e| store_error(&e)),
                Err(why) => reply(
                    OpResult::IoError,
                    format!("{e}; no intact copy to repair it from: {why}"),
                ),
            }
        }
        Err(e) => store_error(&e),
    }
}

async fn read(node: &OsdNode, pg: &Pg, object: &str, op: Op) -> Result<OpReply, StoreError> {
    let coll = pg.coll.clone();
    let oid = object.to_string();
    node.blocking(move |store| {
        let mut out = reply(OpResult::Ok, "");
        match op {
            Op::Read(r) => {
                out.data = store.read(&coll, &oid, r.offset, r.length)?;
                out.size = store.stat(&coll, &oid)?;
            }
            Op::Stat(_) => {
                out.size = store.stat(&coll, &oid)?;
                out.version = decode_u64(store.getattrs(&coll, &oid)?.get(ATTR_VERSION));
            }
            Op::GetXattrs(_) => out.xattrs = user_attrs(&store.getattrs(&coll, &oid)?),
            Op::OmapGet(range) => {
                let after = (!range.after.is_empty()).then_some(range.after.as_slice());
                let max = range.max.clamp(1, PAGE_ENTRIES_MAX) as usize;
                out.omap = store
                    .omap_get(&coll, &oid, after, max)?
                    .into_iter()
                    .map(|(key, value)| cairn_common::proto::BytesKeyValue { key, value })
                    .collect();
            }
            Op::List(l) => {
                let after = (!l.after.is_empty()).then_some(l.after.as_str());
                let max = l.max.clamp(1, PAGE_ENTRIES_MAX) as usize;
                let (names, next) = store.list(&coll, after, max)?;
                out.objects = names.into_iter().filter(|n| !is_internal(n)).collect();
                out.next = next.unwrap_or_default();
            }
            _ => return Err(StoreError::Invalid("not a read".into())),
        }
        Ok(out)
    })
    .await
}

/// The object's size and whether it exists, as the PG holds it now.
async fn current(node: &OsdNode, pg: &Pg, object: &str) -> Result<Option<u64>, StoreError> {
    let (coll, oid) = (pg.coll.clone(), object.to_string());
    node.blocking(move |store| match store.stat(&coll, &oid) {
        Ok(size) => Ok(Some(size)),
        Err(StoreError::NoObject { .. }) => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

/// Resolves a write op into mutations against the object's current state, or the reply
/// that ends it (not found, invalid).
fn resolve(
    op: Op,
    size: Option<u64>,
    object: &str,
) -> Result<Vec<cairn_common::proto::Mutation>, Box<OpReply>> {
    use cairn_common::proto::mutation::M;
    use cairn_common::proto::Mutation;
    check_object_end(&op, size)?;
    let missing = || {
        reply(
            OpResult::NotFound,
            format!("object {object} does not exist"),
        )
    };
    let m = |m: M| Mutation { m: Some(m) };
    Ok(match op {
        Op::WriteFull(data) => [mutation::touch(), mutation::truncate(0)]
            .into_iter()
            .chain(data_write(0, data))
            .collect(),
        Op::Write(w) => [mutation::touch()]
            .into_iter()
            .chain(data_write(w.offset, w.data))
            .collect(),
        Op::Append(data) => [mutation::touch()]
            .into_iter()
            .chain(data_write(size.unwrap_or(0), data))
            .collect(),
        Op::Truncate(n) => vec![mutation::touch(), mutation::truncate(n)],
        Op::Remove(_) => {
            size.ok_or_else(missing)?;
            vec![mutation::remove()]
        }
        Op::SetXattr(kv) => {
            if kv.key.is_empty() || kv.key.len() > 256 {
                return Err(refuse(OpResult::Invalid, "xattr names are 1 to 256 bytes"));
            }
            vec![mutation::set_attr(&user_attr(&kv.key), kv.value)]
        }
        Op::RmXattr(name) => {
            size.ok_or_else(missing)?;
            vec![m(M::RmXattr(user_attr(&name)))]
        }
        Op::OmapSet(e) => vec![mutation::touch(), m(M::OmapSet(e))],
        Op::OmapRm(k) => {
            size.ok_or_else(missing)?;
            vec![m(M::OmapRm(k))]
        }
        _ => return Err(refuse(OpResult::Invalid, "not a write")),
    })
}

/// A write of `data` at `offset`, unless there is nothing to write.
fn data_write(offset: u64, data: impl Into<Bytes>) -> Option<cairn_common::proto::Mutation> {
    let data = data.into();
    (!data.is_empty()).then(|| mutation::write(offset, data))
}

/// What each member applies for one write: the same mutations on every replica, or each
/// erasure-code shard its own.
pub type Plan = Vec<(Member, Vec<Mutation>)>;

/// A planned write and whether the object existed before it (with whether it exists after,
/// which the mutations say, this keeps the PG's object count without another lookup).
pub struct Planned {
    pub plan: Plan,
    pub existed: bool,
}

#[allow(clippy::too_many_arguments)]
async fn write(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    codec: Option<&Codec>,
    object: &str,
    reqid: &str,
    op: Op,
) -> OpReply {
    if let Some(version) = st.applied(reqid) {
        return OpReply {
            version,
            ..reply(OpResult::Ok, "already applied")
        };
    }
    let planned = match codec {
        Some(codec) => erasure::plan_write(node, pg, members, codec, object, op).await,
        None => plan_replicated(node, pg, members, object, op).await,
    };
    let Planned { plan, existed } = match planned {
        Ok(planned) => planned,
        Err(refusal) => return *refusal,
    };
    let exists = plan
        .first()
        .is_some_and(|(_, muts)| !mutation::ends_removed(muts));
    let stash = codec.is_some_and(|c| crate::stash::needed(c.k(), members.len()));
    let out = commit(node, pg, st, object, reqid, plan, stash).await;
    if out.result == OpResult::Ok as i32 && exists != existed {
        node.pg_records.update(pg.id, |r| {
            r.objects = (r.objects + u64::from(exists)).saturating_sub(u64::from(existed));
        });
    }
    out
}

async fn plan_replicated(
    node: &OsdNode,
    pg: &Pg,
    members: &[Member],
    object: &str,
    op: Op,
) -> Result<Planned, Box<OpReply>> {
    let size = current(node, pg, object)
        .await
        .map_err(|e| Box::new(store_error(&e)))?;
    let mutations = resolve(op, size, object)?;
    // Every member but one needs its own copy for its request; the first takes the original.
    let mut plan: Plan = members
        .iter()
        .skip(1)
        .map(|m| (*m, mutations.clone()))
        .collect();
    if let Some(first) = members.first() {
        plan.push((*first, mutations));
    }
    Ok(Planned {
        plan,
        existed: size.is_some(),
    })
}

/// Applies a planned write here and on every other member at once, at the PG's next
/// version; acknowledges only when all have it durable. With `stash`, members keep the
/// object's previous state until the next change (see `stash`).
async fn commit(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    object: &str,
    reqid: &str,
    plan: Plan,
    stash: bool,
) -> OpReply {
    let interval_epoch = st.active.unwrap_or(0);
    let version = next_version(st.last_update, interval_epoch);
    let sub = |m: &Member, mutations: Vec<Mutation>| SubOpRequest {
        osdmap_epoch: interval_epoch,
        pool: pg.id.pool,
        pg: pg.id.seed,
        shard: m.shard,
        object: object.to_string(),
        version,
        mutations,
        prior_version: st.last_update,
        recovery: false,
        reqid: reqid.to_string(),
        stash,
        ..SubOpRequest::default()
    };
    let mut local = None;
    let mut remote = Vec::new();
    for (m, mutations) in plan {
        let req = sub(&m, mutations);
        if m.osd == node.id {
            local = Some(req);
        } else {
            remote.push(async move { members::remote_sub_op(node, m, req).await });
        }
    }
    let Some(local) = local else {
        return reply(OpResult::Retry, "the primary is not in its own plan");
    };
    let (local, remote) = tokio::join!(
        replica::apply_locked(node, pg, st, local),
        futures::future::join_all(remote)
    );
    let remote_applied = remote.iter().any(|r| r.is_ok());
    let remote_error = remote.into_iter().find_map(|r| r.err());
    if local.result != OpResult::Ok as i32 || remote_error.is_some() {
        // Members may now disagree: bring them in line before the next op.
        st.active = None;
        // A member that applied it may become the authority, so the write may yet appear:
        // only a failure every member shares is definitive.
        if local.result != OpResult::Ok as i32 && !remote_applied {
            return OpReply {
                result: local.result,
                message: local.message,
                ..OpReply::default()
            };
        }
        let why = remote_error.unwrap_or_default();
        tracing::info!(pg = %pg.id, object, %why, "write not acknowledged by every member");
        return reply(OpResult::Retry, why);
    }
    metrics::counter!("cairn_osd_writes_total").increment(1);
    OpReply {
        version,
        ..reply(OpResult::Ok, "")
    }
}
