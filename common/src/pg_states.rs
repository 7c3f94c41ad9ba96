//! PG states, from the OSD map and from what the PGs' primaries report in their beacons.
//!
//! The map alone says how many members a PG has up: all of them is `active+clean`, fewer but
//! at least `min_size` is `active+undersized+degraded`, fewer than `min_size` is
//! `undersized+degraded+inactive` (it refuses ops). The primary's report refines that: a PG
//! whose members it has not brought in line yet is `peering` (with why), or
//! `activating+recovering+degraded` while it rolls back what only a stash holds (ops wait),
//! then `active+recovering+degraded` while it copies or rebuilds what members lack in the
//! background (ops are served; the report counts the copies left) — `active+backfilling+
//! degraded` when a member that held nothing of the PG is being filled; `+remapped`, and no
//! `+degraded` when that is all, for copies an OSD outside the PG still holds up to date
//! (misplaced, as Ceph counts them) —, one whose past
//! members that may hold the newest writes are all down is `down` (naming them), one being
//! scrubbed gains `+scrubbing`, one whose last scrub left errors gains `+inconsistent`. A
//! report counts only when it comes from the PG's primary in the current map; one from an
//! older epoch leaves the PG `peering` (every map change has the primary peer again).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::maps::{OsdMap, Pool};
use crate::placement::{all_pgs, pg_acting, primary, PgId, NO_OSD};
use crate::status::Redundancy;

pub const ACTIVE_CLEAN: &str = "active+clean";
pub const DEGRADED: &str = "active+undersized+degraded";
pub const INACTIVE: &str = "undersized+degraded+inactive";
pub const PEERING: &str = "peering";
/// A PG whose primary brings members in line before serving the epoch.
pub const RECOVERING: &str = "activating+recovering+degraded";
/// A PG serving while its primary brings members' copies in line in the background.
pub const ACTIVE_RECOVERING: &str = "active+recovering+degraded";
pub const ACTIVE_RECOVERING_UNDERSIZED: &str = "active+recovering+undersized+degraded";
/// The same while a member that held nothing of the PG is filled.
pub const ACTIVE_BACKFILLING: &str = "active+backfilling+degraded";
pub const ACTIVE_BACKFILLING_UNDERSIZED: &str = "active+backfilling+undersized+degraded";
/// Every copy left to bring in line is held up to date by an OSD outside the PG: the data
/// keeps its redundancy while it moves.
pub const REMAPPED_BACKFILLING: &str = "active+remapped+backfilling";
pub const REMAPPED_RECOVERING: &str = "active+recovering+remapped";
/// A PG whose past members that may hold the newest writes are all down.
pub const DOWN: &str = "down";
/// How a primary's `blocked` reason starts when the PG is down (waiting for past members).
pub const DOWN_REASON_PREFIX: &str = "down: ";

/// One PG as its primary last reported it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PgReport {
    /// The reporting OSD.
    pub osd: u32,
    /// Its OSD map epoch when it reported.
    pub epoch: u64,
    /// Members brought in line for that epoch and serving.
    pub active: bool,
    /// Why it is not active.
    pub blocked: String,
    pub objects: u64,
    /// Inconsistencies the last scrub left unrepaired.
    pub scrub_errors: u64,
    pub scrubbing: bool,
    pub last_scrub_ms: u64,
    pub last_deep_scrub_ms: u64,
    /// Object copies (shards) still to bring in line in this epoch.
    #[serde(default)]
    pub recovery_left: u64,
    /// Some go to a member that held nothing of the PG (filled by scanning it).
    #[serde(default)]
    pub backfilling: bool,
    /// Of `recovery_left`, the copies an OSD outside the PG holds up to date (misplaced).
    #[serde(default)]
    pub misplaced_left: u64,
}

pub type PgReports = BTreeMap<PgId, PgReport>;

/// When a PG last finished a scrub and a deep scrub (ms since the Unix epoch; 0: never). The
/// mons commit them, so a PG keeps its stamps when its primary or the mon leader changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStamps {
    pub light_ms: u64,
    pub deep_ms: u64,
}

