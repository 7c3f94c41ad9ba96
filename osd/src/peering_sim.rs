//! A seeded simulation of one PG through OSD failures, restarts, outs and ins, and writes —
//! some acknowledged, some failing part-way — driving the decisions of `peering` the way
//! `activate` does, with the I/O replaced by direct changes to each member's state. After
//! every activation each object the PG would serve must be its last acknowledged state or a
//! later unacknowledged write (never older, never rolled back once seen), and with every OSD
//! up and in the PG must activate. Erasure-coded writes in a degraded PG stash the previous
//! state as `stash` does. Activation leaves copying to recovery in the background, as
//! `recovery` does: each member keeps the list of what it lacks, the plan's objects are
//! recovered at random moments, and a write recovers its object first; at the end, with
//! everything up, recovery must bring every copy in line. Activation compares only the objects
//! the logs name after their newest common entry (`peering::candidates`), or every object when
//! the logs cannot tell; logs are kept short here so that both happen often.
//! `CAIRN_PEERING_SEEDS` sets how many schedules run; `CAIRN_PEERING_TRACE=SEED` runs one
//! schedule and prints every member's state before each step.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cairn_common::maps::{FailureDomain, OsdInfo, OsdMap, Pool, PoolKind};
use cairn_common::placement::PgId;
use cairn_common::proto::LogEntry;

use crate::members::Member;
use crate::peering::{self, Probe};
use crate::pg::next_version;

const OSDS: u32 = 5;
const OBJECTS: usize = 4;
const STEPS: usize = 60;
const PG: PgId = PgId { pool: 1, seed: 0 };
/// Log entries each member keeps (`LOG_ENTRIES_KEPT` in the OSD): short, so that members
/// away for a while fall off the logs and are compared object by object.
const LOG_KEPT: usize = 8;

/// What one OSD holds of the PG (one collection: a shard position for erasure coding).
#[derive(Clone, Debug, Default)]
struct Copy {
    last_update: u64,
    /// Object → version (a version of `None` would be absence: absent objects are not kept).
    objects: BTreeMap<usize, u64>,
    log: Vec<LogEntry>,
    /// The rollback stash: (object, version of the change it was taken for, prior state).
    stash: Option<(usize, u64, Option<u64>)>,
    /// Objects it lacks the PG's version of → that version (`PgState::missing`).
    missing: BTreeMap<usize, Option<u64>>,
}

impl Copy {
    /// What it says of `object`: the PG's version if it lists the object as missing.
    fn said(&self, object: usize) -> Option<u64> {
        match self.missing.get(&object) {
            Some(v) => *v,
            None => self.objects.get(&object).copied(),
        }
    }

    /// Its own copy of `object` as evidence: none when it lists the object as missing.
    fn holds(&self, object: usize) -> Option<Option<u64>> {
        (!self.missing.contains_key(&object)).then(|| self.objects.get(&object).copied())
    }

    fn set(&mut self, object: usize, state: Option<u64>) {
        match state {
            Some(v) => self.objects.insert(object, v),
            None => self.objects.remove(&object),
        };
    }

    /// A recovery of `object` to `state`: it leaves the missing list in the same step.
    fn recovered(&mut self, object: usize, state: Option<u64>) {
        self.set(object, state);
        self.missing.remove(&object);
    }

    /// Its stash of `object` from before its last change (see `stash`).
    fn stashed(&self, object: usize) -> Option<Option<u64>> {
        let (o, for_version, prior) = self.stash?;
        (o == object && for_version == self.last_update).then_some(prior)
    }
}

/// An object's acceptable states: the last one known (acknowledged, or seen by a read) and the
/// writes after it that failed, any of which may have taken effect. `None`: absent.
#[derive(Clone, Debug, Default)]
struct Truth {
    known: Option<u64>,
    maybe: Vec<Option<u64>>,
}

