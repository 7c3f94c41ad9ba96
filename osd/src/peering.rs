//! Peering decisions, as pure functions of maps and of what members say — no gRPC, no disk
//! (`activate` does the talking; the simulation in the tests drives these directly).
//!
//! A PG's history is a sequence of *intervals*: runs of map epochs in which its acting set
//! stayed the same. An interval with at least `min_size` members up may have activated and
//! accepted writes ("maybe went rw"); every write it acknowledged is on all its members.
//! Activation bumps every member's PG version to the activating epoch, so the newest epoch
//! any member heard from carries (`les`, last epoch started) says which interval is the last
//! one known to have activated. Every interval after it that may have accepted writes must be
//! represented by a member heard from — either it shows that interval never activated (its
//! version is older) or it holds its writes. When no member of such an interval is up, the
//! PG waits for one (`down`) rather than guess.
//!
//! What the PG keeps then follows from the members' states: a replicated PG takes the member
//! with the newest version as the authority; an erasure-coded PG keeps, per object, the newest
//! version at least k distinct shards hold (a write that reached fewer shards was never
//! acknowledged and rolls back), or its absence when k shards lack it.

use std::collections::{BTreeMap, BTreeSet};

use cairn_common::maps::{OsdMap, Pool};
use cairn_common::placement::{pg_acting, PgId, NO_OSD};
use cairn_common::proto::LogEntry;

use crate::members::Member;

/// The members of `pg` up in `map`, with their positions (shards) for erasure-coded pools.
pub fn members_of(map: &OsdMap, pool: &Pool, pg: PgId) -> Vec<Member> {
    let erasure = pool.is_erasure();
    pg_acting(map, pool, pg)
        .iter()
        .enumerate()
        .filter(|(_, osd)| **osd != NO_OSD)
        .map(|(i, osd)| Member {
            osd: *osd,
            shard: if erasure { i as i32 } else { -1 },
        })
        .collect()
}

/// A run of consecutive map epochs in which a PG's up members stayed the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub first: u64,
    pub last: u64,
    pub members: Vec<Member>,
    /// Enough members were up for the PG to activate and accept writes.
    pub maybe_went_rw: bool,
}

/// The intervals of `pg` over `maps` (ascending epochs; a gap in the epochs ends an interval).
pub fn intervals<'a>(maps: impl IntoIterator<Item = &'a OsdMap>, pg: PgId) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    for map in maps {
        let Some(pool) = map.pools.get(&pg.pool) else {
            continue;
        };
        let members = members_of(map, pool, pg);
        let maybe_went_rw = !members.is_empty() && members.len() >= pool.min_size();
        match out.last_mut() {
            Some(i) if i.members == members && i.last + 1 == map.epoch => i.last = map.epoch,
            _ => out.push(Interval {
                first: map.epoch,
                last: map.epoch,
                members,
                maybe_went_rw,
            }),
        }
    }
    out
}

/// The epoch of the newest activation a PG version records (see `pg::next_version`).
pub fn epoch_of(version: u64) -> u64 {
    version >> 32
}

/// What activation must do before deciding anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Every interval since `les` that may have accepted writes has a member heard from.
    Complete,
    /// Hear from these members too (up now, not heard yet: members of past intervals).
    More(Vec<Member>),
    /// An interval that may have accepted writes has no member up: wait for one of them.
    Down {
        waiting_for: BTreeSet<u32>,
        first: u64,
        last: u64,
    },
}

