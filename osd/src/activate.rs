//! Activation: bringing a PG's members in line before its primary serves it in a new
//! interval (any map change: the members may have changed, or restarted).
//!
//! The primary asks every current member for its PG version, log and object versions, then
//! works out from the past OSD maps which earlier intervals may have accepted writes since
//! the newest activation any member has seen, and asks members of those intervals too — also
//! OSDs no longer in the PG (`peering`). If such an interval has no member up, the PG stays
//! down and says which OSDs it waits for. Then, from everything heard: a replicated PG makes
//! every current member equal to the member with the newest version, object by object (copy
//! what differs, remove what it lacks); an erasure-coded PG keeps per object the newest
//! version k distinct shards hold (or its absence) and rebuilds every other member's shard
//! from k holders. Every member then starts the interval at one new version of this epoch,
//! with the log the PG keeps (see `peering::agreed_log`) and the list of objects it lacks;
//! the copying and rebuilding happen afterwards, in the background (`recovery`), except for
//! rollbacks to a stashed state (the next write replaces a stash, so those cannot wait).

use std::collections::{BTreeMap, BTreeSet};

use cairn_common::pg_states::DOWN_REASON_PREFIX;
use cairn_common::proto::{LogEntry, PgQueryReply, SubOpRequest};

use crate::ec::Codec;
use crate::members::{self, Member};
use crate::node::OsdNode;
use crate::peering::{self, Probe};
use crate::pg::{Pg, PgState, LOG_ENTRIES_KEPT};
use crate::recovery::{bring_object_in_line, Pending, Plan};
use crate::stash::STASH;

/// Rounds of asking past members: each round's answers may reveal a newer activation.
const PROBE_ROUNDS: usize = 8;

/// Makes the PG active under the map of `epoch`, bringing members in line first. Any map
/// change re-activates (the PG's members may have changed and changed back in between).
/// Errors say why the PG cannot serve yet (the client retries).
pub async fn ensure_active(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    codec: Option<&Codec>,
    epoch: u64,
) -> Result<(), String> {
    if st.active == Some(epoch) {
        return Ok(());
    }
    st.active = None;
    st.recovery.clear();
    let outcome = activate(node, pg, st, members, codec, epoch).await;
    crate::recovery::report_progress(node, pg, st);
    node.pg_records.update(pg.id, |r| match &outcome {
        Ok(objects) => {
            r.active_epoch = epoch;
            r.blocked.clear();
            r.objects = *objects;
        }
        Err(why) => r.blocked = why.clone(),
    });
    outcome.map(|_| ())
}

/// What one member or past member said.
type Heard = Vec<(Member, PgQueryReply)>;

