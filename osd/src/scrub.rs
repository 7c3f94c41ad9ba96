//! Scrubbing a PG: its primary compares what every member holds, a chunk of objects at a
//! time — versions, sizes, attributes and omap (light scrub), and with `deep` the bytes
//! themselves: each member reads its copy whole, so every block checksum is verified, the
//! replicas' data digests are compared, and erasure-coded parity is recomputed and checked.
//!
//! Per object the copies vote: the state most members hold (unreadable copies do not vote;
//! on a tie the primary's) is kept, and every member holding something else is an error.
//! `repair` — and, for copies that fail their checksums, `osd.scrub_auto_repair` — rewrites
//! those copies from good ones, as activation does: whole from a good replica, or a shard
//! rebuilt from k good ones.
//!
//! Client ops to the PG wait only for the chunk being compared: the PG's lock is taken per
//! chunk, and a scrub stops (the caller retries) when the map moves on under it.

use std::collections::BTreeMap;

use cairn_common::placement::PgId;
use cairn_common::proto::{
    OpResult, ScrubMapReply, ScrubMapRequest, ScrubObject, ScrubOp, ScrubResult,
};

use crate::ec::Codec;
use crate::error::StoreError;
use crate::members::{self, Member};
use crate::mutation::{self, decode_u64, ATTR_VERSION};
use crate::node::OsdNode;
use crate::pg::{is_internal, Pg, PgState};
use crate::pg_stats::now_ms;
use crate::recovery::{rebuild_shards, recover};
use crate::replica::{pulled_state, result_of};
use crate::ObjectStore;

/// Inconsistencies a scrub result names one by one.
pub const LINES_MAX: usize = 100;
/// Most objects a member describes per request.
pub const CHUNK_OBJECTS_MAX: u32 = 10_000;
/// Bytes read at a time while digesting an object.
const DIGEST_READ_BYTES: u64 = 4 << 20;

// ---- the member's side ----

/// Describes the member's objects after `req.after` (with `deep`, reading every byte).
pub async fn scrub_map(node: &OsdNode, req: ScrubMapRequest) -> ScrubMapReply {
    let pg = node.pg_of(req.pool, req.pg, req.shard);
    let coll = pg.coll.clone();
    let max = req.max.clamp(1, CHUNK_OBJECTS_MAX) as usize;
    let described = node
        .blocking(move |store| describe_objects(store, &coll, &req.after, max, req.deep))
        .await;
    match described {
        Ok((objects, next)) => ScrubMapReply {
            result: OpResult::Ok as i32,
            message: String::new(),
            objects,
            next: next.unwrap_or_default(),
        },
        Err(e) => ScrubMapReply {
            result: result_of(&e) as i32,
            message: e.to_string(),
            ..ScrubMapReply::default()
        },
    }
}

fn describe_objects(
    store: &ObjectStore,
    coll: &str,
    after: &str,
    max: usize,
    deep: bool,
) -> Result<(Vec<ScrubObject>, Option<String>), StoreError> {
    let after = (!after.is_empty()).then_some(after);
    let (names, next) = store.list(coll, after, max)?;
    let objects = names
        .into_iter()
        .filter(|n| !is_internal(n))
        .map(|name| describe(store, coll, name, deep))
        .collect::<Result<_, _>>()?;
    Ok((objects, next))
}

fn describe(
    store: &ObjectStore,
    coll: &str,
    name: String,
    deep: bool,
) -> Result<ScrubObject, StoreError> {
    let attrs = store.getattrs(coll, &name)?;
    let size = store.stat(coll, &name)?;
    let mut meta = 0u32;
    for (k, v) in &attrs {
        meta = digest_entry(meta, k.as_bytes(), v);
    }
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.omap_get(coll, &name, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (k, v) in &page {
            meta = digest_entry(meta, k, v);
        }
    }
    let (data_digest, read_error) = match deep.then(|| data_digest(store, coll, &name, size)) {
        None => (0, String::new()),
        Some(Ok(d)) => (d, String::new()),
        Some(Err(e @ StoreError::ChecksumMismatch { .. })) => {
            metrics::counter!("cairn_osd_checksum_errors_total").increment(1);
            tracing::error!(%coll, object = %name, error = %e, "scrub read failed its checksum");
            (0, e.to_string())
        }
        Some(Err(e)) => return Err(e),
    };
    Ok(ScrubObject {
        version: decode_u64(attrs.get(ATTR_VERSION)),
        name,
        size,
        meta_digest: meta,
        data_digest,
        read_error,
    })
}