/// Who else to hear from. `heard` maps each member heard from to the epoch its version
/// records (`epoch_of`); the newest of them, `les`, is the last activation known. Members of
/// every later interval that may have accepted writes are needed (one each); the other
/// members of the interval activated at `les` are asked when up.
pub fn probe(
    intervals: &[Interval],
    heard: &BTreeMap<Member, u64>,
    is_up: impl Fn(u32) -> bool,
) -> Probe {
    let les = heard.values().copied().max().unwrap_or(0);
    let mut more = BTreeSet::new();
    for i in intervals
        .iter()
        .filter(|i| i.first > les && i.maybe_went_rw)
    {
        if i.members.iter().any(|m| heard.contains_key(m)) {
            continue;
        }
        let reachable: Vec<Member> = i.members.iter().filter(|m| is_up(m.osd)).copied().collect();
        if reachable.is_empty() {
            return Probe::Down {
                waiting_for: i.members.iter().map(|m| m.osd).collect(),
                first: i.first,
                last: i.last,
            };
        }
        more.extend(reachable);
    }
    // The other members of the last activation hold its writes too: for erasure coding their
    // shards may be what makes a version decodable.
    if let Some(i) = intervals.iter().find(|i| i.first <= les && les <= i.last) {
        more.extend(
            i.members
                .iter()
                .filter(|m| is_up(m.osd) && !heard.contains_key(m)),
        );
    }
    if more.is_empty() {
        Probe::Complete
    } else {
        Probe::More(more.into_iter().collect())
    }
}

/// The members heard from that say what the PG holds: those whose version records the newest
/// activation (`les`). Each was brought in line then and has every write acknowledged since
/// (acknowledged writes reach every member), so whatever one holds is the last acknowledged
/// state of an object or a later unacknowledged write — never older. The others missed at
/// least that activation.
pub fn current<T>(heard: &[(Member, T)], version: impl Fn(&T) -> u64) -> Vec<&(Member, T)> {
    let les = heard
        .iter()
        .map(|(_, t)| epoch_of(version(t)))
        .max()
        .unwrap_or(0);
    heard
        .iter()
        .filter(|(_, t)| epoch_of(version(t)) == les)
        .collect()
}

/// What the responders hold of one erasure-coded object.
pub struct EcHoldings<'a> {
    /// The states of the members at the newest activation (see `current`): any of them is
    /// acceptable.
    pub current: &'a [(Member, Option<u64>)],
    /// Their stashed states from before their last change (see `stash`).
    pub stashed: &'a [(Member, Option<u64>)],
    /// Every copy of every version any responder holds, stashes included (a version names
    /// its bytes, so any holder's shard of it counts).
    pub all: &'a [(Member, Option<u64>)],
    /// Every member of the newest activation was heard from.
    pub complete: bool,
}

/// The version of an erasure-coded object the PG keeps: the newest current version that can
/// be decoded (at least k distinct shards of it among all holders), else absence if a current
/// member lacks the object. Failing both, every current state is a write that reached too few
/// shards: if every member of the newest activation was heard from, none was acknowledged
/// (an acknowledged write is on all of them), so the write rolls back to the stashed state
/// before it — the last acknowledged one. Otherwise the PG waits for more members.
pub fn chosen_ec_version(h: &EcHoldings, object: &str, k: usize) -> Result<Option<u64>, String> {
    let shards_of = |v: u64| -> BTreeSet<i32> {
        h.all
            .iter()
            .filter(|(_, held)| *held == Some(v))
            .map(|(m, _)| m.shard)
            .collect()
    };
    let pick = |states: &[(Member, Option<u64>)]| -> Option<Option<u64>> {
        let versions: BTreeSet<u64> = states.iter().filter_map(|(_, v)| *v).collect();
        if let Some(v) = versions.iter().rev().find(|v| shards_of(**v).len() >= k) {
            return Some(Some(*v));
        }
        states.iter().any(|(_, v)| v.is_none()).then_some(None)
    };
    if let Some(chosen) = pick(h.current) {
        return Ok(chosen);
    }
    if h.complete {
        if let Some(chosen) = pick(h.stashed) {
            return Ok(chosen);
        }
    }
    let found: Vec<String> = h
        .current
        .iter()
        .filter_map(|(_, v)| *v)
        .collect::<BTreeSet<u64>>()
        .iter()
        .map(|v| format!("version {v:#x} on shards {:?}", shards_of(*v)))
        .collect();
    Err(format!(
        "object {object}: no current version can be decoded ({}; {k} shards needed): waiting for more members",
        found.join(", ")
    ))
}

