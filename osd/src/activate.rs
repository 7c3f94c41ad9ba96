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
//! with the log the PG keeps (see `peering::agreed_log`). Recovery is part of activation: ops
//! wait until the members are in line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use cairn_common::pg_states::DOWN_REASON_PREFIX;
use cairn_common::proto::{LogEntry, Mutation, PgQueryReply, SubOpRequest};

use crate::ec::Codec;
use crate::erasure;
use crate::members::{self, Member};
use crate::mutation;
use crate::node::OsdNode;
use crate::peering::{self, Probe};
use crate::pg::{Pg, PgState, LOG_ENTRIES_KEPT};
use crate::replica::pulled_state;
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
    let outcome = activate(node, pg, st, members, codec, epoch).await;
    node.pg_records.update(pg.id, |r| {
        r.recovery_left = 0;
        match &outcome {
            Ok(objects) => {
                r.active_epoch = epoch;
                r.blocked.clear();
                r.objects = *objects;
            }
            Err(why) => r.blocked = why.clone(),
        }
    });
    outcome.map(|_| ())
}

/// What one member or past member said.
type Heard = Vec<(Member, PgQueryReply)>;

/// Brings the members in line; answers how many objects the PG holds.
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
    let (_, auth) = heard
        .iter()
        .max_by_key(|(_, info)| info.last_update)
        .cloned()
        .ok_or("the PG has no members")?;
    let names: BTreeSet<String> = heard
        .iter()
        .flat_map(|(_, info)| info.objects.keys().cloned())
        .collect();
    let current = peering::current(&heard, |info| info.last_update);
    let complete = last_members
        .iter()
        .all(|m| current.iter().any(|(c, _)| c == m));
    // Decide everything first, so the PG's report can say how much is left while it is done.
    let mut work = Vec::new();
    let mut objects = 0;
    for name in &names {
        let chosen = match codec {
            None => auth.objects.get(name).copied(),
            Some(codec) => {
                let now = held(current.iter().copied(), name);
                let all = holdings(held(&heard, name).iter());
                let h = peering::EcHoldings {
                    current: &holdings(now.iter().filter(|h| !h.stashed)),
                    stashed: &holdings(now.iter().filter(|h| h.stashed)),
                    all: &all,
                    complete,
                };
                peering::chosen_ec_version(&h, name, codec.k())
                    .map_err(|e| waiting_for(e, &last_members, &current))?
            }
        };
        objects += u64::from(chosen.is_some());
        for (m, info) in heard.iter().filter(|(m, _)| members.contains(m)) {
            let have = info.objects.get(name).copied();
            if have != chosen {
                work.push((*m, name, have, chosen));
            }
        }
    }
    let mut left = work.len() as u64;
    node.pg_records.update(pg.id, |r| r.recovery_left = left);
    for (m, name, have, chosen) in work {
        bring_in_line(node, pg, st, &heard, m, have, name, chosen, codec, epoch).await?;
        left -= 1;
        node.pg_records.update(pg.id, |r| r.recovery_left = left);
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
            ..SubOpRequest::default()
        };
        members::sub_op(node, pg, st, *m, req).await?;
    }
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
        out.push(Held {
            member: *m,
            version: info.objects.get(object).copied(),
            source: object.to_string(),
            stashed: false,
        });
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

/// Makes member `m`'s copy of `name` (at `have`) the `chosen` version: removed, copied from
/// the responder holding it, or its shard rebuilt from k holders.
#[allow(clippy::too_many_arguments)]
async fn bring_in_line(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    heard: &Heard,
    m: Member,
    have: Option<u64>,
    name: &str,
    chosen: Option<u64>,
    codec: Option<&Codec>,
    epoch: u64,
) -> Result<(), String> {
    tracing::info!(pg = %pg.id, osd = m.osd, object = %name, have = ?have, want = ?chosen, "bringing a member in line");
    let holders: Vec<(Member, String)> = held(heard, name)
        .into_iter()
        .filter(|h| chosen.is_some() && h.version == chosen)
        .map(|h| (h.member, h.source))
        .collect();
    let state = match (chosen, codec) {
        (None, _) => None,
        (Some(v), Some(codec)) => Some(rebuild_shard(node, pg, &holders, m, codec, name, v).await?),
        (Some(_), None) => {
            let (source, object) = holders.first().ok_or("no member holds the chosen copy")?;
            pulled_state(&members::pull(node, pg, *source, object).await?)
        }
    };
    let muts = mutation::replace_with(have.is_some(), state);
    if muts.is_empty() {
        return Ok(());
    }
    recover(node, pg, st, m, name, muts, chosen.unwrap_or(0), epoch).await
}

/// Member `target`'s shard of `object` at `version`, decoded from k distinct shards of the
/// `holders` (responders holding that version, and the object to read it from there: the
/// object or a stash; the next is tried when one cannot be read).
pub async fn rebuild_shard(
    node: &OsdNode,
    pg: &Pg,
    holders: &[(Member, String)],
    target: Member,
    codec: &Codec,
    object: &str,
    version: u64,
) -> Result<Vec<Mutation>, String> {
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; codec.shard_count()];
    let mut attrs = Vec::new();
    let mut found = 0;
    // The target's own copy is what is being replaced; its stash may serve.
    for (m, source) in holders
        .iter()
        .filter(|(m, source)| !(*m == target && source == object))
    {
        if found == codec.k() {
            break;
        }
        // Two holders of one shard (a past member and the current one) count once.
        if shards.get(m.shard as usize).is_none_or(Option::is_some) {
            continue;
        }
        match members::pull(node, pg, *m, source).await {
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
    if found < codec.k() {
        return Err(format!(
            "object {object}: {found} readable shards at version {version:#x}, {} needed to rebuild",
            codec.k()
        ));
    }
    codec
        .decode(&mut shards)
        .map_err(|e| format!("cannot rebuild {object}: {e}"))?;
    let shard = shards
        .get_mut(target.shard as usize)
        .and_then(Option::take)
        .unwrap_or_default();
    Ok(erasure::with_shard_data(&attrs, shard))
}

/// Makes member `m`'s copy of `object` what `mutations` say, at `version` (with an empty
/// `object`: sets the member's PG version).
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
) -> Result<(), String> {
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
    if !object.is_empty() {
        node.io.recovered_objects.fetch_add(1, Ordering::Relaxed);
        node.io
            .recovered_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    Ok(())
}