fn digest_entry(crc: u32, key: &[u8], value: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc, &(key.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc, key);
    let crc = crc32c::crc32c_append(crc, &(value.len() as u64).to_le_bytes());
    crc32c::crc32c_append(crc, value)
}

/// Reads the object whole (the store verifies every block's checksum) and digests it.
fn data_digest(store: &ObjectStore, coll: &str, oid: &str, size: u64) -> Result<u32, StoreError> {
    let mut crc = 0;
    let mut offset = 0;
    while offset < size {
        let data = store.read(coll, oid, offset, DIGEST_READ_BYTES)?;
        if data.is_empty() {
            break;
        }
        crc = crc32c::crc32c_append(crc, &data);
        offset += data.len() as u64;
    }
    Ok(crc)
}

// ---- the verdict on one object ----

/// What a member holds of an object, as compared across members. Erasure-code shards hold
/// different bytes by design, so their data digest is left out (parity is checked instead).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Copy {
    version: u64,
    size: u64,
    meta: u32,
    data: u32,
}

/// A member whose copy is wrong, and why.
#[derive(Debug)]
struct Finding {
    member: usize,
    why: String,
    /// The copy failed its checksums (repaired without being asked, when so configured).
    checksum: bool,
}

#[derive(Debug)]
struct Verdict {
    /// The state the PG keeps: `None` when the object should not exist.
    keep: Option<Copy>,
    findings: Vec<Finding>,
}

/// A member's vote: its copy (or its lack of one); no vote when its copy is unreadable.
fn vote(o: Option<&ScrubObject>, with_data: bool) -> Option<Option<Copy>> {
    match o {
        None => Some(None),
        Some(o) if !o.read_error.is_empty() => None,
        Some(o) => Some(Some(Copy {
            version: o.version,
            size: o.size,
            meta: o.meta_digest,
            data: if with_data { o.data_digest } else { 0 },
        })),
    }
}

/// The copies' vote on one object; `copies[i]` is member i's (`None`: it lacks the object).
fn judge(copies: &[Option<ScrubObject>], primary: usize, with_data: bool) -> Verdict {
    let votes: Vec<Option<Option<Copy>>> =
        copies.iter().map(|c| vote(c.as_ref(), with_data)).collect();
    let mut tally: BTreeMap<&Option<Copy>, usize> = BTreeMap::new();
    for v in votes.iter().flatten() {
        *tally.entry(v).or_default() += 1;
    }
    let most = tally.values().copied().max().unwrap_or(0);
    let leaders: Vec<&Option<Copy>> = tally
        .iter()
        .filter(|(_, n)| **n == most)
        .map(|(v, _)| *v)
        .collect();
    let primary_vote = votes.get(primary).and_then(|v| v.as_ref());
    let keep = match primary_vote {
        Some(p) if leaders.contains(&p) => p.clone(),
        // Otherwise the newest of the leaders (a copy sorts after no copy).
        _ => leaders.last().map(|v| (*v).clone()).unwrap_or(None),
    };
    let findings = copies
        .iter()
        .zip(&votes)
        .enumerate()
        .filter_map(|(member, (copy, v))| {
            let (why, checksum) = match (copy, v) {
                (Some(o), None) => (format!("copy unreadable: {}", o.read_error), true),
                (_, Some(v)) if *v == keep => return None,
                (_, Some(v)) => (difference(v, &keep), false),
                (None, None) => return None,
            };
            Some(Finding {
                member,
                why,
                checksum,
            })
        })
        .collect();
    Verdict { keep, findings }
}

fn difference(have: &Option<Copy>, keep: &Option<Copy>) -> String {
    match (have, keep) {
        (None, _) => "copy missing".into(),
        (Some(_), None) => "copy should not exist".into(),
        (Some(h), Some(k)) if h.version != k.version => format!(
            "copy at version {:#x}, the others at {:#x}",
            h.version, k.version
        ),
        (Some(h), Some(k)) if h.size != k.size => {
            format!("copy of {} bytes, the others {}", h.size, k.size)
        }
        (Some(h), Some(k)) if h.meta != k.meta => "attributes or omap differ".into(),
        _ => "data differs from the other copies".into(),
    }
}

// ---- the primary's side ----

/// One scrub of one PG, on its primary, for the interval of `epoch`.
pub struct Scrub<'a> {
    pub node: &'a OsdNode,
    pub pg: &'a Pg,
    pub members: &'a [Member],
    pub codec: Option<&'a Codec>,
    pub epoch: u64,
}

/// A chunk of objects as every member describes them: name → copy per member.
struct Chunk {
    objects: BTreeMap<String, Vec<Option<ScrubObject>>>,
    /// Where the next chunk starts; `None` after the last.
    next: Option<String>,
}

