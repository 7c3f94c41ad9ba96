//! The cluster maps held by the monitors. Every map carries an epoch that only grows: each
//! committed change to a map bumps that map's epoch by one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every map the monitors hold, as clients and daemons see them (no secret keys).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMaps {
    pub fsid: Option<Uuid>,
    pub monmap: MonMap,
    pub osdmap: OsdMap,
    pub auth: AuthMap,
    pub config: ConfigMap,
    #[serde(default)]
    pub fsmap: crate::fsmap::FsMap,
}

impl ClusterMaps {
    /// Grows with every change to any map: lets a subscriber drop an older copy it receives
    /// after a newer one (e.g. when it switches to a lagging mon).
    pub fn epoch_sum(&self) -> u64 {
        self.monmap.epoch
            + self.osdmap.epoch
            + self.auth.epoch
            + self.config.epoch
            + self.fsmap.epoch
    }
}

/// The monitors: who they are and where they listen. It mirrors the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MonMap {
    pub epoch: u64,
    /// Voting members by Raft node id.
    pub mons: BTreeMap<u64, MonInfo>,
}

impl MonMap {
    pub fn by_name(&self, name: &str) -> Option<(u64, &MonInfo)> {
        self.mons
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(id, m)| (*id, m))
    }

    pub fn name_of(&self, id: u64) -> String {
        self.mons
            .get(&id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MonInfo {
    pub name: String,
    /// gRPC address (clients and peers).
    pub addr: String,
}

/// Mon names double as Raft node ids through a stable hash, so a joining mon knows its own id
/// without asking anyone. Names are short identifiers (`a`, `mon-2`, a host name).
pub fn mon_node_id(name: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    // Raft reserves nothing, but 0 reads as "none" in our replies: keep ids non-zero.
    u64::from_be_bytes(id).max(1)
}

/// Checks a mon or entity-suffix name: 1..=63 of `[a-z0-9-]`, starting with a letter or digit.
pub fn validate_daemon_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'"
        ))
    }
}

/// OSDs, the placement hierarchy, pools and the blocklist. The OSD daemons, placement and
/// pools issues fill it in; its shape and versioning live here so every map shares one epoch
/// discipline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OsdMap {
    pub epoch: u64,
    pub osds: BTreeMap<u32, OsdInfo>,
    pub pools: BTreeMap<u32, Pool>,
    /// Placement hierarchy: host name → OSD ids (under the single root `default`).
    pub hosts: BTreeMap<String, Vec<u32>>,
    /// Fenced client or daemon instances (`entity/nonce`) and when the fence lapses (ms).
    pub blocklist: BTreeMap<String, u64>,
    /// The highest pool id ever used: ids are never reused, so an OSD can never mistake a
    /// removed pool's leftovers for a new pool's data.
    #[serde(default)]
    pub pool_id_max: u32,
}

/// Most live entries the blocklist holds: each eviction adds one, and they lapse.
pub const BLOCKLIST_MAX: usize = 65_536;

impl OsdMap {
    /// Fences `instance` until `until_ms`, first dropping the entries lapsed by `at_ms` (the
    /// command's time, so every mon drops the same ones). A fence in place is never
    /// shortened: an MDS's long fence outlives a later, shorter one.
    pub fn fence(&mut self, instance: &str, at_ms: u64, until_ms: u64) {
        self.blocklist.retain(|_, until| *until > at_ms);
        let until = self.blocklist.entry(instance.to_string()).or_insert(0);
        *until = (*until).max(until_ms);
    }

    /// Whether `instance` is fenced at `now_ms`.
    pub fn is_blocklisted(&self, instance: &str, now_ms: u64) -> bool {
        self.blocklist
            .get(instance)
            .is_some_and(|until| *until > now_ms)
    }

