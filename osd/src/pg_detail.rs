//! `cairn pg query`: what a PG's primary knows of it — the epoch it activated for, its
//! version and log, what recovery still has to bring to each member, why it does not serve,
//! and the intervals since the newest activation its copy has seen (what peering weighs).
//! Answered without activating the PG: a stuck PG is what one asks about.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::members::Member;
use crate::node::OsdNode;
use crate::peering;
use crate::pg::{Pg, PgState};
use crate::pg_stats::ComparedBy;

/// How long a query waits for the PG's lock (held by an op, an activation, or one object's
/// recovery) before it answers with what it knows without it.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Objects still to recover named in an answer.
const OBJECTS_LISTED: usize = 20;
/// Intervals named in an answer (the newest).
const INTERVALS_LISTED: usize = 32;

#[derive(Debug, Serialize)]
pub struct Detail {
    pub primary: u32,
    pub osdmap_epoch: u64,
    /// The epoch the PG was activated for; `None` if not for this OSD's current map.
    pub activated_epoch: Option<u64>,
    /// Why the last activation failed, if it did.
    pub blocked: String,
    /// How the last activation chose which objects to compare across the members (`log`:
    /// those changed since the newest log entry all hold; `listing`: all), and how many.
    pub compared_by: ComparedBy,
    pub objects_compared: u64,
    pub members: Vec<MemberDetail>,
    /// The PG's state on the primary; `None` when its lock stayed held (`LOCK_WAIT`).
    pub state: Option<StateDetail>,
    pub objects: u64,
    pub scrub_errors: u64,
    pub scrubbing: bool,
    pub last_scrub_ms: u64,
    pub last_deep_scrub_ms: u64,
    /// The PG's intervals from the epoch of the primary's newest version to now, oldest
    /// first: peering must hear from a member of each that may have accepted writes.
    pub past_intervals: Vec<IntervalDetail>,
    /// Why they could not be worked out (the state was busy, or the mons did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub past_intervals_error: Option<String>,
}

/// A run of map epochs in which the PG's members stayed the same.
#[derive(Debug, Serialize)]
pub struct IntervalDetail {
    pub first: u64,
    pub last: u64,
    /// The members up then, in placement order.
    pub osds: Vec<u32>,
    /// Enough of them were up for the PG to activate and accept writes.
    pub maybe_went_rw: bool,
}

#[derive(Debug, Serialize)]
pub struct MemberDetail {
    pub osd: u32,
    /// The member's position for erasure-coded pools; -1 for replicated ones.
    pub shard: i32,
    /// Copies (shards) recovery still has to bring to this member.
    pub copies_to_recover: u64,
    /// It held nothing of the PG when the PG activated: it is being backfilled.
    pub backfilling: bool,
}

#[derive(Debug, Serialize)]
pub struct StateDetail {
    /// The newest version applied, and the log entries kept.
    pub last_update: u64,
    pub log_entries: usize,
    /// Objects the primary's own copy lacks (recovered first when an op needs them).
    pub primary_missing: usize,
    /// Objects recovery still has to bring in line, and the first of them with the members
    /// each goes to.
    pub recovery_objects_left: usize,
    pub recovering: BTreeMap<String, Vec<u32>>,
    /// The primary holds a rollback stash of the PG's last erasure-coded write.
    pub stashed: bool,
}

/// The detail of `pg` (of which this OSD is the primary, with `members`), at `epoch`.
pub async fn detail(node: &OsdNode, pg: &Pg, members: &[Member], epoch: u64) -> Detail {
    let record = node.pg_records.get(pg.id).unwrap_or_default();
    let state = tokio::time::timeout(LOCK_WAIT, pg.state.lock()).await.ok();
    let per_member = state.as_deref().map(copies_per_member).unwrap_or_default();
    let intervals = match state.as_deref() {
        Some(st) => past_intervals(node, pg, peering::epoch_of(st.last_update), epoch).await,
        None => Err("the PG's state stayed locked".to_string()),
    };
    let (past_intervals, past_intervals_error) = match intervals {
        Ok(list) => (list, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let backfilling = |m: &Member| {
        state
            .as_deref()
            .is_some_and(|st| st.empty_members.contains(m))
    };
    Detail {
        primary: node.id,
        osdmap_epoch: epoch,
        activated_epoch: state.as_deref().and_then(|st| st.active),
        blocked: record.blocked.clone(),
        compared_by: record.compared_by,
        objects_compared: record.objects_compared,
        members: members
            .iter()
            .map(|m| MemberDetail {
                osd: m.osd,
                shard: m.shard,
                copies_to_recover: per_member.get(m).copied().unwrap_or(0),
                backfilling: backfilling(m),
            })
            .collect(),
        state: state.as_deref().map(state_detail),
        objects: record.objects,
        scrub_errors: record.scrub_errors,
        scrubbing: record.scrubbing,
        last_scrub_ms: record.last_scrub_ms,
        last_deep_scrub_ms: record.last_deep_scrub_ms,
        past_intervals,
        past_intervals_error,
    }
}

/// The PG's intervals over the map epochs `since..=epoch` (the newest `INTERVALS_LISTED`).
async fn past_intervals(
    node: &OsdNode,
    pg: &Pg,
    since: u64,
    epoch: u64,
) -> Result<Vec<IntervalDetail>, String> {
    let maps = tokio::time::timeout(LOCK_WAIT, node.osdmaps(since.max(1), epoch))
        .await
        .map_err(|_| "the mons did not send the past maps in time".to_string())??;
    let all = peering::intervals(maps.iter().map(|m| m.as_ref()), pg.id);
    let skip = all.len().saturating_sub(INTERVALS_LISTED);
    Ok(all
        .into_iter()
        .skip(skip)
        .map(|i| IntervalDetail {
            first: i.first,
            last: i.last,
            osds: i.members.iter().map(|m| m.osd).collect(),
            maybe_went_rw: i.maybe_went_rw,
        })
        .collect())
}

/// Copies recovery still owes each member.
fn copies_per_member(st: &PgState) -> BTreeMap<Member, u64> {
    let mut out = BTreeMap::new();
    for pending in st.recovery.values() {
        for (m, _) in &pending.targets {
            *out.entry(*m).or_default() += 1;
        }
    }
    out
}

fn state_detail(st: &PgState) -> StateDetail {
    StateDetail {
        last_update: st.last_update,
        log_entries: st.entries().count(),
        primary_missing: st.missing.len(),
        recovery_objects_left: st.recovery.len(),
        recovering: st
            .recovery
            .iter()
            .take(OBJECTS_LISTED)
            .map(|(name, p)| (name.clone(), p.targets.iter().map(|(m, _)| m.osd).collect()))
            .collect(),
        stashed: st.stashed,
    }
}