/// Decides what the PG keeps, rolls back to stashed states now, starts every member on the
/// interval with the list of what it lacks, and leaves the rest of the copying to
/// `recovery` (the plan in `st.recovery`); answers how many objects the PG holds.
async fn activate(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    codec: Option<&Codec>,
    epoch: u64,
) -> Result<u64, String> {
    let mut heard: Heard = Vec::with_capacity(members.len());
    for m in members {
        heard.push((*m, members::query(node, pg, st, *m, epoch).await?));
    }
    let last_members = hear_past_members(node, pg, st, &mut heard, epoch).await?;
    st.empty_members = heard
        .iter()
        .filter(|(m, info)| members.contains(m) && info.last_update == 0)
        .map(|(m, _)| *m)
        .collect();
    let (_, auth) = heard
        .iter()
        .max_by_key(|(_, info)| info.last_update)
        .cloned()
        .ok_or("the PG has no members")?;
    let names: BTreeSet<String> = heard
        .iter()
        .flat_map(|(_, info)| info.objects.keys().chain(info.missing.keys()).cloned())
        .collect();
    let current = peering::current(&heard, |info| info.last_update);
    let complete = last_members
        .iter()
        .all(|m| current.iter().any(|(c, _)| c == m));
    // Decide everything first, so the PG's report can say how much is left while it is done.
    let mut plan = Plan::new();
    let mut now_plan = Plan::new();
    let mut objects = 0;
    for name in &names {
        let chosen = match codec {
            None => said(&auth, name),
            Some(codec) => {
                let now = held(current.iter().copied(), name);
                let all = holdings(held(&heard, name).iter());
                let said_now: Vec<(Member, Option<u64>)> = current
                    .iter()
                    .map(|(m, info)| (*m, said(info, name)))
                    .collect();
                let h = peering::EcHoldings {
                    current: &said_now,
                    stashed: &holdings(now.iter().filter(|h| h.stashed)),
                    all: &all,
                    complete,
                };
                peering::chosen_ec_version(&h, name, codec.k())
                    .map_err(|e| waiting_for(e, &last_members, &current))?
            }
        };
        objects += u64::from(chosen.is_some());
        let targets: Vec<(Member, Option<u64>)> = heard
            .iter()
            .filter(|(m, _)| members.contains(m))
            .map(|(m, info)| (*m, info.objects.get(name).copied()))
            .filter(|(_, have)| *have != chosen)
            .collect();
        if targets.is_empty() {
            continue;
        }
        let holders: Vec<(Member, String)> = held(&heard, name)
            .into_iter()
            .filter(|h| chosen.is_some() && h.version == chosen)
            .map(|h| (h.member, h.source))
            .collect();
        let later = chosen.is_none() || current_members_hold(&holders, members, name, codec);
        let pending = Pending {
            chosen,
            holders,
            targets,
        };
        let into = if later { &mut plan } else { &mut now_plan };
        into.insert(name.clone(), pending);
    }
    // What the current members cannot give between them (a version held by past members or
    // in a stash) is brought in line before the PG serves: a stash lasts only until the
    // member's next change, and a later peering asks past members only of the last
    // activation, so such a source could be gone for good once the PG moves on.
    node.pg_records.update(pg.id, |r| {
        r.recovery_left =
            crate::recovery::copies_left(&plan) + crate::recovery::copies_left(&now_plan)
    });
    for (name, mut pending) in now_plan {
        bring_object_in_line(node, pg, st, &mut pending, &name, codec, epoch).await?;
    }
    // Every member starts the interval at one new version, after anything an earlier
    // interval wrote: a stray write of an old primary can never tie with this interval's.
    // Each gets the log the PG keeps, so a retried request is recognised whichever member
    // serves it next, and a rolled-back one is not taken for applied.
    let start = crate::pg::next_version(auth.last_update, epoch);
    let log = log_of_interval(&heard, &auth, codec);
    for (m, info) in heard.iter().filter(|(m, _)| members.contains(m)) {
        let replace = info.log != log;
        let req = SubOpRequest {
            osdmap_epoch: epoch,
            pool: pg.id.pool,
            pg: pg.id.seed,
            version: start,
            recovery: true,
            replace_log: replace,
            log: if replace { log.clone() } else { Vec::new() },
            missing: missing_of(&plan, *m),
            ..SubOpRequest::default()
        };
        members::sub_op(node, pg, st, *m, req).await?;
    }
    st.recovery = plan;
    st.active = Some(epoch);
    tracing::debug!(pg = %pg.id, epoch, "pg active");
    Ok(objects)
}

/// Asks the members of past intervals that may have accepted writes (see `peering`), until
/// every such interval since the newest activation heard of is represented. Answers the
/// members of that activation.
async fn hear_past_members(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    heard: &mut Heard,
    epoch: u64,
) -> Result<Vec<Member>, String> {
    for _ in 0..PROBE_ROUNDS {
        let epochs: BTreeMap<Member, u64> = heard
            .iter()
            .map(|(m, info)| (*m, peering::epoch_of(info.last_update)))
            .collect();
        let les = epochs.values().copied().max().unwrap_or(0);
        let maps = node.osdmaps(les.max(1), epoch).await?;
        let intervals = peering::intervals(maps.iter().map(|m| m.as_ref()), pg.id);
        let now = node.maps();
        let is_up = |osd: u32| now.osdmap.osds.get(&osd).is_some_and(|o| o.up);
        match peering::probe(&intervals, &epochs, is_up) {
            Probe::Complete => return Ok(peering::members_at(&intervals, les)),
            Probe::More(more) => {
                for m in more {
                    tracing::info!(pg = %pg.id, osd = m.osd, shard = m.shard, "asking a member of a past interval");
                    heard.push((m, members::query(node, pg, st, m, epoch).await?));
                }
            }
            Probe::Down {
                waiting_for,
                first,
                last,
            } => {
                let osds: Vec<String> = waiting_for.iter().map(|o| format!("osd.{o}")).collect();
                return Err(format!(
                    "{DOWN_REASON_PREFIX}epochs {first}-{last} may have accepted writes and too few of their members are up; waiting for {}",
                    osds.join(", ")
                ));
            }
        }
    }
    Err("past intervals keep changing; peering again later".into())
}

