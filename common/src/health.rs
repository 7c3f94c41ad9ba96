//! Cluster health from the maps and the quorum: a pure function, so every rule has a unit test
//! and the mon only gathers its inputs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fsmap::{FsMap, MdsRole};
use crate::maps::ClusterMaps;
use crate::pg_states::PgSummary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    #[serde(rename = "HEALTH_OK")]
    Ok,
    #[serde(rename = "HEALTH_WARN")]
    Warn,
    #[serde(rename = "HEALTH_ERR")]
    Err,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "HEALTH_OK",
            Severity::Warn => "HEALTH_WARN",
            Severity::Err => "HEALTH_ERR",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// A stable name scripts can match, e.g. `MON_DOWN`.
    pub code: String,
    pub severity: Severity,
    pub summary: String,
    pub detail: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: Severity,
    pub checks: Vec<HealthCheck>,
}

/// What health is computed from, gathered by the leader mon.
pub struct HealthInput<'a> {
    pub maps: &'a ClusterMaps,
    /// Node ids of the mons in quorum (heard from within the grace, the leader included).
    pub quorum: &'a BTreeSet<u64>,
    /// What the PGs' primaries last reported.
    pub pg_reports: &'a crate::pg_states::PgReports,
}

pub fn compute(input: &HealthInput) -> Health {
    let pgs = crate::pg_states::summarize(&input.maps.osdmap, input.pg_reports);
    let checks: Vec<HealthCheck> = [
        mon_down(input),
        osd_down(input),
        pg_availability(&pgs),
        pg_degraded(&pgs),
        object_misplaced(&pgs),
        pg_damaged(&pgs),
        scrub_errors(&pgs),
        fs_degraded(&input.maps.fsmap),
        mds_all_down(&input.maps.fsmap),
        mds_insufficient_standby(&input.maps.fsmap),
    ]
    .into_iter()
    .flatten()
    .collect();
    let status = checks
        .iter()
        .map(|c| c.severity)
        .max()
        .unwrap_or(Severity::Ok);
    Health { status, checks }
}

fn mon_down(input: &HealthInput) -> Option<HealthCheck> {
    let mons = &input.maps.monmap.mons;
    let mut down: Vec<_> = mons
        .iter()
        .filter(|(id, _)| !input.quorum.contains(id))
        .collect();
    down.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    if down.is_empty() {
        return None;
    }
    let mut quorum_names: Vec<&str> = mons
        .iter()
        .filter(|(id, _)| input.quorum.contains(id))
        .map(|(_, m)| m.name.as_str())
        .collect();
    quorum_names.sort();
    Some(HealthCheck {
        code: "MON_DOWN".into(),
        severity: Severity::Warn,
        summary: format!(
            "{}/{} mons down, quorum {}",
            down.len(),
            mons.len(),
            quorum_names.join(",")
        ),
        detail: down
            .iter()
            .map(|(_, m)| format!("mon.{} ({}) is down (out of quorum)", m.name, m.addr))
            .collect(),
    })
}

fn osd_down(input: &HealthInput) -> Option<HealthCheck> {
    let osds = &input.maps.osdmap.osds;
    let down: Vec<String> = osds
        .iter()
        .filter(|(_, o)| !o.up && o.in_cluster)
        .map(|(id, o)| format!("osd.{id} ({}) on host {} is down", o.addr, o.host))
        .collect();
    if down.is_empty() {
        return None;
    }
    Some(HealthCheck {
        code: "OSD_DOWN".into(),
        severity: Severity::Warn,
        summary: format!("{} osds down", down.len()),
        detail: down,
    })
}

fn check(code: &str, severity: Severity, summary: String, detail: &[String]) -> HealthCheck {
    HealthCheck {
        code: code.into(),
        severity,
        summary,
        detail: detail.to_vec(),
    }
}

/// PGs that refuse ops: too few members, or members not brought in line yet.
fn pg_availability(pgs: &PgSummary) -> Option<HealthCheck> {
    let n = pgs.inactive_count;
    (n > 0).then(|| {
        check(
            "PG_AVAILABILITY",
            Severity::Err,
            format!("Reduced data availability: {n} pgs inactive"),
            &pgs.inactive,
        )
    })
}

fn pg_degraded(pgs: &PgSummary) -> Option<HealthCheck> {
    let n = pgs.degraded_count;
    let r = &pgs.redundancy;
    (n > 0 || r.degraded > 0).then(|| {
        check(
            "PG_DEGRADED",
            Severity::Warn,
            format!(
                "Degraded data redundancy: {}/{} object copies degraded ({:.3}%), {n} pgs degraded",
                r.degraded,
                r.copies,
                r.percent(r.degraded)
            ),
            &pgs.degraded,
        )
    })
}