    pub fn pool_by_name(&self, name: &str) -> Option<(u32, &Pool)> {
        self.pools
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(id, p)| (*id, p))
    }

    /// Failure domains that hold at least one OSD that is in: the most distinct places a
    /// pool of that domain can put its members.
    pub fn failure_domains(&self, domain: FailureDomain) -> usize {
        let in_osds = || {
            self.osds
                .values()
                .filter(|o| o.in_cluster && o.weight > 0.0)
        };
        match domain {
            FailureDomain::Osd => in_osds().count(),
            FailureDomain::Host => in_osds()
                .map(|o| o.host.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OsdInfo {
    pub addr: String,
    pub host: String,
    /// Placement weight, by convention the capacity in TiB.
    pub weight: f64,
    pub up: bool,
    pub in_cluster: bool,
    /// When it was last marked down (ms since the epoch; 0 while up): `out` follows after
    /// `mon.osd_out_interval_ms`.
    #[serde(default)]
    pub down_since_ms: u64,
    /// Data device capacity in bytes, as the OSD reported it at boot.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// The map epoch of its last boot: a restarted OSD is a new member of its PGs (it may
    /// have missed writes), even when the map shows it up both before and after.
    #[serde(default)]
    pub up_from: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub pg_num: u32,
    pub kind: PoolKind,
    pub failure_domain: FailureDomain,
}

impl Pool {
    /// Members of each PG: the replica count, or k + m shards.
    pub fn width(&self) -> usize {
        match self.kind {
            PoolKind::Replicated { size, .. } => size as usize,
            PoolKind::Erasure { k, m, .. } => k.saturating_add(m) as usize,
        }
    }

    /// Members a PG needs to accept writes.
    pub fn min_size(&self) -> usize {
        match self.kind {
            PoolKind::Replicated { min_size, .. } | PoolKind::Erasure { min_size, .. } => {
                min_size as usize
            }
        }
    }

    pub fn is_erasure(&self) -> bool {
        matches!(self.kind, PoolKind::Erasure { .. })
    }
}

/// Defaults as in Ceph where safe: a replicated pool takes writes with one member missing
/// (size − 1), but always with a majority of its members (so size 2 needs both: two writers'
/// sets must overlap until past intervals are tracked); an erasure-coded one needs k plus one
/// spare when m allows (k + min(1, m − 1)), so an EC 2+1 pool keeps taking writes with one OSD
/// down.
pub fn default_min_size(kind_is_erasure: bool, size_or_k: u32, m: u32) -> u32 {
    if kind_is_erasure {
        size_or_k + 1.min(m.saturating_sub(1))
    } else {
        size_or_k.saturating_sub(1).max(size_or_k / 2 + 1)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PoolKind {
    Replicated {
        size: u32,
        min_size: u32,
    },
    Erasure {
        k: u32,
        m: u32,
        stripe_unit: u32,
        min_size: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureDomain {
    Host,
    Osd,
}

impl std::str::FromStr for FailureDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(FailureDomain::Host),
            "osd" => Ok(FailureDomain::Osd),
            other => Err(format!("unknown failure domain {other:?}: use host or osd")),
        }
    }
}

impl std::fmt::Display for FailureDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureDomain::Host => "host",
            FailureDomain::Osd => "osd",
        })
    }
}

/// Entities and their capabilities. Their secret keys never leave the monitors and are not
/// part of this map.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthMap {
    pub epoch: u64,
    pub entities: BTreeMap<String, EntityInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityInfo {
    /// Service (`mon`, `osd`, `mds`) → capability string, e.g. `mon` → `allow *`.
    pub caps: BTreeMap<String, String>,
}

/// Cluster-wide configuration: `section.option` → value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigMap {
    pub epoch: u64,
    pub options: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_size_defaults_follow_ceph() {
        assert_eq!(default_min_size(false, 3, 0), 2);
        assert_eq!(default_min_size(false, 2, 0), 2);
        assert_eq!(default_min_size(false, 5, 0), 4);
        assert_eq!(default_min_size(false, 1, 0), 1);
        assert_eq!(default_min_size(true, 2, 1), 2);
        assert_eq!(default_min_size(true, 4, 2), 5);
    }

    #[test]
    fn mon_ids_are_stable_and_distinct() {
        assert_eq!(mon_node_id("a"), mon_node_id("a"));
        let ids: std::collections::BTreeSet<u64> = ["a", "b", "c", "d", "e", "mon-1"]
            .iter()
            .map(|n| mon_node_id(n))
            .collect();
        assert_eq!(ids.len(), 6);
        assert!(ids.iter().all(|id| *id != 0));
    }

    #[test]
    fn daemon_names_are_checked() {
        assert!(validate_daemon_name("a").is_ok());
        assert!(validate_daemon_name("node-12").is_ok());
        for bad in ["", "-a", "A", "a b", "a.b", &"x".repeat(64)] {
            assert!(validate_daemon_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