/// Names, in a reason to wait, the members of the last activation not heard from: the PG is
/// down until one of them returns.
fn waiting_for(why: String, last: &[Member], current: &[&(Member, PgQueryReply)]) -> String {
    let missing: Vec<String> = last
        .iter()
        .filter(|m| !current.iter().any(|(c, _)| c == *m))
        .map(|m| format!("osd.{}", m.osd))
        .collect();
    if missing.is_empty() {
        return why;
    }
    format!(
        "{DOWN_REASON_PREFIX}{why}; the last members to write it include {}",
        missing.join(", ")
    )
}

/// Whether the current members hold the chosen version of `object` between them (a copy, or
/// k distinct shards): then recovery can wait.
fn current_members_hold(
    holders: &[(Member, String)],
    members: &[Member],
    object: &str,
    codec: Option<&Codec>,
) -> bool {
    let shards: BTreeSet<i32> = holders
        .iter()
        .filter(|(m, source)| members.contains(m) && source == object)
        .map(|(m, _)| m.shard)
        .collect();
    shards.len() >= codec.map_or(1, Codec::k)
}

/// What a member's list of missing objects says it lacks, for the start of the interval.
fn missing_of(plan: &Plan, m: Member) -> std::collections::HashMap<String, u64> {
    plan.iter()
        .filter(|(_, p)| p.targets.iter().any(|(t, _)| *t == m))
        .map(|(name, p)| (name.clone(), p.chosen.unwrap_or(0)))
        .collect()
}

/// What a member says of `object`: the PG's version when the object is on its missing list
/// (recovery has not reached it), else its own copy's.
fn said(info: &PgQueryReply, object: &str) -> Option<u64> {
    match info.missing.get(object) {
        Some(0) => None,
        Some(v) => Some(*v),
        None => info.objects.get(object).copied(),
    }
}

/// A state of an object a responder can give: its version (`None`: absent) and the object
/// to copy it from — the object itself, or the responder's rollback stash.
struct Held {
    member: Member,
    version: Option<u64>,
    source: String,
    /// From the stash: the state before the member's last change.
    stashed: bool,
}

/// Every state of `object` the responders hold (by shard, for erasure-coded pools): each
/// one's own, and the state before its last change when it stashed that (see `stash`).
fn held<'a>(
    heard: impl IntoIterator<Item = &'a (Member, PgQueryReply)>,
    object: &str,
) -> Vec<Held> {
    let mut out = Vec::new();
    for (m, info) in heard {
        // A copy the member lists as missing is out of date: not a source, and no evidence.
        if !info.missing.contains_key(object) {
            out.push(Held {
                member: *m,
                version: info.objects.get(object).copied(),
                source: object.to_string(),
                stashed: false,
            });
        }
        if let Some(s) = info.stashed.as_ref() {
            if s.object == object && s.for_version == info.last_update {
                out.push(Held {
                    member: *m,
                    version: (!s.absent).then_some(s.version),
                    source: STASH.to_string(),
                    stashed: true,
                });
            }
        }
    }
    out
}

fn holdings<'a>(held: impl Iterator<Item = &'a Held>) -> Vec<(Member, Option<u64>)> {
    held.map(|h| (h.member, h.version)).collect()
}

fn log_of_interval(heard: &Heard, auth: &PgQueryReply, codec: Option<&Codec>) -> Vec<LogEntry> {
    let entries = |r: &PgQueryReply| -> Vec<(u64, String)> {
        r.log.iter().map(|e| (e.version, e.reqid.clone())).collect()
    };
    let logs: Vec<(Member, Vec<(u64, String)>)> =
        heard.iter().map(|(m, r)| (*m, entries(r))).collect();
    let borrowed: Vec<(Member, &[(u64, String)])> =
        logs.iter().map(|(m, l)| (*m, l.as_slice())).collect();
    peering::agreed_log(
        &borrowed,
        &entries(auth),
        codec.map(Codec::k),
        LOG_ENTRIES_KEPT,
    )
    .into_iter()
    .map(|(version, reqid)| LogEntry { version, reqid })
    .collect()
}