impl ScrubStamps {
    pub fn of(report: &PgReport) -> ScrubStamps {
        ScrubStamps {
            light_ms: report.last_scrub_ms,
            deep_ms: report.last_deep_scrub_ms,
        }
    }

    /// Stamps only move forward: each keeps the newer of the two.
    pub fn merge(&mut self, other: ScrubStamps) {
        self.light_ms = self.light_ms.max(other.light_ms);
        self.deep_ms = self.deep_ms.max(other.deep_ms);
    }

    pub fn is_newer_than(&self, other: &ScrubStamps) -> bool {
        self.light_ms > other.light_ms || self.deep_ms > other.deep_ms
    }
}

/// One line of `cairn pg ls`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PgRow {
    pub pgid: PgId,
    pub state: String,
    /// Members in placement order; `None` for a position with no OSD up.
    pub acting: Vec<Option<u32>>,
    pub primary: Option<u32>,
    /// From the primary's report (0 without one).
    pub objects: u64,
    pub scrub_errors: u64,
    pub last_scrub_ms: u64,
    pub last_deep_scrub_ms: u64,
    /// Why the PG does not serve, when it does not.
    pub blocked: String,
    /// Object copies still to bring in line (from the primary's report).
    #[serde(default)]
    pub recovery_left: u64,
    /// Of those, the ones an OSD outside the PG holds up to date (misplaced, not missing).
    #[serde(default)]
    pub misplaced_left: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PgSummary {
    /// State → number of PGs.
    pub states: BTreeMap<String, u64>,
    /// PGs that cannot serve, with why (at most `LISTED_MAX`).
    pub inactive: Vec<String>,
    pub degraded: Vec<String>,
    pub inconsistent: Vec<String>,
    pub inactive_count: u64,
    pub degraded_count: u64,
    pub inconsistent_count: u64,
    pub scrub_errors: u64,
    pub objects: u64,
    /// Objects per pool id.
    pub pool_objects: BTreeMap<u32, u64>,
    pub redundancy: Redundancy,
}

/// How many PGs the summary names one by one per kind.
pub const LISTED_MAX: usize = 20;

fn is_active(state: &str) -> bool {
    state.starts_with("active")
}

/// A PG's state and its row, from the map and the primary's report.
pub fn row(map: &OsdMap, pool: &Pool, pg: PgId, reports: &PgReports) -> PgRow {
    let acting = pg_acting(map, pool, pg);
    let up = acting.iter().filter(|o| **o != NO_OSD).count();
    let primary = primary(&acting);
    let from_primary = reports.get(&pg).filter(|r| Some(r.osd) == primary);
    // A report from before the current map says nothing of this epoch: every map change
    // has the primary bring the members in line again.
    let stale = from_primary.filter(|r| r.epoch < map.epoch);
    let blocked_report = from_primary.filter(|r| !r.active);
    let report = from_primary.cloned().unwrap_or_default();
    let mut blocked = String::new();
    let mut state = if up < pool.min_size() || up == 0 {
        blocked = format!(
            "{up}/{} members up, min_size {}",
            pool.width(),
            pool.min_size()
        );
        INACTIVE.to_string()
    } else if stale.is_some() || from_primary.is_none() {
        // No report from this primary (it just became one, or the mons just changed leader):
        // nothing says the PG serves yet.
        blocked = format!("the primary has not reported on epoch {} yet", map.epoch);
        PEERING.to_string()
    } else if let Some(r) = blocked_report {
        match r.blocked.strip_prefix(DOWN_REASON_PREFIX) {
            Some(why) => {
                blocked = why.to_string();
                DOWN.to_string()
            }
            None => {
                blocked = r.blocked.clone();
                if r.recovery_left > 0 {
                    RECOVERING.to_string()
                } else {
                    PEERING.to_string()
                }
            }
        }
    } else if report.recovery_left > 0 {
        recovery_state(&report, up >= pool.width())
    } else if up >= pool.width() {
        ACTIVE_CLEAN.to_string()
    } else {
        DEGRADED.to_string()
    };
    if report.scrubbing {
        state.push_str("+scrubbing");
    }
    if report.scrub_errors > 0 {
        state.push_str("+inconsistent");
    }
    PgRow {
        pgid: pg,
        state,
        acting: acting
            .iter()
            .map(|o| (*o != NO_OSD).then_some(*o))
            .collect(),
        primary,
        objects: report.objects,
        scrub_errors: report.scrub_errors,
        last_scrub_ms: report.last_scrub_ms,
        last_deep_scrub_ms: report.last_deep_scrub_ms,
        recovery_left: if stale.is_none() {
            report.recovery_left
        } else {
            0
        },
        misplaced_left: if stale.is_none() {
            report.misplaced_left.min(report.recovery_left)
        } else {
            0
        },
        blocked,
    }
}