struct World {
    rng: StdRng,
    seed: u64,
    k: Option<usize>,
    maps: Vec<OsdMap>,
    copies: BTreeMap<Member, Copy>,
    truth: Vec<Truth>,
    /// Epoch the PG is active at (writes need it current).
    active: Option<u64>,
    /// What activation left to recover: object → (the PG's version, members lacking it).
    plan: BTreeMap<usize, (Option<u64>, Vec<Member>)>,
    next_req: u64,
    /// Activations that compared only the objects the logs named, and those that compared all.
    by_log: u64,
    by_listing: u64,
}

fn pool(k: Option<usize>) -> Pool {
    Pool {
        name: "p".into(),
        pg_num: 1,
        kind: match k {
            None => PoolKind::Replicated {
                size: 3,
                min_size: 2,
            },
            Some(_) => PoolKind::Erasure {
                k: 2,
                m: 1,
                stripe_unit: 4096,
                min_size: 2,
            },
        },
        failure_domain: FailureDomain::Osd,
    }
}

impl World {
    fn new(seed: u64, k: Option<usize>) -> World {
        let mut map = OsdMap {
            epoch: 1,
            ..OsdMap::default()
        };
        for id in 0..OSDS {
            map.osds.insert(
                id,
                OsdInfo {
                    host: "h".into(),
                    weight: 1.0,
                    up: true,
                    in_cluster: true,
                    ..OsdInfo::default()
                },
            );
        }
        map.hosts.insert("h".into(), (0..OSDS).collect());
        map.pools.insert(1, pool(k));
        World {
            rng: StdRng::seed_from_u64(seed),
            seed,
            k,
            maps: vec![map],
            copies: BTreeMap::new(),
            truth: vec![Truth::default(); OBJECTS],
            active: None,
            plan: BTreeMap::new(),
            next_req: 0,
            by_log: 0,
            by_listing: 0,
        }
    }

    fn map(&self) -> &OsdMap {
        self.maps.last().expect("at least one map")
    }

    fn change_map(&mut self, change: impl FnOnce(&mut OsdMap)) {
        let mut m = self.map().clone();
        m.epoch += 1;
        change(&mut m);
        self.maps.push(m);
    }

    fn members(&self) -> Vec<Member> {
        let map = self.map();
        peering::members_of(map, &map.pools[&1], PG)
    }

    fn copy(&self, m: &Member) -> Copy {
        self.copies.get(m).cloned().unwrap_or_default()
    }

    /// One random event of the cluster or the workload.
    fn step(&mut self) {
        if tracing_seed() == Some(self.seed) {
            self.trace();
        }
        let osd = self.rng.gen_range(0..OSDS);
        let up = self.map().osds[&osd].up;
        let downs = self.map().osds.values().filter(|o| !o.up).count();
        match self.rng.gen_range(0..12) {
            0 if up && downs < 2 => self.change_map(|m| m.osds.get_mut(&osd).unwrap().up = false),
            1 | 2 if !up => self.change_map(|m| m.osds.get_mut(&osd).unwrap().up = true),
            3 => self.change_map(|m| {
                let o = m.osds.get_mut(&osd).unwrap();
                o.in_cluster = !o.in_cluster;
            }),
            4 => {
                let crash_after = self.rng.gen_range(0..20);
                // A PG that cannot activate now waits: that is not a failure here.
                let _ = self.activate(Some(crash_after));
            }
            // Recovery runs only in the interval its plan was made for.
            5..=7 if self.active == Some(self.map().epoch) => {
                if let Some(object) = self.plan.keys().nth(osd as usize).copied() {
                    self.recover(object);
                }
            }
            _ => self.write(),
        }
    }

    fn trace(&self) {
        eprintln!(
            "epoch {} members {:?} active {:?} plan {:x?}",
            self.map().epoch,
            self.members(),
            self.active,
            self.plan
        );
        for (m, c) in &self.copies {
            let log: Vec<String> = c
                .log
                .iter()
                .map(|e| format!("{:x}:{:?}:{}", e.version, e.object, e.reqid))
                .collect();
            eprintln!(
                "  osd.{} shard {} up {} last_update {:x} objects {:x?} missing {:x?} stash {:x?} log {log:?}",
                m.osd, m.shard, self.map().osds[&m.osd].up, c.last_update, c.objects, c.missing, c.stash
            );
        }
    }