/// The members of the interval that activated at `les`, from the PG's intervals.
pub fn members_at(intervals: &[Interval], les: u64) -> Vec<Member> {
    intervals
        .iter()
        .find(|i| i.first <= les && les <= i.last)
        .map(|i| i.members.clone())
        .unwrap_or_default()
}

/// The PG log of the new interval, from each responder's log: every entry any of them holds,
/// so that the log keeps naming every object a member may hold otherwise than the PG, but
/// only the writes the PG keeps with their request ids — a rolled-back one must not be taken
/// for applied when its client retries. Replicated: the authority's entries are kept, whose
/// objects every member now holds. Erasure-coded: the entries logged on at least k distinct
/// shards — the writes that reached enough shards to be kept. An entry one responder holds
/// without its request id was rolled back before and stays so.
pub fn agreed_log(
    logs: &[(Member, &[LogEntry])],
    auth: &[LogEntry],
    k: Option<usize>,
) -> Vec<LogEntry> {
    // Version → request id → the entry (a copy naming its object, if any: an older OSD's
    // copy names none) and the shards that logged it.
    type Votes<'a> = BTreeMap<&'a str, (&'a LogEntry, BTreeSet<i32>)>;
    let mut votes: BTreeMap<u64, Votes> = BTreeMap::new();
    for (m, log) in logs {
        for e in log.iter() {
            let (copy, shards) = votes
                .entry(e.version)
                .or_default()
                .entry(e.reqid.as_str())
                .or_insert_with(|| (e, BTreeSet::new()));
            if copy.object.is_none() {
                *copy = e;
            }
            shards.insert(m.shard);
        }
    }
    // A change is the same whether or not a copy of its entry names the object.
    let in_auth: BTreeSet<(u64, &str)> =
        auth.iter().map(|e| (e.version, e.reqid.as_str())).collect();
    let applied = |e: &LogEntry, shards: usize| match k {
        None => in_auth.contains(&(e.version, e.reqid.as_str())),
        Some(k) => shards >= k,
    };
    let mut out = Vec::with_capacity(votes.len());
    for same_version in votes.values() {
        let rolled_back = same_version.contains_key("");
        let kept = same_version
            .values()
            .find(|(e, shards)| !rolled_back && applied(e, shards.len()));
        let named = same_version
            .values()
            .map(|(e, _)| *e)
            .find(|e| e.object.is_some())
            .or_else(|| same_version.values().next().map(|(e, _)| *e));
        match (kept, named) {
            (Some((e, _)), _) => out.push((*e).clone()),
            (None, Some(e)) => out.push(LogEntry {
                reqid: String::new(),
                ..e.clone()
            }),
            (None, None) => {}
        }
    }
    out
}

/// The log of a new interval: the agreed entries, then one entry (no request id) per object
/// activation settled — one some responder held otherwise than the PG keeps — at versions
/// from `first` on, so that a member that missed the activation finds those objects named
/// after the newest entry it shares with the PG (`candidates`), whatever its own log says.
/// Keeps the newest `kept`; answers the log and the interval's start version, after them.
pub fn interval_log(
    mut agreed: Vec<LogEntry>,
    settled: &[String],
    first: u64,
    kept: usize,
) -> (Vec<LogEntry>, u64) {
    let mut version = first;
    for object in settled {
        agreed.push(LogEntry {
            version,
            reqid: String::new(),
            object: Some(object.clone()),
        });
        version += 1;
    }
    let skip = agreed.len().saturating_sub(kept);
    (agreed.split_off(skip), version)
}

/// The objects the responders may disagree on, from their logs alone: those named by any
/// entry after the newest one every log holds. A member's history is a chain (it applies a
/// change only on top of the one before, as its primary wrote them, and activation replaces
/// its log with the PG's while its missing list covers what it lacks), so members that hold
/// the same entry agree on everything up to it. `None` when the logs cannot tell — no entry
/// in common (a new member, or one away longer than the logs reach) or an entry after it
/// that names no object (written before logs named objects): then every object is compared
/// (backfill). Callers add what each member lists as missing and its stashed object.
pub fn candidates(logs: &[&[LogEntry]]) -> Option<BTreeSet<String>> {
    let (first, others) = logs.split_first()?;
    let indexed: Vec<BTreeMap<u64, &str>> = others
        .iter()
        .map(|log| log.iter().map(|e| (e.version, e.reqid.as_str())).collect())
        .collect();
    let common = first.iter().rev().find(|e| {
        indexed
            .iter()
            .all(|log| log.get(&e.version) == Some(&e.reqid.as_str()))
    })?;
    let mut out = BTreeSet::new();
    for log in logs {
        for e in log.iter().filter(|e| e.version > common.version) {
            out.insert(e.object.clone()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(osd: u32) -> Member {
        Member { osd, shard: -1 }
    }

    fn interval(first: u64, last: u64, osds: &[u32], rw: bool) -> Interval {
        Interval {
            first,
            last,
            members: osds.iter().map(|o| m(*o)).collect(),
            maybe_went_rw: rw,
        }
    }

    fn heard(members: &[(u32, u64)]) -> BTreeMap<Member, u64> {
        members.iter().map(|(o, e)| (m(*o), *e)).collect()
    }

    #[test]
    fn an_interval_after_the_last_activation_needs_a_member_heard_from() {
        // [0,1,2] activated at 10; osd.2 down → [0,1] from 11; both go down, 2 returns.
        let ivs = [
            interval(10, 10, &[0, 1, 2], true),
            interval(11, 12, &[0, 1], true),
            interval(13, 13, &[2], false),
        ];
        let p = probe(&ivs, &heard(&[(2, 10)]), |o| o == 2);
        assert_eq!(
            p,
            Probe::Down {
                waiting_for: BTreeSet::from([0, 1]),
                first: 11,
                last: 12
            }
        );
        // With osd.1 up (not a member now) it is asked.
        let p = probe(&ivs, &heard(&[(2, 10)]), |o| o == 2 || o == 1);
        assert_eq!(p, Probe::More(vec![m(1)]));
        // Once heard, nothing more is needed (osd.0, a member at 10, is asked when up).
        assert_eq!(
            probe(&ivs, &heard(&[(1, 10), (2, 10)]), |o| o != 0),
            Probe::Complete
        );
        assert_eq!(
            probe(&ivs, &heard(&[(1, 10), (2, 10)]), |_| true),
            Probe::More(vec![m(0)])
        );
        // If a member shows the activation of epoch 11, earlier intervals do not matter.
        assert_eq!(
            probe(&ivs, &heard(&[(2, 10), (0, 11)]), |_| false),
            Probe::Complete
        );
    }

    #[test]
    fn intervals_break_on_member_changes_and_gaps() {
        let mut map = OsdMap::default();
        for id in 0..3 {
            map.osds.insert(
                id,
                cairn_common::maps::OsdInfo {
                    host: format!("h{id}"),
                    weight: 1.0,
                    up: true,
                    in_cluster: true,
                    ..Default::default()
                },
            );
        }
        map.hosts.insert("h".into(), vec![0, 1, 2]);
        map.pools.insert(
            1,
            Pool {
                name: "p".into(),
                pg_num: 1,
                kind: cairn_common::maps::PoolKind::Replicated {
                    size: 3,
                    min_size: 2,
                },
                failure_domain: cairn_common::maps::FailureDomain::Osd,
            },
        );
        let pg = PgId { pool: 1, seed: 0 };
        let mut maps = Vec::new();
        for epoch in [5, 6, 7, 9] {
            let mut m = map.clone();
            m.epoch = epoch;
            if epoch == 7 {
                m.osds.get_mut(&1).unwrap().up = false;
            }
            maps.push(m);
        }
        let ivs = intervals(&maps, pg);
        let spans: Vec<(u64, u64, usize, bool)> = ivs
            .iter()
            .map(|i| (i.first, i.last, i.members.len(), i.maybe_went_rw))
            .collect();
        assert_eq!(
            spans,
            vec![(5, 6, 3, true), (7, 7, 2, true), (9, 9, 3, true)]
        );
    }

    fn shard(osd: u32, shard: i32) -> Member {
        Member { osd, shard }
    }

    fn choose(
        current: &[(Member, Option<u64>)],
        stashed: &[(Member, Option<u64>)],
        all: &[(Member, Option<u64>)],
        complete: bool,
    ) -> Result<Option<u64>, String> {
        let h = EcHoldings {
            current,
            stashed,
            all,
            complete,
        };
        chosen_ec_version(&h, "a", 2)
    }

    #[test]
    fn ec_objects_keep_the_newest_decodable_current_version() {
        let h = |v: &[(u32, i32, Option<u64>)]| -> Vec<(Member, Option<u64>)> {
            v.iter().map(|(o, s, v)| (shard(*o, *s), *v)).collect()
        };
        // A write that reached one shard only rolls back to the version two hold.
        let x = h(&[(0, 0, Some(7)), (1, 1, Some(5)), (2, 2, Some(5))]);
        assert_eq!(choose(&x, &[], &x, true), Ok(Some(5)));
        let x = h(&[(0, 0, Some(7)), (1, 1, Some(7)), (2, 2, None)]);
        assert_eq!(choose(&x, &[], &x, true), Ok(Some(7)));
        // A create that reached one shard goes.
        let x = h(&[(0, 0, Some(7)), (1, 1, None), (2, 2, None)]);
        assert_eq!(choose(&x, &[], &x, true), Ok(None));
        // Two versions on one shard each: nothing current decodes, so the PG waits...
        let x = h(&[(0, 0, Some(7)), (2, 2, Some(5))]);
        assert!(choose(&x, &[], &x, true).is_err());
        // ...unless a past member's shard of version 5 makes it decodable,
        let all = h(&[(0, 0, Some(7)), (2, 2, Some(5)), (3, 1, Some(5))]);
        assert_eq!(choose(&x, &[], &all, false), Ok(Some(5)));
        // or, with every member of the last activation heard, stashes roll two writes that
        // each reached one shard back to the version before them.
        let x = h(&[(0, 0, Some(7)), (2, 2, Some(9))]);
        let stashed = h(&[(0, 0, Some(5)), (2, 2, Some(5))]);
        let all = [x.clone(), stashed.clone()].concat();
        assert_eq!(choose(&x, &stashed, &all, true), Ok(Some(5)));
        assert!(choose(&x, &stashed, &all, false).is_err());
        // Two OSDs holding the same shard count once.
        let all = h(&[(0, 0, Some(7)), (3, 0, Some(7)), (2, 2, Some(5))]);
        assert!(choose(&x, &[], &all, true).is_err());
        // A removed object stays removed whatever old members still hold.
        let cur = h(&[(0, 0, None), (1, 1, None)]);
        let all = h(&[(0, 0, None), (1, 1, None), (3, 0, Some(4)), (4, 1, Some(4))]);
        assert_eq!(choose(&cur, &[], &all, true), Ok(None));
    }

    fn entries(v: &[(u64, &str)]) -> Vec<LogEntry> {
        v.iter()
            .map(|(n, r)| LogEntry {
                version: *n,
                reqid: r.to_string(),
                object: Some(format!("o{r}")),
            })
            .collect()
    }

    #[test]
    fn the_agreed_log_keeps_no_request_id_of_writes_that_rolled_back() {
        let e = entries;
        let (a, b, c) = (
            e(&[(1, "a"), (2, "b"), (3, "c")]),
            e(&[(1, "a"), (2, "b")]),
            e(&[(2, "b")]),
        );
        let logs = [
            (shard(0, 0), a.as_slice()),
            (shard(1, 1), b.as_slice()),
            (shard(2, 2), c.as_slice()),
        ];
        // "c" reached one shard: its entry stays, naming its object, without its request id.
        let mut rolled_back = a.clone();
        rolled_back[2].reqid.clear();
        assert_eq!(agreed_log(&logs, &a, Some(2)), rolled_back);
        assert_eq!(agreed_log(&logs, &a, None), a);
        assert_eq!(agreed_log(&logs, &b, None), rolled_back);
        // Once rolled back, always: another member's copy of the entry does not revive it.
        let logs = [
            (shard(0, 0), a.as_slice()),
            (shard(1, 1), a.as_slice()),
            (shard(2, 2), rolled_back.as_slice()),
        ];
        assert_eq!(agreed_log(&logs, &a, Some(2)), rolled_back);
        // An older OSD's copies name no object: they are the same changes, and the PG's log
        // keeps the copies that name theirs.
        let mut unnamed = a.clone();
        for e in &mut unnamed {
            e.object = None;
        }
        let logs = [(m(0), a.as_slice()), (m(1), unnamed.as_slice())];
        assert_eq!(agreed_log(&logs, &unnamed, None), a);
        assert_eq!(agreed_log(&logs[1..], &unnamed, None), unnamed);
    }

    #[test]
    fn settled_objects_are_logged_before_the_interval_starts() {
        let agreed = entries(&[(1, "a"), (2, "b")]);
        let settled = ["x".to_string(), "y".to_string()];
        let (log, start) = interval_log(agreed.clone(), &settled, 10, 100);
        assert_eq!(start, 12);
        assert_eq!(log.len(), 4);
        assert_eq!((log[2].version, log[2].object.as_deref()), (10, Some("x")));
        assert_eq!((log[3].version, log[3].reqid.as_str()), (11, ""));
        // Nothing settled: the interval starts at the first version.
        assert_eq!(
            interval_log(agreed.clone(), &[], 10, 100),
            (agreed.clone(), 10)
        );
        // The bound keeps the newest entries.
        assert_eq!(interval_log(agreed, &settled, 10, 2).0, log[2..].to_vec());
    }

    #[test]
    fn candidates_are_the_objects_changed_after_the_newest_common_entry() {
        let names = |v: &[&str]| -> Option<BTreeSet<String>> {
            Some(v.iter().map(|n| n.to_string()).collect())
        };
        // Two members in step, one that missed "c" and "d", one with a divergent "x".
        let a = entries(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
        let b = entries(&[(1, "a"), (2, "b")]);
        let c = entries(&[(1, "a"), (2, "b"), (3, "x")]);
        assert_eq!(candidates(&[&a, &a]), names(&[]));
        assert_eq!(candidates(&[&a, &b]), names(&["oc", "od"]));
        assert_eq!(candidates(&[&b, &a, &c]), names(&["oc", "od", "ox"]));
        // The same version from another request is a different change.
        let d = entries(&[(1, "a"), (2, "z")]);
        assert_eq!(candidates(&[&a, &d]), names(&["ob", "oc", "od", "oz"]));
        // No entry in common (a new member; logs trimmed past each other): compare all.
        assert_eq!(candidates(&[&a, &[]]), None);
        let trimmed = entries(&[(5, "e")]);
        assert_eq!(candidates(&[&b, &trimmed]), None);
        // An entry after the common one without an object's name cannot be followed.
        let mut old = a.clone();
        old[3].object = None;
        assert_eq!(candidates(&[&old, &b]), None);
        // Unnamed entries up to the common one do not matter.
        old[3].object = Some("od".into());
        old[0].object = None;
        assert_eq!(candidates(&[&old, &b]), names(&["oc", "od"]));
    }
}