/// The state of an active PG bringing copies in line: `+remapped` for copies an OSD outside
/// the PG holds up to date, `+degraded` unless those are all there is and every member is up.
fn recovery_state(report: &PgReport, all_up: bool) -> String {
    let misplaced = report.misplaced_left.min(report.recovery_left);
    if misplaced == report.recovery_left && all_up {
        let state = if report.backfilling {
            REMAPPED_BACKFILLING
        } else {
            REMAPPED_RECOVERING
        };
        return state.to_string();
    }
    let state = match (report.backfilling, all_up) {
        (false, true) => ACTIVE_RECOVERING,
        (false, false) => ACTIVE_RECOVERING_UNDERSIZED,
        (true, true) => ACTIVE_BACKFILLING,
        (true, false) => ACTIVE_BACKFILLING_UNDERSIZED,
    };
    if misplaced > 0 {
        format!("{state}+remapped")
    } else {
        state.to_string()
    }
}

/// Every PG's row, pool by pool.
pub fn rows(map: &OsdMap, reports: &PgReports) -> Vec<PgRow> {
    map.pools
        .iter()
        .flat_map(|(id, pool)| all_pgs(*id, pool).map(move |pg| row(map, pool, pg, reports)))
        .collect()
}

fn listed(list: &mut Vec<String>, line: impl FnOnce() -> String) {
    if list.len() < LISTED_MAX {
        list.push(line());
    }
}

