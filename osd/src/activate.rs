//! Activation: bringing a PG's members in line before its primary serves it in a new
//! interval (any map change: the members may have changed, or restarted).
//!
//! The primary asks every current member for its PG version and log, then works out from the
//! past OSD maps which earlier intervals may have accepted writes since the newest activation
//! any member has seen, and asks members of those intervals too — also OSDs no longer in the
//! PG (`peering`). If such an interval has no member up, the PG stays down and says which OSDs
//! it waits for. The logs say which objects the members may disagree on (those changed after
//! the newest entry all of them hold); only those objects' versions are asked for. When the
//! logs cannot tell (a new member, or one away longer than the logs reach), every member lists
//! every object — backfill. Then, from everything heard: a replicated PG makes
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
use crate::pg::{Pg, PgState, LOG_ENTRIES_KEPT, LOG_RULES};
use crate::pg_stats::ComparedBy;
use crate::recovery::{bring_object_in_line, Pending, Plan};
use crate::replica::Listing;
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
        heard.push((
            *m,
            members::query(node, pg, st, *m, epoch, no_objects()).await?,
        ));
    }
    let last_members = hear_past_members(node, pg, st, &mut heard, epoch).await?;
    // The authority: the newest version (the second query checks that it did not move). Its
    // count is taken before the versions are asked for: an older OSD lists every object
    // whatever it is asked.
    let auth_at = heard
        .iter()
        .enumerate()
        .max_by_key(|(_, (_, info))| info.last_update)
        .map(|(i, _)| i)
        .ok_or("the PG has no members")?;
    let auth_count = {
        let info = &heard[auth_at].1;
        info.object_count.max(info.objects.len() as u64)
    };
    let compared = list_compared(node, pg, st, &mut heard, epoch).await?;
    st.empty_members = heard
        .iter()
        .filter(|(m, info)| members.contains(m) && info.last_update == 0)
        .map(|(m, _)| *m)
        .collect();
    let auth = heard[auth_at].1.clone();
    // The PG's object count: those compared that it keeps, plus, when the logs chose what to
    // compare, the others, which every member holds alike (the authority's count without its
    // compared ones).
    let (names, mut objects) = match compared {
        Compared::ByLog(names) => {
            let held = names
                .iter()
                .filter(|n| auth.objects.contains_key(*n))
                .count();
            let others = auth_count.saturating_sub(held as u64);
            (names, others)
        }
        Compared::All => {
            let names = heard
                .iter()
                .flat_map(|(_, info)| info.objects.keys().chain(info.missing.keys()).cloned())
                .collect();
            (names, 0)
        }
    };
    let current = peering::current(&heard, |info| info.last_update);
    let complete = last_members
        .iter()
        .all(|m| current.iter().any(|(c, _)| c == m));
    // Decide everything first, so the PG's report can say how much is left while it is done.
    let mut plan = Plan::new();
    let mut now_plan = Plan::new();
    let mut settled = Vec::new();
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
        if disagrees(&heard, name, chosen) {
            settled.push(name.clone());
        }
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
        let misplaced = held_elsewhere(&targets, &holders, members, name, codec);
        let pending = Pending {
            chosen,
            holders,
            targets,
            misplaced,
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
            crate::recovery::copies_left(&plan) + crate::recovery::copies_left(&now_plan);
        r.misplaced_left =
            crate::recovery::misplaced_left(&plan) + crate::recovery::misplaced_left(&now_plan);
    });
    for (name, mut pending) in now_plan {
        bring_object_in_line(node, pg, st, &mut pending, &name, codec, epoch).await?;
    }
    // Every member starts the interval at a new version, after anything an earlier interval
    // wrote: a stray write of an old primary can never tie with this interval's. Each gets
    // the log the PG keeps, so a retried request is recognised whichever member serves it
    // next, and a rolled-back one is not taken for applied; the log also names the objects
    // settled here, for later peerings to compare.
    let (log, start) = peering::interval_log(
        agreed_log(&heard, &auth, codec),
        &settled,
        crate::pg::next_version(auth.last_update, epoch),
        LOG_ENTRIES_KEPT,
    );
    for (m, info) in heard.iter().filter(|(m, _)| members.contains(m)) {
        let replace = info.log != log;
        let req = SubOpRequest {
            osdmap_epoch: epoch,
            pool: pg.id.pool,
            pg: pg.id.seed,
            version: start,
            prior_version: info.last_update,
            expect_prior: true,
            log_rules: LOG_RULES,
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

/// A query that lists no object's version (the member's object count, state and log only).
fn no_objects() -> Listing {
    Listing::Named(Vec::new())
}

/// Which objects activation compares across the members.
enum Compared {
    /// Those the logs name after their newest common entry, with what members list as
    /// missing or have stashed (`peering::candidates`).
    ByLog(BTreeSet<String>),
    /// Every object any member holds or lists as missing: the logs cannot tell (backfill).
    All,
}

/// Decides from the logs heard which objects to compare and asks every member heard for its
/// versions of them (of all when the logs cannot tell).
async fn list_compared(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    heard: &mut Heard,
    epoch: u64,
) -> Result<Compared, String> {
    let logs: Vec<&[LogEntry]> = heard.iter().map(|(_, info)| info.log.as_slice()).collect();
    // A log an older primary last replaced may not name what its activation settled.
    let trusted = heard.iter().all(|(_, info)| info.log_rules >= LOG_RULES);
    let candidates = if trusted {
        peering::candidates(&logs)
    } else {
        None
    };
    let compared = match candidates {
        Some(mut names) => {
            for (_, info) in heard.iter() {
                names.extend(info.missing.keys().cloned());
                names.extend(info.stashed.as_ref().map(|s| s.object.clone()));
            }
            Compared::ByLog(names)
        }
        None => Compared::All,
    };
    let (listing, by) = match &compared {
        Compared::ByLog(names) if names.is_empty() => (None, ComparedBy::Log),
        Compared::ByLog(names) => (
            Some(Listing::Named(names.iter().cloned().collect())),
            ComparedBy::Log,
        ),
        Compared::All => (Some(Listing::All), ComparedBy::Listing),
    };
    let how = if by == ComparedBy::Log {
        "log"
    } else {
        "listing"
    };
    metrics::counter!("cairn_osd_activations_total", "compared" => how).increment(1);
    tracing::debug!(pg = %pg.id, epoch, compared = how, "comparing members' objects");
    for (m, info) in heard.iter_mut() {
        info.objects = match &listing {
            Some(listing) => {
                let reply = members::query(node, pg, st, *m, epoch, listing.clone()).await?;
                if !same_state(info, &reply) {
                    return Err(format!(
                        "osd.{} changed while pg {} peered; peering again",
                        m.osd, pg.id
                    ));
                }
                reply.objects
            }
            None => Default::default(),
        };
    }
    let count = match &compared {
        Compared::ByLog(names) => names.len(),
        Compared::All => heard
            .iter()
            .map(|(_, i)| i.objects.len())
            .max()
            .unwrap_or(0),
    };
    node.pg_records.update(pg.id, |r| {
        r.compared_by = by;
        r.objects_compared = count as u64;
    });
    Ok(compared)
}

/// Whether a member's second answer describes the state its first did (what was compared was
/// chosen from the first).
fn same_state(first: &PgQueryReply, second: &PgQueryReply) -> bool {
    first.last_update == second.last_update
        && first.log == second.log
        && first.missing == second.missing
        && first.stashed == second.stashed
        && first.log_rules == second.log_rules
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
                    heard.push((
                        m,
                        members::query(node, pg, st, m, epoch, no_objects()).await?,
                    ));
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

/// The targets whose copy of the chosen version an OSD outside the PG holds in their stead,
/// each such copy standing in for one target (at the same position, for erasure coding). It
/// stays there until the PG is clean (`cleanup`), so the object keeps its redundancy: the
/// copy is misplaced, as Ceph counts it, not missing.
fn held_elsewhere(
    targets: &[(Member, Option<u64>)],
    holders: &[(Member, String)],
    members: &[Member],
    object: &str,
    codec: Option<&Codec>,
) -> Vec<Member> {
    let mut strays: Vec<Member> = holders
        .iter()
        .filter(|(h, source)| !members.contains(h) && source == object)
        .map(|(h, _)| *h)
        .collect();
    let mut out = Vec::new();
    for (t, _) in targets {
        let stands_in = strays
            .iter()
            .position(|s| codec.is_none() || s.shard == t.shard);
        if let Some(i) = stands_in {
            strays.swap_remove(i);
            out.push(*t);
        }
    }
    out
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

fn agreed_log(heard: &Heard, auth: &PgQueryReply, codec: Option<&Codec>) -> Vec<LogEntry> {
    let logs: Vec<(Member, &[LogEntry])> =
        heard.iter().map(|(m, r)| (*m, r.log.as_slice())).collect();
    peering::agreed_log(&logs, &auth.log, codec.map(Codec::k))
}

/// Whether a responder that has held the PG says otherwise of `object` than the PG keeps:
/// then activation settles it, and the interval's log names it (`peering::interval_log`).
/// A responder that never held anything (a new member) has no log to mislead anyone.
fn disagrees(heard: &Heard, object: &str, chosen: Option<u64>) -> bool {
    heard
        .iter()
        .any(|(_, info)| info.last_update != 0 && said(info, object) != chosen)
}