impl Scrub<'_> {
    /// Scrubs the whole PG and records the outcome for the beacons.
    pub async fn run(&self, how: &ScrubOp) -> Result<ScrubResult, String> {
        let records = &self.node.pg_records;
        records.update(self.pg.id, |r| r.scrubbing = true);
        let outcome = self.chunks(how).await;
        records.update(self.pg.id, |r| {
            r.scrubbing = false;
            if let Ok(res) = &outcome {
                r.scrub_errors = res.errors - res.repaired;
                r.objects = res.objects;
                r.last_scrub_ms = now_ms();
                if how.deep {
                    r.last_deep_scrub_ms = r.last_scrub_ms;
                }
            }
        });
        match &outcome {
            Ok(res) => {
                tracing::info!(pg = %self.pg.id, deep = how.deep, objects = res.objects, errors = res.errors, repaired = res.repaired, "scrub done")
            }
            Err(why) => tracing::info!(pg = %self.pg.id, %why, "scrub stopped"),
        }
        outcome
    }

    async fn chunks(&self, how: &ScrubOp) -> Result<ScrubResult, String> {
        let primary = self
            .members
            .iter()
            .position(|m| m.osd == self.node.id)
            .ok_or("the primary is not among the members")?;
        let mut result = ScrubResult::default();
        let mut after = String::new();
        loop {
            let mut st = self.pg.state.lock().await;
            if self.node.maps().osdmap.epoch != self.epoch || st.active != Some(self.epoch) {
                return Err(format!(
                    "pg {} changed during the scrub (the map moved on from epoch {})",
                    self.pg.id, self.epoch
                ));
            }
            let chunk = self.gather(&after, how.deep).await?;
            for (name, copies) in &chunk.objects {
                result.objects += 1;
                self.check_object(&mut st, how, name, copies, primary, &mut result)
                    .await;
            }
            match chunk.next {
                Some(next) => after = next,
                None => return Ok(result),
            }
        }
    }

    async fn check_object(
        &self,
        st: &mut PgState,
        how: &ScrubOp,
        name: &str,
        copies: &[Option<ScrubObject>],
        primary: usize,
        result: &mut ScrubResult,
    ) {
        let mut verdict = judge(copies, primary, self.codec.is_none());
        if how.deep && verdict.findings.is_empty() {
            self.check_parity(name, &mut verdict).await;
        }
        for f in &verdict.findings {
            result.errors += 1;
            metrics::counter!("cairn_osd_scrub_errors_total").increment(1);
            let osd = self.members[f.member].osd;
            let mut line = format!("pg {} object {name}: osd.{osd} {}", self.pg.id, f.why);
            if how.repair || (f.checksum && self.node.settings.scrub_auto_repair) {
                match self.repair(st, name, copies, &verdict, f.member).await {
                    Ok(()) => {
                        result.repaired += 1;
                        metrics::counter!("cairn_osd_scrub_repaired_total").increment(1);
                        line.push_str(" (repaired)");
                    }
                    Err(e) => line.push_str(&format!(" (repair failed: {e})")),
                }
            }
            tracing::warn!(pg = %self.pg.id, "{line}");
            if result.inconsistencies.len() < LINES_MAX {
                result.inconsistencies.push(line);
            }
        }
    }

    /// Every member's description of the objects after `after`, up to where all of them
    /// have listed (members may hold different objects).
    async fn gather(&self, after: &str, deep: bool) -> Result<Chunk, String> {
        let max = self.node.settings.scrub_chunk_objects;
        let replies = futures::future::join_all(self.members.iter().map(|m| {
            let req = ScrubMapRequest {
                pool: self.pg.id.pool,
                pg: self.pg.id.seed,
                shard: m.shard,
                after: after.to_string(),
                max,
                deep,
            };
            members::scrub_map(self.node, *m, req)
        }))
        .await;
        let replies: Vec<ScrubMapReply> = replies.into_iter().collect::<Result<_, _>>()?;
        let end = replies
            .iter()
            .filter(|r| !r.next.is_empty())
            .map(|r| r.next.clone())
            .min();
        let mut objects: BTreeMap<String, Vec<Option<ScrubObject>>> = BTreeMap::new();
        for (i, reply) in replies.into_iter().enumerate() {
            for o in reply.objects {
                if end.as_ref().is_some_and(|e| o.name > *e) {
                    continue;
                }
                let copies = objects
                    .entry(o.name.clone())
                    .or_insert_with(|| vec![None; self.members.len()]);
                copies[i] = Some(o);
            }
        }
        Ok(Chunk { objects, next: end })
    }

    /// Deep scrubs of erasure-coded objects: the coding shards must match the data shards.
    /// With every shard readable and agreeing on the version, a mismatch is blamed on the
    /// coding shards (with one coding shard nothing can tell which side is wrong; the data
    /// shards are what reads use).
    async fn check_parity(&self, name: &str, verdict: &mut Verdict) {
        let (Some(codec), Some(keep)) = (self.codec, &verdict.keep) else {
            return;
        };
        if self.members.len() < codec.shard_count() {
            return;
        }
        let mut shards: Vec<Vec<u8>> = vec![Vec::new(); codec.shard_count()];
        for m in self.members {
            let read = members::shard_read(self.node, self.pg, *m, name, 0, keep.size).await;
            match read {
                Ok(r) if r.version == keep.version => shards[m.shard as usize] = r.data.into(),
                _ => return,
            }
        }
        if codec.verify(&shards).unwrap_or(false) {
            return;
        }
        for (member, m) in self.members.iter().enumerate() {
            if m.shard as usize >= codec.k() {
                verdict.findings.push(Finding {
                    member,
                    why: "coding shard does not match the data shards".into(),
                    checksum: false,
                });
            }
        }
    }

    /// Makes member `target`'s copy of `name` the kept one.
    async fn repair(
        &self,
        st: &mut PgState,
        name: &str,
        copies: &[Option<ScrubObject>],
        verdict: &Verdict,
        target: usize,
    ) -> Result<(), String> {
        let m = self.members[target];
        let existing = copies[target].is_some();
        let Some(keep) = &verdict.keep else {
            let muts = mutation::replace_with(existing, None);
            return recover(self.node, self.pg, st, m, name, muts, 0, self.epoch)
                .await
                .map(|_| ());
        };
        let bad: Vec<usize> = verdict.findings.iter().map(|f| f.member).collect();
        let good = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, _)| !bad.contains(i) && copies[*i].is_some())
            .map(|(_, m)| *m);
        let state = match self.codec {
            Some(codec) => {
                let holders: Vec<(Member, String)> = good.map(|m| (m, name.to_string())).collect();
                let targets = [m];
                let shards = rebuild_shards(
                    self.node,
                    self.pg,
                    &holders,
                    &targets,
                    codec,
                    name,
                    keep.version,
                );
                shards.await?.pop().unwrap_or_default()
            }
            None => {
                let source = good.clone().next().ok_or("no good copy to repair from")?;
                let pulled = members::pull(self.node, self.pg, source, name).await?;
                if pulled.version != keep.version {
                    return Err(format!("osd.{} changed the object meanwhile", source.osd));
                }
                pulled_state(&pulled).ok_or("the good copy disappeared")?
            }
        };
        let muts = mutation::replace_with(existing, Some(state));
        recover(
            self.node,
            self.pg,
            st,
            m,
            name,
            muts,
            keep.version,
            self.epoch,
        )
        .await
        .map(|_| ())
    }
}