    /// Activation as `activate` does it; `crash_after` stops it after that many member
    /// changes (a primary dying part-way). Returns whether the PG became active.
    fn activate(&mut self, crash_after: Option<usize>) -> Result<(), String> {
        let epoch = self.map().epoch;
        let members = self.members();
        if members.is_empty() || members.len() < self.map().pools[&1].min_size() {
            return Err("below min_size".into());
        }
        let mut heard: Vec<(Member, Copy)> = members.iter().map(|m| (*m, self.copy(m))).collect();
        let last_members = self.hear_past_members(&mut heard, epoch)?;
        let (_, auth) = heard
            .iter()
            .max_by_key(|(_, c)| c.last_update)
            .cloned()
            .expect("members heard");
        let mut budget = crash_after.unwrap_or(usize::MAX);
        let mut plan = BTreeMap::new();
        let mut settled = Vec::new();
        for object in self.compared(&heard) {
            let chosen = match self.k {
                None => auth.said(object),
                Some(k) => {
                    let said = |h: &[&(Member, Copy)]| -> Vec<(Member, Option<u64>)> {
                        h.iter().map(|(m, c)| (*m, c.said(object))).collect()
                    };
                    let own = |h: &[&(Member, Copy)]| -> Vec<(Member, Option<u64>)> {
                        h.iter()
                            .filter_map(|(m, c)| Some((*m, c.holds(object)?)))
                            .collect()
                    };
                    let stashed = |h: &[&(Member, Copy)]| -> Vec<(Member, Option<u64>)> {
                        h.iter()
                            .filter_map(|(m, c)| Some((*m, c.stashed(object)?)))
                            .collect()
                    };
                    let everyone: Vec<&(Member, Copy)> = heard.iter().collect();
                    let current = peering::current(&heard, |c| c.last_update);
                    let complete = last_members
                        .iter()
                        .all(|m| current.iter().any(|(c, _)| c == m));
                    let mut all = own(&everyone);
                    all.extend(stashed(&everyone));
                    let h = peering::EcHoldings {
                        current: &said(&current),
                        stashed: &stashed(&current),
                        all: &all,
                        complete,
                    };
                    peering::chosen_ec_version(&h, &object.to_string(), k)?
                }
            };
            if heard
                .iter()
                .any(|(_, c)| c.last_update != 0 && c.said(object) != chosen)
            {
                settled.push(object.to_string());
            }
            let targets: Vec<Member> = members
                .iter()
                .filter(|m| self.copy(m).objects.get(&object).copied() != chosen)
                .copied()
                .collect();
            if targets.is_empty() {
                continue;
            }
            // What the current members cannot give between them is brought in line now.
            let shards: BTreeSet<i32> = heard
                .iter()
                .filter(|(m, c)| members.contains(m) && c.holds(object) == Some(chosen))
                .map(|(m, _)| m.shard)
                .collect();
            if chosen.is_none() || shards.len() >= self.k.unwrap_or(1) {
                plan.insert(object, (chosen, targets));
                continue;
            }
            for m in &targets {
                if budget == 0 {
                    return Err("the primary died".into());
                }
                budget -= 1;
                self.copies.entry(*m).or_default().recovered(object, chosen);
            }
        }
        let logs: Vec<(Member, &[LogEntry])> =
            heard.iter().map(|(m, c)| (*m, c.log.as_slice())).collect();
        let (log, start) = peering::interval_log(
            peering::agreed_log(&logs, &auth.log, self.k),
            &settled,
            next_version(auth.last_update, epoch),
            LOG_KEPT,
        );
        for m in &members {
            if budget == 0 {
                return Err("the primary died".into());
            }
            budget -= 1;
            let c = self.copies.entry(*m).or_default();
            c.last_update = start;
            c.log = log.clone();
            c.stash = None;
            c.missing = plan
                .iter()
                .filter(|(_, (_, targets))| targets.contains(m))
                .map(|(object, (chosen, _))| (*object, *chosen))
                .collect();
        }
        self.plan = plan;
        self.active = Some(epoch);
        self.check_reads(&members[0]);
        Ok(())
    }

