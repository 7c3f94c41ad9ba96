//! `cairn status`: what the leader mon reports and how it reads, laid out like `ceph status`.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fsmap::{FsMap, MdsRole};
use crate::health::{Health, Severity};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub fsid: Option<Uuid>,
    pub health: Health,
    pub mons: Vec<MonStatus>,
    pub leader: Option<String>,
    /// How long the current quorum has held, in seconds.
    pub quorum_age_secs: u64,
    pub epochs: Epochs,
    pub osds: OsdSummary,
    pub pools: u32,
    pub pgs: u64,
    /// PG state → count (see `pg_states`).
    #[serde(default)]
    pub pg_states: std::collections::BTreeMap<String, u64>,
    /// Objects in every pool, as the PGs' primaries report them.
    #[serde(default)]
    pub objects: u64,
    /// The same per pool id (`cairn df`).
    #[serde(default)]
    pub pool_objects: std::collections::BTreeMap<u32, u64>,
    /// The data those objects hold, over every pool (see `df::PoolSpace::stored_bytes`).
    #[serde(default)]
    pub stored_bytes: u64,
    #[serde(default)]
    pub redundancy: Redundancy,
    /// Data devices of the OSDs in the map, as their last beacons reported them.
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub osd_usage: std::collections::BTreeMap<u32, Usage>,
    /// What the OSDs' collections of each pool hold, summed (by pool id).
    #[serde(default)]
    pub pool_usage: std::collections::BTreeMap<u32, crate::df::PoolUsage>,
    /// Client I/O of the last seconds, over every OSD.
    #[serde(default)]
    pub io: IoRates,
    /// Filesystems and their MDS daemons.
    #[serde(default)]
    pub mds: MdsSummary,
    pub raft: RaftSummary,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonStatus {
    pub name: String,
    pub addr: String,
    pub in_quorum: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Epochs {
    pub monmap: u64,
    pub osdmap: u64,
    pub auth: u64,
    pub config: u64,
    #[serde(default)]
    pub fsmap: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OsdSummary {
    pub total: u32,
    pub up: u32,
    pub in_cluster: u32,
}

/// Client ops an OSD served as primary since it started, and the object copies it brought in
/// line (counters only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTotals {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    #[serde(default)]
    pub recovered_objects: u64,
    #[serde(default)]
    pub recovered_bytes: u64,
}

/// Client I/O per second, from the change of the OSDs' totals between beacons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IoRates {
    pub read_ops: f64,
    pub write_ops: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
    /// Object copies (shards) brought in line per second, and their bytes.
    #[serde(default)]
    pub recovery_objects: f64,
    #[serde(default)]
    pub recovery_bytes: f64,
}

impl IoRates {
    /// The rates between two samples `secs` apart; none when the counters went back (the OSD
    /// restarted) or no time passed.
    pub fn between(old: &IoTotals, new: &IoTotals, secs: f64) -> Option<IoRates> {
        let d = |a: u64, b: u64| b.checked_sub(a).map(|v| v as f64 / secs);
        if secs <= 0.0 {
            return None;
        }
        Some(IoRates {
            read_ops: d(old.reads, new.reads)?,
            write_ops: d(old.writes, new.writes)?,
            read_bytes: d(old.read_bytes, new.read_bytes)?,
            write_bytes: d(old.written_bytes, new.written_bytes)?,
            recovery_objects: d(old.recovered_objects, new.recovered_objects)?,
            recovery_bytes: d(old.recovered_bytes, new.recovered_bytes)?,
        })
    }

    pub fn add(&self, o: &IoRates) -> IoRates {
        IoRates {
            read_ops: self.read_ops + o.read_ops,
            write_ops: self.write_ops + o.write_ops,
            read_bytes: self.read_bytes + o.read_bytes,
            write_bytes: self.write_bytes + o.write_bytes,
            recovery_objects: self.recovery_objects + o.recovery_objects,
            recovery_bytes: self.recovery_bytes + o.recovery_bytes,
        }
    }
}

/// Redundancy not restored yet, over every PG.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redundancy {
    /// Object copies (shards of erasure-coded objects) the pools want: objects × members.
    pub copies: u64,
    /// Copies missing: on members down, or stale on members being brought in line with no
    /// OSD outside the PG holding them up to date.
    pub degraded: u64,
    /// Copies being brought in line that an OSD outside the PG holds up to date meanwhile
    /// (it keeps them until the PG is clean): the data moves, its redundancy stays.
    #[serde(default)]
    pub misplaced: u64,
    /// Copies the primaries are bringing in line now (degraded or misplaced).
    pub recovering: u64,
    /// PGs still peering: what they will have to bring in line is not counted yet.
    #[serde(default)]
    pub peering_pgs: u64,
}

