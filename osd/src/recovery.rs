//! Recovery in the background. Activation decides, per object, the version the PG keeps and
//! which members' copies differ (`Plan`), tells each member what it lacks, and the PG serves
//! at once. The objects are then brought in line one at a time, each under the PG's lock —
//! a client op waits for one object at most — paced by `osd.recovery_max_bytes_per_sec`
//! while clients use the OSD, at full speed while they do not. A client op on an object still
//! to recover recovers that object first, so no op ever sees or changes a stale copy.
//!
//! Each member keeps the list of what it lacks (`PgState::missing`), replaced by activation
//! and shortened by each recovery in the same transaction as the data: a member at the newest
//! activation thus never passes for holding the PG's version of an object it has not
//! received, and a later peering takes its list as its word on those objects.
//!
//! The copying itself (`bring_object_in_line`, `rebuild_shards`, `recover`) also serves
//! activation's rollbacks and scrub's repairs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::proto::{Mutation, SubOpRequest};

use crate::ec::Codec;
use crate::erasure;
use crate::members::{self, Member};
use crate::mutation;
use crate::node::OsdNode;
use crate::pg::{Pg, PgState};

/// One object's recovery, as activation decided it.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The version the PG keeps (`None`: the object goes).
    pub chosen: Option<u64>,
    /// Who holds the chosen version, and where: the object itself or a rollback stash.
    pub holders: Vec<(Member, String)>,
    /// Members whose copy differs, with the version each holds.
    pub targets: Vec<(Member, Option<u64>)>,
    /// Those of the targets whose copy an OSD no longer a member holds up to date in their
    /// stead (at their position, for erasure coding): misplaced rather than missing.
    pub misplaced: Vec<Member>,
}

/// Object → what is left to do for it, in the active interval.
pub type Plan = BTreeMap<String, Pending>;

/// Object copies (shards) still to bring in line.
pub fn copies_left(plan: &Plan) -> u64 {
    plan.values().map(|p| p.targets.len() as u64).sum()
}

/// Of those, the copies an OSD outside the PG holds up to date (`Pending::misplaced`).
pub fn misplaced_left(plan: &Plan) -> u64 {
    plan.values()
        .map(|p| {
            p.targets
                .iter()
                .filter(|(m, _)| p.misplaced.contains(m))
                .count() as u64
        })
        .sum()
}

/// Attempts at one object before a background pass gives up (a source that keeps failing
/// is down; the map change that says so starts a new pass).
const ATTEMPTS_MAX: u32 = 10;
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Brings `object` in line on every member, if recovery has not yet: an op must see and
/// change the PG's version of it. Runs under the PG's lock.
pub async fn before_op(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    codec: Option<&Codec>,
    object: &str,
    epoch: u64,
) -> Result<(), String> {
    if !st.recovery.contains_key(object) {
        return Ok(());
    }
    tracing::debug!(pg = %pg.id, object, "recovering an object a client op needs");
    recover_object(node, pg, st, codec, object, epoch)
        .await
        .map(|_| ())
}

/// Brings every object in line now (a listing must see the PG's objects as they are).
pub async fn recover_all(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    codec: Option<&Codec>,
    epoch: u64,
) -> Result<(), String> {
    while let Some(object) = st.recovery.keys().next().cloned() {
        recover_object(node, pg, st, codec, &object, epoch).await?;
    }
    Ok(())
}

/// Recovers one object of the plan on every member whose copy differs; answers the bytes
/// moved. What fails stays in the plan.
async fn recover_object(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    codec: Option<&Codec>,
    object: &str,
    epoch: u64,
) -> Result<u64, String> {
    let Some(mut pending) = st.recovery.remove(object) else {
        return Ok(0);
    };
    let result = bring_object_in_line(node, pg, st, &mut pending, object, codec, epoch).await;
    if !pending.targets.is_empty() {
        st.recovery.insert(object.to_string(), pending);
    }
    report_progress(node, pg, st);
    result
}