    /// The objects activation compares, as `activate` picks them: those the logs name after
    /// their newest common entry plus what members list as missing or stashed, or all.
    fn compared(&mut self, heard: &[(Member, Copy)]) -> Vec<usize> {
        let logs: Vec<&[LogEntry]> = heard.iter().map(|(_, c)| c.log.as_slice()).collect();
        let candidates = peering::candidates(&logs);
        if tracing_seed() == Some(self.seed) {
            let who: Vec<u32> = heard.iter().map(|(m, _)| m.osd).collect();
            eprintln!("  activation hears osds {who:?}, candidates {candidates:?}");
        }
        let Some(names) = candidates else {
            self.by_listing += 1;
            return (0..OBJECTS).collect();
        };
        self.by_log += 1;
        let mut objects: BTreeSet<usize> = names
            .iter()
            .map(|n| n.parse().expect("the simulation names objects by number"))
            .collect();
        for (_, c) in heard {
            objects.extend(c.missing.keys());
            objects.extend(c.stash.map(|(o, _, _)| o));
        }
        objects.into_iter().collect()
    }

    fn hear_past_members(
        &self,
        heard: &mut Vec<(Member, Copy)>,
        epoch: u64,
    ) -> Result<Vec<Member>, String> {
        loop {
            let epochs: BTreeMap<Member, u64> = heard
                .iter()
                .map(|(m, c)| (*m, peering::epoch_of(c.last_update)))
                .collect();
            let les = epochs.values().copied().max().unwrap_or(0);
            let maps = self
                .maps
                .iter()
                .filter(|m| m.epoch >= les.max(1) && m.epoch <= epoch);
            let intervals = peering::intervals(maps, PG);
            let now = self.map();
            match peering::probe(&intervals, &epochs, |o| now.osds[&o].up) {
                Probe::Complete => return Ok(peering::members_at(&intervals, les)),
                Probe::More(more) => heard.extend(more.iter().map(|m| (*m, self.copy(m)))),
                Probe::Down { waiting_for, .. } => {
                    return Err(format!("down, waiting for {waiting_for:?}"))
                }
            }
        }
    }

    /// Recovers `object` from the plan on every member lacking it, if its version can be
    /// read from OSDs up (a copy, or k distinct shards); answers whether it did.
    fn recover(&mut self, object: usize) -> bool {
        let Some((chosen, targets)) = self.plan.get(&object).cloned() else {
            return true;
        };
        if let Some(v) = chosen {
            let map = self.map();
            let shards: BTreeSet<i32> = self
                .copies
                .iter()
                .filter(|(m, c)| map.osds[&m.osd].up && c.holds(object) == Some(Some(v)))
                .map(|(m, _)| m.shard)
                .collect();
            if shards.len() < self.k.unwrap_or(1) {
                return false;
            }
        }
        for m in &targets {
            self.copies.entry(*m).or_default().recovered(object, chosen);
        }
        self.plan.remove(&object);
        true
    }

    /// What the PG serves for each object (what its primary says: its copy, or the version
    /// a recovery brings first; for erasure coding all members agree on it) must be
    /// acceptable; a read makes it the known state.
    fn check_reads(&mut self, primary: &Member) {
        let served = self.copy(primary);
        for (object, truth) in self.truth.iter_mut().enumerate() {
            let got = served.said(object);
            let pos = std::iter::once(truth.known)
                .chain(truth.maybe.iter().copied())
                .position(|v| v == got);
            let Some(pos) = pos else {
                panic!(
                    "seed {}: object {object} served {got:?}, but the last acknowledged state is {:?} (later unacknowledged: {:?})",
                    self.seed, truth.known, truth.maybe
                );
            };
            if pos > 0 {
                truth.known = got;
                truth.maybe.drain(..pos);
            }
        }
    }