impl Redundancy {
    /// `n` copies (degraded, misplaced) as a percentage of all copies.
    pub fn percent(&self, n: u64) -> f64 {
        100.0 * n as f64 / self.copies.max(1) as f64
    }
}

/// Bytes of a data device (or of all of them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

impl Usage {
    pub fn available(&self) -> u64 {
        self.total_bytes.saturating_sub(self.used_bytes)
    }
}

/// `1.5 GiB`: sizes as `ceph status` prints them.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Filesystems and MDS daemons, for the `mds:` line of `cairn status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MdsSummary {
    pub filesystems: Vec<FsSummary>,
    /// Daemons tailing a rank holder's journal.
    pub standby_replay: u32,
    /// Daemons waiting for a role.
    pub standby: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FsSummary {
    pub name: String,
    /// Who holds rank 0, if anyone.
    pub rank0: Option<RankHolder>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankHolder {
    pub daemon: String,
    /// `up:replay` or `up:active`.
    pub state: String,
}

impl MdsSummary {
    pub fn of(fsmap: &FsMap) -> MdsSummary {
        let count = |wanted: fn(&MdsRole) -> bool| {
            fsmap.daemons.values().filter(|d| wanted(&d.role)).count() as u32
        };
        MdsSummary {
            filesystems: fsmap
                .filesystems
                .iter()
                .map(|(id, f)| FsSummary {
                    name: f.name.clone(),
                    rank0: fsmap.active_of(*id).map(|(daemon, d)| RankHolder {
                        daemon: daemon.to_string(),
                        state: d.role.state_name().to_string(),
                    }),
                })
                .collect(),
            standby_replay: count(|r| matches!(r, MdsRole::StandbyReplay { .. })),
            standby: count(|r| *r == MdsRole::Standby),
        }
    }

    /// `myfs:1 {0=a=up:active} 1 up:standby-replay, 1 up:standby`, as `ceph status` shows
    /// filesystems (name, ranks up, who holds them) and spare daemons; none when there are
    /// neither filesystems nor daemons.
    pub fn line(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .filesystems
            .iter()
            .map(|f| match &f.rank0 {
                Some(h) => format!("{}:1 {{0={}={}}}", f.name, h.daemon, h.state),
                None => format!("{}:0", f.name),
            })
            .collect();
        let spares: Vec<String> = [
            (self.standby_replay, "up:standby-replay"),
            (self.standby, "up:standby"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, state)| format!("{n} {state}"))
        .collect();
        if !spares.is_empty() {
            parts.push(spares.join(", "));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RaftSummary {
    pub term: u64,
    pub last_log_index: u64,
    pub last_applied_index: u64,
}

impl ClusterStatus {
    pub fn quorum_names(&self) -> Vec<&str> {
        self.mons
            .iter()
            .filter(|m| m.in_quorum)
            .map(|m| m.name.as_str())
            .collect()
    }

    /// The text of `cairn status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let fsid = self.fsid.map(|f| f.to_string()).unwrap_or_default();
        let _ = writeln!(out, "  cluster:");
        let _ = writeln!(out, "    id:     {fsid}");
        let _ = writeln!(out, "    health: {}", self.health.status.as_str());
        for c in &self.health.checks {
            let _ = writeln!(out, "            {}", c.summary);
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "  services:");
        let mut mon_line = format!(
            "    mon: {} daemons, quorum {}",
            self.mons.len(),
            self.quorum_names().join(",")
        );
        if let Some(leader) = &self.leader {
            let _ = write!(mon_line, " (leader {leader})");
        }
        let _ = write!(mon_line, " (age {})", human_duration(self.quorum_age_secs));
        let out_of_quorum: Vec<&str> = self
            .mons
            .iter()
            .filter(|m| !m.in_quorum)
            .map(|m| m.name.as_str())
            .collect();
        if !out_of_quorum.is_empty() {
            let _ = write!(mon_line, ", out of quorum: {}", out_of_quorum.join(", "));
        }
        let _ = writeln!(out, "{mon_line}");
        if let Some(mds) = self.mds.line() {
            let _ = writeln!(out, "    mds: {mds}");
        }
        let o = &self.osds;
        let _ = writeln!(
            out,
            "    osd: {} osds: {} up, {} in",
            o.total, o.up, o.in_cluster
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "  data:");
        let _ = writeln!(out, "    pools:   {} pools, {} pgs", self.pools, self.pgs);
        let _ = writeln!(
            out,
            "    objects: {} objects, {}",
            self.objects,
            human_bytes(self.stored_bytes)
        );
        let u = &self.usage;
        let _ = writeln!(
            out,
            "    usage:   {} used, {} / {} avail",
            human_bytes(u.used_bytes),
            human_bytes(u.available()),
            human_bytes(u.total_bytes)
        );
        let r = &self.redundancy;
        for (label, n) in [("degraded", r.degraded), ("misplaced", r.misplaced)] {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "    {label}: {n}/{} object copies ({:.3}%)",
                    r.copies,
                    r.percent(n)
                );
            }
        }
        let mut first = true;
        let io = self.io;
        let has_io = io != IoRates::default();
        for (state, n) in &self.pg_states {
            let label = if first {
                "    pgs:     "
            } else {
                "             "
            };
            first = false;
            let _ = writeln!(out, "{label}{n} {state}");
        }
        if has_io {
            let _ = writeln!(out);
            let _ = writeln!(out, "  io:");
            let _ = writeln!(
                out,
                "    client:   {}/s rd, {}/s wr, {:.0} op/s rd, {:.0} op/s wr",
                human_bytes(io.read_bytes as u64),
                human_bytes(io.write_bytes as u64),
                io.read_ops,
                io.write_ops
            );
            if io.recovery_objects > 0.0 {
                let _ = writeln!(
                    out,
                    "    recovery: {}/s, {:.0} objects/s",
                    human_bytes(io.recovery_bytes as u64),
                    io.recovery_objects
                );
            }
        }
        if r.recovering > 0 {
            // A time left is only honest once every PG has counted its work.
            let eta = if r.peering_pgs > 0 {
                format!("{} more pgs peering, not counted yet", r.peering_pgs)
            } else if io.recovery_objects > 0.0 {
                let secs = (r.recovering as f64 / io.recovery_objects).ceil() as u64;
                format!("about {} left", human_duration(secs))
            } else {
                "rate not known yet".to_string()
            };
            let _ = writeln!(out);
            let _ = writeln!(out, "  progress:");
            let _ = writeln!(
                out,
                "    recovery: {} object copies to bring in line, {eta}",
                r.recovering
            );
        }
        out
    }
}

impl Health {
    /// The text of `cairn health` (and with `detail`, of `cairn health detail`).
    pub fn render(&self, detail: bool) -> String {
        let mut out = String::from(self.status.as_str());
        let summaries: Vec<&str> = self.checks.iter().map(|c| c.summary.as_str()).collect();
        if !summaries.is_empty() {
            let _ = write!(out, " {}", summaries.join("; "));
        }
        out.push('\n');
        if detail {
            for c in &self.checks {
                let tag = match c.severity {
                    Severity::Ok => "OK",
                    Severity::Warn => "WRN",
                    Severity::Err => "ERR",
                };
                let _ = writeln!(out, "[{tag}] {}: {}", c.code, c.summary);
                for d in &c.detail {
                    let _ = writeln!(out, "    {d}");
                }
            }
        }
        out
    }
}

/// `42s`, `5m`, `3h`, `2d`: the coarse ages `ceph status` prints.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthCheck;

    fn status(in_quorum: [bool; 3]) -> ClusterStatus {
        ClusterStatus {
            fsid: None,
            health: Health {
                status: Severity::Ok,
                checks: vec![],
            },
            mons: ["a", "b", "c"]
                .iter()
                .zip(in_quorum)
                .map(|(n, q)| MonStatus {
                    name: n.to_string(),
                    addr: String::new(),
                    in_quorum: q,
                })
                .collect(),
            leader: Some("a".into()),
            quorum_age_secs: 75,
            epochs: Epochs::default(),
            osds: OsdSummary::default(),
            pools: 0,
            pgs: 0,
            pg_states: Default::default(),
            objects: 0,
            pool_objects: Default::default(),
            stored_bytes: 0,
            redundancy: Redundancy::default(),
            usage: Usage::default(),
            osd_usage: Default::default(),
            pool_usage: Default::default(),
            io: IoRates::default(),
            mds: MdsSummary::default(),
            raft: RaftSummary::default(),
        }
    }

    #[test]
    fn renders_like_ceph() {
        let text = status([true; 3]).render();
        assert!(
            text.contains("    mon: 3 daemons, quorum a,b,c (leader a) (age 75s)\n"),
            "{text}"
        );
        assert!(text.contains("    health: HEALTH_OK\n"));
        let text = status([true, true, false]).render();
        assert!(
            text.contains("quorum a,b (leader a) (age 75s), out of quorum: c"),
            "{text}"
        );
    }

    #[test]
    fn the_mds_line_shows_ranks_and_spares_when_there_are_any() {
        use crate::fsmap::{Filesystem, MdsInfo};
        let mut s = status([true; 3]);
        assert!(!s.render().contains("mds:"));
        let mut fsmap = FsMap::default();
        fsmap.filesystems.insert(
            1,
            Filesystem {
                name: "myfs".into(),
                metadata_pool: "m".into(),
                data_pools: vec!["d".into()],
                max_mds: 1,
                allow_standby_replay: true,
            },
        );
        s.mds = MdsSummary::of(&fsmap);
        assert!(s.render().contains("    mds: myfs:0\n"), "{}", s.render());
        for n in ["a", "b", "c"] {
            fsmap.daemons.insert(
                n.into(),
                MdsInfo {
                    addr: String::new(),
                    instance: format!("mds.{n}/1"),
                    role: MdsRole::Standby,
                },
            );
        }
        fsmap.assign();
        if let Some(a) = fsmap.daemons.get_mut("a") {
            a.role = MdsRole::Active {
                fs: 1,
                serving: true,
            };
        }
        s.mds = MdsSummary::of(&fsmap);
        let text = s.render();
        assert!(
            text.contains(
                "    mds: myfs:1 {0=a=up:active} 1 up:standby-replay, 1 up:standby\n    osd:"
            ),
            "{text}"
        );
    }

    #[test]
    fn recovery_shows_degraded_copies_rate_and_time_left() {
        let mut s = status([true; 3]);
        assert!(!s.render().contains("degraded"));
        s.redundancy = Redundancy {
            copies: 3000,
            degraded: 300,
            misplaced: 30,
            recovering: 200,
            peering_pgs: 0,
        };
        s.io.recovery_objects = 50.0;
        s.io.recovery_bytes = 50.0 * 1024.0 * 1024.0;
        let text = s.render();
        assert!(
            text.contains(
                "    degraded: 300/3000 object copies (10.000%)\n    misplaced: 30/3000 object copies (1.000%)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("    recovery: 50.0 MiB/s, 50 objects/s\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "  progress:\n    recovery: 200 object copies to bring in line, about 4s left\n"
            ),
            "{text}"
        );
        s.redundancy.peering_pgs = 5;
        let text = s.render();
        assert!(
            text.contains(
                "200 object copies to bring in line, 5 more pgs peering, not counted yet\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn io_rates_come_from_growing_totals() {
        let old = IoTotals {
            reads: 10,
            writes: 20,
            read_bytes: 1000,
            written_bytes: 4000,
            ..IoTotals::default()
        };
        let new = IoTotals {
            reads: 30,
            writes: 20,
            read_bytes: 3000,
            written_bytes: 4000,
            ..IoTotals::default()
        };
        let r = IoRates::between(&old, &new, 2.0).unwrap();
        assert_eq!((r.read_ops, r.write_ops, r.read_bytes), (10.0, 0.0, 1000.0));
        // A restarted OSD's counters start again: no rate from that pair.
        assert!(IoRates::between(&new, &old, 2.0).is_none());
        assert!(IoRates::between(&old, &new, 0.0).is_none());
        let mut st = status([true; 3]);
        st.io = r;
        assert!(st
            .render()
            .contains("  io:\n    client:   1000 B/s rd, 0 B/s wr, 10 op/s rd, 0 op/s wr\n"));
    }

    #[test]
    fn health_detail_lists_checks() {
        let h = Health {
            status: Severity::Warn,
            checks: vec![HealthCheck {
                code: "MON_DOWN".into(),
                severity: Severity::Warn,
                summary: "1/3 mons down, quorum a,b".into(),
                detail: vec!["mon.c is down".into()],
            }],
        };
        assert_eq!(h.render(false), "HEALTH_WARN 1/3 mons down, quorum a,b\n");
        assert!(h
            .render(true)
            .contains("[WRN] MON_DOWN: 1/3 mons down, quorum a,b\n    mon.c is down\n"));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600), "3h");
        assert_eq!(human_duration(3 * 86_400), "3d");
    }
}