/// Copies being moved to new members while an OSD outside the PG holds them (Ceph's
/// OBJECT_MISPLACED): nothing is at risk, but the cluster is not where it should be yet.
fn object_misplaced(pgs: &PgSummary) -> Option<HealthCheck> {
    let r = &pgs.redundancy;
    (r.misplaced > 0).then(|| {
        check(
            "OBJECT_MISPLACED",
            Severity::Warn,
            format!(
                "{}/{} object copies misplaced ({:.3}%)",
                r.misplaced,
                r.copies,
                r.percent(r.misplaced)
            ),
            &[],
        )
    })
}

/// PGs whose last scrub found copies that disagree and left them so.
fn pg_damaged(pgs: &PgSummary) -> Option<HealthCheck> {
    let n = pgs.inconsistent_count;
    (n > 0).then(|| {
        check(
            "PG_DAMAGED",
            Severity::Err,
            format!("Possible data damage: {n} pgs inconsistent"),
            &pgs.inconsistent,
        )
    })
}

fn scrub_errors(pgs: &PgSummary) -> Option<HealthCheck> {
    let n = pgs.scrub_errors;
    (n > 0).then(|| {
        check(
            "OSD_SCRUB_ERRORS",
            Severity::Err,
            format!("{n} scrub errors"),
            &[],
        )
    })
}

/// Filesystems whose rank 0 is not served: no daemon holds it, or its holder is still
/// replaying the journal. Clients of such a filesystem wait.
fn fs_degraded(fsmap: &FsMap) -> Option<HealthCheck> {
    let degraded: Vec<(&str, String)> = fsmap
        .filesystems
        .iter()
        .filter_map(|(id, f)| {
            let why = match fsmap.active_of(*id) {
                None => "no MDS holds rank 0".to_string(),
                Some((_, d)) if matches!(d.role, MdsRole::Active { serving: true, .. }) => {
                    return None
                }
                Some((name, d)) => format!("rank 0 (mds.{name}) is {}", d.role.state_name()),
            };
            Some((f.name.as_str(), why))
        })
        .collect();
    let summary = match degraded.as_slice() {
        [] => return None,
        [(name, _)] => format!("fs {name} is degraded"),
        many => format!("{} filesystems are degraded", many.len()),
    };
    let detail: Vec<String> = degraded
        .iter()
        .map(|(name, why)| format!("fs {name} is degraded: {why}"))
        .collect();
    Some(check("FS_DEGRADED", Severity::Warn, summary, &detail))
}

/// Filesystems exist but no MDS daemon is up at all: none of them can be served.
fn mds_all_down(fsmap: &FsMap) -> Option<HealthCheck> {
    if fsmap.filesystems.is_empty() || !fsmap.daemons.is_empty() {
        return None;
    }
    let detail: Vec<String> = fsmap
        .filesystems
        .values()
        .map(|f| format!("fs {} is offline", f.name))
        .collect();
    Some(check(
        "MDS_ALL_DOWN",
        Severity::Err,
        "no MDS daemon is up: every filesystem is offline".into(),
        &detail,
    ))
}