pub fn summarize(map: &OsdMap, reports: &PgReports) -> PgSummary {
    let mut s = PgSummary::default();
    for r in rows(map, reports) {
        *s.states.entry(r.state.clone()).or_default() += 1;
        s.objects += r.objects;
        *s.pool_objects.entry(r.pgid.pool).or_default() += r.objects;
        s.scrub_errors += r.scrub_errors;
        let up = r.acting.iter().flatten().count();
        let width = map.pools.get(&r.pgid.pool).map_or(0, Pool::width);
        // Copies on members down are missing, and so are the stale ones being brought in line
        // — unless an OSD outside the PG holds them up to date: those are misplaced.
        let missing = r.objects * (width.saturating_sub(up)) as u64;
        s.redundancy.copies += r.objects * width as u64;
        s.redundancy.degraded += missing + r.recovery_left.saturating_sub(r.misplaced_left);
        s.redundancy.misplaced += r.misplaced_left;
        s.redundancy.recovering += r.recovery_left;
        s.redundancy.peering_pgs += u64::from(r.state == PEERING);
        if !is_active(&r.state) {
            s.inactive_count += 1;
            listed(&mut s.inactive, || {
                format!("pg {} is {}: {}", r.pgid, r.state, r.blocked)
            });
        } else if r.state.contains("degraded") {
            s.degraded_count += 1;
            listed(&mut s.degraded, || {
                format!("pg {} is {}: {up}/{width} members up", r.pgid, r.state)
            });
        }
        if r.scrub_errors > 0 {
            s.inconsistent_count += 1;
            listed(&mut s.inconsistent, || {
                format!(
                    "pg {} is {}, acting {:?}: {} scrub errors",
                    r.pgid, r.state, r.acting, r.scrub_errors
                )
            });
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{OsdInfo, PoolKind};

    fn cluster(up: &[bool]) -> OsdMap {
        let mut map = OsdMap::default();
        for (id, up) in up.iter().enumerate() {
            map.osds.insert(
                id as u32,
                OsdInfo {
                    addr: format!("127.0.0.1:{}", 7000 + id),
                    host: format!("h{id}"),
                    weight: 1.0,
                    up: *up,
                    in_cluster: true,
                    ..OsdInfo::default()
                },
            );
        }
        map.hosts.insert("h".into(), (0..up.len() as u32).collect());
        map.pools.insert(
            1,
            Pool {
                name: "rep".into(),
                pg_num: 8,
                kind: PoolKind::Replicated {
                    size: 3,
                    min_size: 2,
                },
                failure_domain: crate::maps::FailureDomain::Osd,
            },
        );
        map
    }

    #[test]
    fn reports_from_the_primary_refine_the_map() {
        let map = cluster(&[true, true, true]);
        let pool = &map.pools[&1];
        let pg = PgId { pool: 1, seed: 0 };
        let mut reports = PgReports::new();
        // Without a report from its primary nothing says the PG serves.
        assert_eq!(row(&map, pool, pg, &reports).state, PEERING);
        let primary = row(&map, pool, pg, &reports).primary.unwrap();
        let report = PgReport {
            osd: primary,
            active: true,
            scrub_errors: 2,
            ..PgReport::default()
        };
        reports.insert(pg, report.clone());
        assert_eq!(
            row(&map, pool, pg, &reports).state,
            "active+clean+inconsistent"
        );
        let s = summarize(&map, &reports);
        assert_eq!((s.inconsistent_count, s.scrub_errors), (1, 2));
        // A report from an OSD that is not the primary (an old one) does not count.
        reports.insert(
            pg,
            PgReport {
                osd: primary + 1,
                ..report
            },
        );
        assert_eq!(row(&map, pool, pg, &reports).state, PEERING);
        reports.insert(
            pg,
            PgReport {
                osd: primary,
                active: false,
                blocked: "waiting for osd.1".into(),
                ..PgReport::default()
            },
        );
        let r = row(&map, pool, pg, &reports);
        assert_eq!(
            (r.state.as_str(), r.blocked.as_str()),
            (PEERING, "waiting for osd.1")
        );
        let s = summarize(&map, &reports);
        assert!(
            s.inactive.iter().any(|l| l.contains("waiting for osd.1")),
            "{:?}",
            s.inactive
        );
        // An active report of an older map does not make the PG active in a newer one.
        reports.insert(
            pg,
            PgReport {
                osd: primary,
                active: true,
                ..PgReport::default()
            },
        );
        let mut newer = map.clone();
        newer.epoch += 1;
        assert_eq!(row(&newer, pool, pg, &reports).state, PEERING);
    }

    #[test]
    fn degraded_copies_count_members_down_and_copies_being_brought_in_line() {
        let map = cluster(&[true, true, false]);
        let pool = &map.pools[&1];
        let mut reports = PgReports::new();
        for pg in all_pgs(1, pool) {
            let primary = row(&map, pool, pg, &reports).primary.unwrap();
            reports.insert(
                pg,
                PgReport {
                    osd: primary,
                    epoch: map.epoch,
                    active: true,
                    objects: 10,
                    ..PgReport::default()
                },
            );
        }
        // 8 PGs × 10 objects × 3 copies; one member of each PG is down: 80 copies missing.
        let s = summarize(&map, &reports);
        assert_eq!(
            s.redundancy,
            Redundancy {
                copies: 240,
                degraded: 80,
                ..Redundancy::default()
            }
        );
        // One PG's primary is bringing 7 stale copies in line: it does not serve yet.
        let pg = PgId { pool: 1, seed: 3 };
        let busy = PgReport {
            active: false,
            recovery_left: 7,
            ..reports[&pg].clone()
        };
        reports.insert(pg, busy);
        assert_eq!(row(&map, pool, pg, &reports).state, RECOVERING);
        let s = summarize(&map, &reports);
        assert_eq!((s.redundancy.degraded, s.redundancy.recovering), (87, 7));
        assert_eq!(s.inactive_count, 1);
        // Another serves while it brings 5 copies in line in the background.
        let pg = PgId { pool: 1, seed: 4 };
        let background = PgReport {
            recovery_left: 5,
            ..reports[&pg].clone()
        };
        reports.insert(pg, background);
        assert_eq!(
            row(&map, pool, pg, &reports).state,
            ACTIVE_RECOVERING_UNDERSIZED
        );
        let filling = PgReport {
            backfilling: true,
            ..reports[&pg].clone()
        };
        reports.insert(pg, filling);
        assert_eq!(
            row(&map, pool, pg, &reports).state,
            ACTIVE_BACKFILLING_UNDERSIZED
        );
        let s = summarize(&map, &reports);
        assert_eq!((s.redundancy.degraded, s.redundancy.recovering), (92, 12));
        assert_eq!(s.inactive_count, 1);
        // Two of its copies are held up to date by an OSD outside the PG: misplaced.
        let moving = PgReport {
            misplaced_left: 2,
            ..reports[&pg].clone()
        };
        reports.insert(pg, moving);
        assert_eq!(
            row(&map, pool, pg, &reports).state,
            format!("{ACTIVE_BACKFILLING_UNDERSIZED}+remapped")
        );
        let s = summarize(&map, &reports);
        let r = &s.redundancy;
        assert_eq!((r.degraded, r.misplaced, r.recovering), (90, 2, 12));
        // The same report from an older map says nothing of this one.
        let mut newer = map.clone();
        newer.epoch += 1;
        let s = summarize(&newer, &reports);
        assert_eq!((s.redundancy.recovering, s.redundancy.peering_pgs), (0, 8));
    }

    #[test]
    fn copies_held_by_an_osd_outside_the_pg_are_misplaced_not_degraded() {
        let map = cluster(&[true, true, true]);
        let pool = &map.pools[&1];
        let pg = PgId { pool: 1, seed: 2 };
        let primary = row(&map, pool, pg, &PgReports::new()).primary.unwrap();
        let moving = PgReport {
            osd: primary,
            epoch: map.epoch,
            active: true,
            objects: 10,
            recovery_left: 4,
            misplaced_left: 4,
            backfilling: true,
            ..PgReport::default()
        };
        let reports = PgReports::from([(pg, moving.clone())]);
        assert_eq!(row(&map, pool, pg, &reports).state, REMAPPED_BACKFILLING);
        let s = summarize(&map, &reports);
        let r = &s.redundancy;
        assert_eq!((r.degraded, r.misplaced, r.recovering), (0, 4, 4));
        assert_eq!(s.degraded_count, 0);
        // A report claiming more misplaced copies than it has left counts only those.
        let odd = PgReport {
            misplaced_left: 9,
            backfilling: false,
            ..moving
        };
        let reports = PgReports::from([(pg, odd)]);
        assert_eq!(row(&map, pool, pg, &reports).state, REMAPPED_RECOVERING);
        assert_eq!(summarize(&map, &reports).redundancy.misplaced, 4);
    }

    #[test]
    fn the_map_says_degraded_and_inactive() {
        let map = cluster(&[true, true, false]);
        let pool = &map.pools[&1];
        let active: PgReports = all_pgs(1, pool)
            .map(|pg| {
                let osd = row(&map, pool, pg, &PgReports::new()).primary.unwrap();
                let report = PgReport {
                    osd,
                    active: true,
                    ..PgReport::default()
                };
                (pg, report)
            })
            .collect();
        let s = summarize(&map, &active);
        assert_eq!(s.states.get(DEGRADED), Some(&8));
        assert_eq!(
            summarize(&map, &PgReports::new()).states.get(PEERING),
            Some(&8)
        );
        let map = cluster(&[true, false, false]);
        let s = summarize(&map, &PgReports::new());
        assert_eq!((s.states.get(INACTIVE), s.inactive_count), (Some(&8), 8));
    }
}
