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
}

impl ClusterMaps {
    /// Grows with every change to any map: lets a subscriber drop an older copy it receives
    /// after a newer one (e.g. when it switches to a lagging mon).
    pub fn epoch_sum(&self) -> u64 {
        self.monmap.epoch + self.osdmap.epoch + self.auth.epoch + self.config.epoch
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
    /// Fenced client or daemon instances (`entity@nonce`) and when the fence lapses (ms).
    pub blocklist: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OsdInfo {
    pub addr: String,
    pub host: String,
    pub weight: f64,
    pub up: bool,
    pub in_cluster: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub pg_num: u32,
    pub kind: PoolKind,
    pub failure_domain: FailureDomain,
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
pub enum FailureDomain {
    Host,
    Osd,
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