/// Tells the PG's report what the plan has left, and whether some of it fills a member that
/// held nothing of the PG (`backfilling`).
pub fn report_progress(node: &OsdNode, pg: &Pg, st: &PgState) {
    let left = copies_left(&st.recovery);
    let misplaced = misplaced_left(&st.recovery);
    let backfilling = st
        .recovery
        .values()
        .any(|p| p.targets.iter().any(|(m, _)| st.empty_members.contains(m)));
    node.pg_records.update(pg.id, |r| {
        r.recovery_left = left;
        r.misplaced_left = misplaced;
        r.backfilling = backfilling;
    });
}

/// Recovers the PG's objects one at a time, each under the PG's lock, until none is left,
/// the PG is re-activated or the map moves on. Paced by the OSD's throttle.
pub async fn drain(node: &OsdNode, pg: &Pg, codec: Option<&Codec>, epoch: u64) {
    let mut attempts = 0;
    loop {
        if node.maps().osdmap.epoch != epoch {
            return;
        }
        let started = Instant::now();
        let mut st = pg.state.lock().await;
        if st.active != Some(epoch) {
            return;
        }
        let Some(object) = st.recovery.keys().next().cloned() else {
            return;
        };
        let result = recover_object(node, pg, &mut st, codec, &object, epoch).await;
        drop(st);
        match result {
            Ok(bytes) => {
                attempts = 0;
                node.recovery_throttle.pace(started, bytes).await;
            }
            Err(why) => {
                attempts += 1;
                tracing::warn!(pg = %pg.id, object, %why, attempts, "cannot recover an object yet");
                if attempts >= ATTEMPTS_MAX {
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Makes every target's copy of `name` the chosen version: removed, copied from a holder, or
/// its shard rebuilt from k holders (decoded once for all targets). Each target done leaves
/// `pending`; answers the bytes written.
pub async fn bring_object_in_line(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    pending: &mut Pending,
    name: &str,
    codec: Option<&Codec>,
    epoch: u64,
) -> Result<u64, String> {
    let chosen = pending.chosen;
    tracing::debug!(pg = %pg.id, object = %name, targets = ?pending.targets, want = ?chosen, "bringing copies in line");
    let targets: Vec<Member> = pending.targets.iter().map(|(m, _)| *m).collect();
    let states: Vec<Option<Vec<Mutation>>> = match (chosen, codec) {
        (None, _) => vec![None; targets.len()],
        (Some(v), Some(codec)) => {
            rebuild_shards(node, pg, &pending.holders, &targets, codec, name, v)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        }
        (Some(v), None) => {
            let state = pull_copy(node, pg, &pending.holders, v, name).await?;
            vec![Some(state); targets.len()]
        }
    };
    let mut bytes = 0;
    for ((m, have), state) in pending.targets.clone().into_iter().zip(states) {
        let muts = mutation::replace_with(have.is_some(), state);
        if !muts.is_empty() {
            bytes += recover(node, pg, st, m, name, muts, chosen.unwrap_or(0), epoch).await?;
        }
        pending.targets.retain(|(t, _)| *t != m);
    }
    Ok(bytes)
}

/// The state of replicated `object` at `version`, from the first of its `holders` that can
/// give it.
async fn pull_copy(
    node: &OsdNode,
    pg: &Pg,
    holders: &[(Member, String)],
    version: u64,
    object: &str,
) -> Result<Vec<Mutation>, String> {
    let mut last = String::from("no member holds the chosen copy");
    for (m, source) in holders {
        match members::pull(node, pg, *m, source).await {
            Ok(reply) if reply.exists && reply.version == version => return Ok(reply.mutations),
            Ok(_) => last = format!("osd.{} no longer holds {object} at {version:#x}", m.osd),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The `targets`' shards of `object` at `version`, decoded from k distinct shards of the
/// `holders` (responders holding that version, and the object to read it from there: the
/// object or a stash; the next is tried when one cannot be read).
pub async fn rebuild_shards(
    node: &OsdNode,
    pg: &Pg,
    holders: &[(Member, String)],
    targets: &[Member],
    codec: &Codec,
    object: &str,
    version: u64,
) -> Result<Vec<Vec<Mutation>>, String> {
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; codec.shard_count()];
    let mut attrs = Vec::new();
    // The targets' own copies are what is being replaced; their stashes may serve.
    let sources: Vec<&(Member, String)> = holders
        .iter()
        .filter(|(m, source)| !(targets.contains(m) && source == object))
        .collect();
    let mut tried = vec![false; sources.len()];
    let mut found = 0;
    // The shards still needed are read at once; one that cannot be read is replaced by the
    // next holder of a shard not read yet.
    while found < codec.k() {
        let batch = next_sources(&sources, &mut tried, &shards, codec.k() - found);
        if batch.is_empty() {
            break;
        }
        let replies = futures::future::join_all(
            batch
                .iter()
                .map(|(m, source)| members::pull(node, pg, *m, source)),
        )
        .await;
        for ((m, _), reply) in batch.iter().zip(replies) {
            match reply {
                Ok(reply) if reply.exists && reply.version == version => {
                    shards[m.shard as usize] = Some(erasure::state_data(&reply.mutations));
                    attrs = reply.mutations;
                    found += 1;
                }
                Ok(_) => {
                    tracing::warn!(pg = %pg.id, object, osd = m.osd, "shard changed while rebuilding")
                }
                Err(e) => {
                    tracing::warn!(pg = %pg.id, object, osd = m.osd, error = %e, "cannot read a shard to rebuild from")
                }
            }
        }
    }
    if found < codec.k() {
        return Err(format!(
            "object {object}: {found} readable shards at version {version:#x}, {} needed to rebuild",
            codec.k()
        ));
    }
    codec
        .decode(&mut shards)
        .map_err(|e| format!("cannot rebuild {object}: {e}"))?;
    // Each target has its own shard position: its decoded shard is moved out, not copied.
    Ok(targets
        .iter()
        .map(|t| {
            let shard = shards
                .get_mut(t.shard as usize)
                .and_then(Option::take)
                .unwrap_or_default();
            erasure::with_shard_data(&attrs, shard)
        })
        .collect())
}

/// Up to `wanted` sources not tried yet, each of a distinct shard not read yet (two holders
/// of one shard, a past member and the current one, count once); marks them tried.
fn next_sources<'a>(
    sources: &[&'a (Member, String)],
    tried: &mut [bool],
    shards: &[Option<Vec<u8>>],
    wanted: usize,
) -> Vec<&'a (Member, String)> {
    let mut batch: Vec<&(Member, String)> = Vec::with_capacity(wanted);
    for (i, source) in sources.iter().enumerate() {
        if batch.len() == wanted {
            break;
        }
        let shard = source.0.shard;
        let read = shards.get(shard as usize).is_none_or(Option::is_some);
        if tried[i] || read || batch.iter().any(|(m, _)| m.shard == shard) {
            continue;
        }
        tried[i] = true;
        batch.push(source);
    }
    batch
}

/// Makes member `m`'s copy of `object` what `mutations` say, at `version`; answers the
/// bytes of data written.
#[allow(clippy::too_many_arguments)]
pub async fn recover(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    m: Member,
    object: &str,
    mutations: Vec<Mutation>,
    version: u64,
    epoch: u64,
) -> Result<u64, String> {
    let bytes: usize = mutations
        .iter()
        .map(|m| match &m.m {
            Some(cairn_common::proto::mutation::M::Write(w)) => w.data.len(),
            _ => 0,
        })
        .sum();
    let req = SubOpRequest {
        osdmap_epoch: epoch,
        pool: pg.id.pool,
        pg: pg.id.seed,
        shard: m.shard,
        object: object.to_string(),
        version,
        mutations,
        recovery: true,
        ..SubOpRequest::default()
    };
    members::sub_op(node, pg, st, m, req).await?;
    node.io.recovered_objects.fetch_add(1, Ordering::Relaxed);
    node.io
        .recovered_bytes
        .fetch_add(bytes as u64, Ordering::Relaxed);
    Ok(bytes as u64)
}

/// Client I/O this recent makes recovery keep to its rate.
const CLIENTS_RECENT: Duration = Duration::from_secs(1);

/// Paces recovery to a byte rate over the whole OSD: each object recovered moves the earliest
/// start of the next one later by its bytes over the rate. The rate is `busy` while clients
/// use the OSD and `idle` after `CLIENTS_RECENT` without client I/O (0: unpaced; by default
/// an idle cluster heals at full speed). Client ops are never paced (one that needs an object
/// recovered recovers it at once).
pub struct Throttle {
    busy: u64,
    idle: u64,
    next: Mutex<Instant>,
    epoch: Instant,
    /// When client I/O (ops, or writes a primary sent here) last came, since `epoch`, in ms.
    client_io_ms: AtomicU64,
}

impl Throttle {
    /// Rates in bytes per second; 0 is no limit.
    pub fn new(busy: u64, idle: u64) -> Throttle {
        let now = Instant::now();
        Throttle {
            busy,
            idle,
            next: Mutex::new(now),
            epoch: now,
            client_io_ms: AtomicU64::new(0),
        }
    }

    /// Notes client I/O on this OSD.
    pub fn client_io(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.client_io_ms.fetch_max(ms.max(1), Ordering::Relaxed);
    }

    fn clients_active(&self) -> bool {
        let last = self.client_io_ms.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        last > 0 && now.saturating_sub(last) < CLIENTS_RECENT.as_millis() as u64
    }

    /// Waits until recovering `bytes`, begun at `started`, fits the rate (when clients are
    /// active).
    pub async fn pace(&self, started: Instant, bytes: u64) {
        let rate = if self.clients_active() {
            self.busy
        } else {
            self.idle
        };
        if rate == 0 {
            return;
        }
        let until = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(started);
            *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            *next
        };
        tokio::time::sleep_until(until.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_throttle_holds_recovery_to_its_rate_while_clients_are_active() {
        let t = Throttle::new(10 << 20, 0);
        // No client I/O: full speed.
        let begin = Instant::now();
        t.pace(Instant::now(), 1 << 30).await;
        assert!(begin.elapsed() < Duration::from_millis(50));
        t.client_io();
        let begin = Instant::now();
        // 4 MiB at 10 MiB/s is 0.4 s each: three take 1.2 s, however fast they were read.
        for _ in 0..3 {
            t.pace(Instant::now(), 4 << 20).await;
        }
        let took = begin.elapsed();
        assert!(
            took >= Duration::from_millis(1150) && took < Duration::from_millis(2000),
            "{took:?}"
        );
        // No limit: no wait.
        let begin = Instant::now();
        let unlimited = Throttle::new(0, 0);
        unlimited.client_io();
        unlimited.pace(Instant::now(), 1 << 30).await;
        assert!(begin.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn shards_are_read_k_at_a_time_from_distinct_untried_holders() {
        let h = |osd: u32, shard: i32| (Member { osd, shard }, "obj".to_string());
        // osd.5 is a past member holding shard 0 too; shard 2 is the target's own.
        let holders = [h(0, 0), h(5, 0), h(1, 1), h(3, 2)];
        let sources: Vec<&(Member, String)> = holders.iter().collect();
        let mut tried = vec![false; sources.len()];
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; 3];
        let osds = |b: &[&(Member, String)]| b.iter().map(|(m, _)| m.osd).collect::<Vec<_>>();
        assert_eq!(
            osds(&next_sources(&sources, &mut tried, &shards, 2)),
            [0, 1]
        );
        // osd.0 could not be read and osd.1 could: shard 0 comes from the other holder.
        shards[1] = Some(Vec::new());
        assert_eq!(osds(&next_sources(&sources, &mut tried, &shards, 1)), [5]);
        // Nothing is tried twice; a read shard is not read again.
        assert_eq!(osds(&next_sources(&sources, &mut tried, &shards, 1)), [3]);
        assert!(next_sources(&sources, &mut tried, &shards, 1).is_empty());
    }
}