/// Rewrites the primary's own copy of a replicated object from another member (a read found
/// it failing its checksums), so the read can be served.
pub async fn repair_local_copy(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    object: &str,
    epoch: u64,
) -> Result<(), String> {
    let me = *members
        .iter()
        .find(|m| m.osd == node.id)
        .ok_or("the primary is not among the members")?;
    let mut last = String::from("no other member");
    for m in members.iter().filter(|m| m.osd != node.id) {
        match members::pull(node, pg, *m, object).await {
            Ok(pulled) => {
                let muts = mutation::replace_with(true, pulled_state(&pulled));
                recover(node, pg, st, me, object, muts, pulled.version, epoch).await?;
                metrics::counter!("cairn_osd_read_repaired_total").increment(1);
                tracing::warn!(pg = %pg.id, object, from = m.osd, "rewrote a copy that failed its checksums");
                return Ok(());
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

// ---- the schedule ----

/// How often the schedule looks for PGs due a scrub.
const SCHEDULE_TICK: std::time::Duration = std::time::Duration::from_secs(10);

/// Scrubs, one PG at a time, the clean PGs this OSD is the primary of once their interval
/// has passed since the last scrub, deep or light, until `stop`. A PG never scrubbed here
/// counts its interval from a time spread over the interval, so PGs do not all come due at
/// once; that time is for the schedule only, never reported as a scrub.
pub async fn run_schedule(
    node: std::sync::Arc<OsdNode>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (light, deep) = (
        node.settings.scrub_interval_ms,
        node.settings.deep_scrub_interval_ms,
    );
    if light == 0 && deep == 0 {
        return;
    }
    loop {
        if let Some((pg, deep)) = due(&node, light, deep) {
            let req = cairn_common::proto::OpRequest {
                osdmap_epoch: node.maps().osdmap.epoch,
                pool: pg.pool,
                op: Some(cairn_common::proto::ObjectOp {
                    op: Some(cairn_common::proto::object_op::Op::Scrub(ScrubOp {
                        pg: pg.seed,
                        deep,
                        repair: false,
                    })),
                }),
                ..Default::default()
            };
            // The next due PG at once after a scrub; after a failure, the pause.
            tokio::select! {
                out = crate::primary::handle_op(&node, req) => {
                    if out.result == OpResult::Ok as i32 {
                        continue;
                    }
                }
                _ = stop.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULE_TICK) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The first clean, active PG this OSD is primary of that is due a scrub, and whether deep.
fn due(node: &OsdNode, light_ms: u64, deep_ms: u64) -> Option<(PgId, bool)> {
    let maps = node.maps();
    let osdmap = &maps.osdmap;
    let now = now_ms();
    for report in node.pg_records.reports(node.id, osdmap) {
        let pg = PgId {
            pool: report.pool,
            seed: report.pg,
        };
        let clean = osdmap.pools.get(&pg.pool).is_some_and(|pool| {
            cairn_common::placement::pg_acting(osdmap, pool, pg)
                .iter()
                .all(|o| *o != cairn_common::placement::NO_OSD)
        });
        if !report.active || !clean || report.recovery_left > 0 {
            continue;
        }
        let spread = |interval: u64| {
            let h =
                (u64::from(pg.pool) << 32 | u64::from(pg.seed)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            now.saturating_sub(h % interval.max(1))
        };
        let (last, last_deep) = node.pg_records.update(pg, |r| {
            if r.light_due_base_ms == 0 {
                r.light_due_base_ms = spread(light_ms);
            }
            if r.deep_due_base_ms == 0 {
                r.deep_due_base_ms = spread(deep_ms);
            }
            (
                r.last_scrub_ms.max(r.light_due_base_ms),
                r.last_deep_scrub_ms.max(r.deep_due_base_ms),
            )
        });
        if deep_ms > 0 && now >= last_deep + deep_ms {
            return Some((pg, true));
        }
        if light_ms > 0 && now >= last + light_ms {
            return Some((pg, false));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(version: u64, data: u32) -> Option<ScrubObject> {
        Some(ScrubObject {
            name: "o".into(),
            version,
            size: 10,
            meta_digest: 1,
            data_digest: data,
            read_error: String::new(),
        })
    }

    fn unreadable() -> Option<ScrubObject> {
        let mut c = copy(5, 0);
        if let Some(c) = &mut c {
            c.read_error = "checksum mismatch".into();
        }
        c
    }

    #[test]
    fn agreeing_copies_are_clean() {
        let v = judge(&[copy(5, 9), copy(5, 9), copy(5, 9)], 0, true);
        assert!(v.findings.is_empty());
        assert_eq!(v.keep.unwrap().version, 5);
    }

    #[test]
    fn the_majority_wins_and_the_odd_copy_is_named() {
        let v = judge(&[copy(5, 9), copy(5, 7), copy(5, 9)], 1, true);
        assert_eq!(v.keep.as_ref().unwrap().data, 9);
        assert_eq!(v.findings.len(), 1);
        assert_eq!(v.findings[0].member, 1);
        assert!(!v.findings[0].checksum);
        // Shards differ in data by design: without data, they agree.
        assert!(judge(&[copy(5, 9), copy(5, 7), copy(5, 8)], 0, false)
            .findings
            .is_empty());
    }

    #[test]
    fn unreadable_copies_do_not_vote_and_are_checksum_errors() {
        let v = judge(&[unreadable(), copy(5, 9), None], 0, true);
        // One readable copy against one missing: a tie the primary cannot break (it cannot
        // read its own), so the newest state, the copy, is kept.
        assert_eq!(v.keep.as_ref().unwrap().version, 5);
        let kinds: Vec<(usize, bool)> = v.findings.iter().map(|f| (f.member, f.checksum)).collect();
        assert_eq!(kinds, vec![(0, true), (2, false)]);
    }

    #[test]
    fn a_tie_goes_to_the_primary_and_extra_copies_are_errors() {
        let v = judge(&[None, copy(5, 9)], 0, true);
        assert!(v.keep.is_none());
        assert_eq!(v.findings[0].why, "copy should not exist");
        let v = judge(&[copy(6, 9), copy(5, 9)], 0, true);
        assert_eq!(v.keep.unwrap().version, 6);
        assert!(v.findings[0].why.contains("version"));
    }
}