    /// A write by the primary of the active PG: to every member (acknowledged) or, failing
    /// part-way, to some of them.
    fn write(&mut self) {
        let epoch = self.map().epoch;
        if self.active != Some(epoch) && self.activate(None).is_err() {
            return;
        }
        let members = self.members();
        let object = self.rng.gen_range(0..OBJECTS);
        // A write recovers its object first; when it cannot, it fails having changed nothing.
        if !self.recover(object) {
            return;
        }
        let version = next_version(self.copy(&members[0]).last_update, epoch);
        let value = (self.rng.gen_range(0..4) != 0).then_some(version);
        let reached: Vec<Member> = if self.rng.gen_range(0..3) == 0 {
            members
                .iter()
                .filter(|_| self.rng.gen_range(0..2) == 0)
                .copied()
                .collect()
        } else {
            members.clone()
        };
        self.next_req += 1;
        let reqid = format!("r{}", self.next_req);
        let stash = self
            .k
            .is_some_and(|k| crate::stash::needed(k, members.len()));
        for m in &reached {
            let c = self.copies.entry(*m).or_default();
            if stash {
                c.stash = Some((object, version, c.objects.get(&object).copied()));
            }
            match value {
                Some(v) => c.objects.insert(object, v),
                None => c.objects.remove(&object),
            };
            c.last_update = version;
            c.log.push(LogEntry {
                version,
                reqid: reqid.clone(),
                object: Some(object.to_string()),
            });
            if c.log.len() > LOG_KEPT {
                c.log.remove(0);
            }
        }
        let truth = &mut self.truth[object];
        if reached.len() == members.len() {
            truth.known = value;
            truth.maybe.clear();
        } else {
            truth.maybe.push(value);
            // The primary re-activates before its next write.
            self.active = None;
        }
    }
}

fn seeds() -> u64 {
    std::env::var("CAIRN_PEERING_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn tracing_seed() -> Option<u64> {
    std::env::var("CAIRN_PEERING_TRACE").ok()?.parse().ok()
}

fn simulate(k: Option<usize>) {
    let (mut by_log, mut by_listing) = (0, 0);
    let seeds = match tracing_seed() {
        Some(seed) => seed..seed + 1,
        None => 0..seeds(),
    };
    for seed in seeds {
        let mut w = World::new(seed, k);
        for _ in 0..STEPS {
            w.step();
        }
        // Everything back: the PG must activate.
        w.change_map(|m| {
            for o in m.osds.values_mut() {
                o.up = true;
                o.in_cluster = true;
            }
        });
        if let Err(why) = w.activate(None) {
            panic!("seed {seed}: with every OSD up and in the PG stays inactive: {why}");
        }
        // ...and recovery must bring every member's copy in line with what it serves.
        for object in w.plan.keys().copied().collect::<Vec<_>>() {
            assert!(
                w.recover(object),
                "seed {seed}: object {object} cannot be recovered"
            );
        }
        let members = w.members();
        let served = w.copy(&members[0]);
        for m in &members {
            let c = w.copy(m);
            assert!(
                c.missing.is_empty(),
                "seed {seed}: {m:?} still lacks {:?}",
                c.missing
            );
            for object in 0..OBJECTS {
                let (got, want) = (c.objects.get(&object), served.objects.get(&object));
                assert_eq!(
                    got, want,
                    "seed {seed}: {m:?} holds {got:?} of object {object}"
                );
            }
        }
        by_log += w.by_log;
        by_listing += w.by_listing;
    }
    // Both ways of choosing what to compare must have been exercised.
    assert!(
        tracing_seed().is_some() || by_log > 0 && by_listing > 0,
        "activations by log {by_log}, by listing {by_listing}"
    );
    eprintln!("activations: {by_log} by log, {by_listing} by listing");
}

#[test]
fn replicated_peering_loses_no_acknowledged_write() {
    simulate(None);
}

#[test]
fn erasure_coded_peering_loses_no_acknowledged_write() {
    simulate(Some(2));
}