/// No daemon ready to take a rank over: a filesystem that allows standby-replay has none,
/// or no spare daemon (standby or standby-replay) exists at all.
fn mds_insufficient_standby(fsmap: &FsMap) -> Option<HealthCheck> {
    if fsmap.filesystems.is_empty() {
        return None;
    }
    let mut detail: Vec<String> = fsmap
        .filesystems
        .iter()
        .filter(|(id, f)| f.allow_standby_replay && fsmap.standby_replay_of(**id).is_none())
        .map(|(_, f)| {
            format!(
                "fs {} allows standby-replay but has no standby-replay MDS",
                f.name
            )
        })
        .collect();
    let spare = fsmap
        .daemons
        .values()
        .any(|d| matches!(d.role, MdsRole::Standby | MdsRole::StandbyReplay { .. }));
    if !spare {
        detail.push("no standby MDS daemon is available to take over a rank".into());
    }
    (!detail.is_empty()).then(|| {
        check(
            "MDS_INSUFFICIENT_STANDBY",
            Severity::Warn,
            "insufficient standby MDS daemons available".into(),
            &detail,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsmap::{Filesystem, MdsInfo};
    use crate::maps::MonInfo;

    fn maps(n: u64) -> ClusterMaps {
        let mut m = ClusterMaps::default();
        for id in 1..=n {
            m.monmap.mons.insert(
                id,
                MonInfo {
                    name: ((b'a' + id as u8 - 1) as char).to_string(),
                    addr: format!("127.0.0.1:{id}"),
                },
            );
        }
        m
    }

    /// One filesystem `myfs` (id 1) and MDS daemons with the given roles.
    fn fs_maps(allow_standby_replay: bool, daemons: &[(&str, MdsRole)]) -> ClusterMaps {
        let mut m = ClusterMaps::default();
        m.fsmap.filesystems.insert(
            1,
            Filesystem {
                name: "myfs".into(),
                metadata_pool: "meta".into(),
                data_pools: vec!["data".into()],
                max_mds: 1,
                allow_standby_replay,
            },
        );
        for (name, role) in daemons {
            m.fsmap.daemons.insert(
                name.to_string(),
                MdsInfo {
                    addr: "127.0.0.1:6800".into(),
                    instance: format!("mds.{name}/1"),
                    role: role.clone(),
                },
            );
        }
        m
    }

    #[test]
    fn misplaced_copies_warn_without_counting_as_degraded() {
        let mut pgs = PgSummary::default();
        assert!(object_misplaced(&pgs).is_none());
        pgs.redundancy.copies = 400;
        pgs.redundancy.misplaced = 10;
        let c = object_misplaced(&pgs).expect("a check");
        assert_eq!(
            (c.code.as_str(), c.summary.as_str()),
            (
                "OBJECT_MISPLACED",
                "10/400 object copies misplaced (2.500%)"
            )
        );
        assert!(pg_degraded(&pgs).is_none());
    }

    fn fs_health(m: &ClusterMaps) -> Health {
        compute(&HealthInput {
            maps: m,
            quorum: &BTreeSet::new(),
            pg_reports: &Default::default(),
        })
    }

    fn codes(h: &Health) -> Vec<&str> {
        h.checks.iter().map(|c| c.code.as_str()).collect()
    }

    const SERVING: MdsRole = MdsRole::Active {
        fs: 1,
        serving: true,
    };

    #[test]
    fn an_active_mds_with_its_standby_replay_is_ok() {
        let m = fs_maps(
            true,
            &[("a", SERVING), ("b", MdsRole::StandbyReplay { fs: 1 })],
        );
        assert_eq!(fs_health(&m).status, Severity::Ok);
        let m = fs_maps(false, &[("a", SERVING), ("b", MdsRole::Standby)]);
        assert_eq!(fs_health(&m).status, Severity::Ok);
    }

    #[test]
    fn a_filesystem_without_daemons_is_offline() {
        let h = fs_health(&fs_maps(false, &[]));
        assert_eq!(h.status, Severity::Err);
        assert_eq!(
            codes(&h),
            vec!["FS_DEGRADED", "MDS_ALL_DOWN", "MDS_INSUFFICIENT_STANDBY"]
        );
        assert_eq!(h.checks[0].summary, "fs myfs is degraded");
        assert_eq!(
            h.checks[0].detail,
            vec!["fs myfs is degraded: no MDS holds rank 0"]
        );
        assert_eq!(h.checks[1].detail, vec!["fs myfs is offline"]);
    }

    #[test]
    fn a_replaying_rank_holder_is_degraded() {
        let replaying = MdsRole::Active {
            fs: 1,
            serving: false,
        };
        let h = fs_health(&fs_maps(
            false,
            &[("a", replaying), ("b", MdsRole::Standby)],
        ));
        assert_eq!(h.status, Severity::Warn);
        assert_eq!(codes(&h), vec!["FS_DEGRADED"]);
        assert_eq!(
            h.checks[0].detail,
            vec!["fs myfs is degraded: rank 0 (mds.a) is up:replay"]
        );
    }

    #[test]
    fn missing_standbys_warn() {
        let h = fs_health(&fs_maps(true, &[("a", SERVING)]));
        assert_eq!(codes(&h), vec!["MDS_INSUFFICIENT_STANDBY"]);
        assert_eq!(
            h.checks[0].detail,
            vec![
                "fs myfs allows standby-replay but has no standby-replay MDS",
                "no standby MDS daemon is available to take over a rank"
            ]
        );
        let h = fs_health(&fs_maps(false, &[("a", SERVING)]));
        assert_eq!(codes(&h), vec!["MDS_INSUFFICIENT_STANDBY"]);
        assert!(fs_health(&ClusterMaps::default()).checks.is_empty());
    }

    #[test]
    fn all_mons_in_quorum_is_ok() {
        let m = maps(3);
        let q = BTreeSet::from([1, 2, 3]);
        let h = compute(&HealthInput {
            maps: &m,
            quorum: &q,
            pg_reports: &Default::default(),
        });
        assert_eq!(h.status, Severity::Ok);
        assert!(h.checks.is_empty());
    }

    #[test]
    fn a_missing_mon_warns_with_names() {
        let m = maps(3);
        let q = BTreeSet::from([1, 2]);
        let h = compute(&HealthInput {
            maps: &m,
            quorum: &q,
            pg_reports: &Default::default(),
        });
        assert_eq!(h.status, Severity::Warn);
        assert_eq!(h.checks[0].code, "MON_DOWN");
        assert_eq!(h.checks[0].summary, "1/3 mons down, quorum a,b");
        assert_eq!(
            h.checks[0].detail,
            vec!["mon.c (127.0.0.1:3) is down (out of quorum)"]
        );
    }
}
