//! The FSMap: filesystems and the metadata servers that serve them. The mons hold it; the
//! rank assignment below is a pure function of the map, so every mon's state machine computes
//! the same assignment after each change (MDS boot, failure, a filesystem created or changed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Filesystem ids are never reused, like pool ids.
pub type FsId = u32;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FsMap {
    pub epoch: u64,
    pub filesystems: BTreeMap<FsId, Filesystem>,
    /// Every MDS daemon the mons know, by name (`a` for `mds.a`).
    pub daemons: BTreeMap<String, MdsInfo>,
    #[serde(default)]
    pub fs_id_max: FsId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Filesystem {
    pub name: String,
    pub metadata_pool: String,
    /// The first is the default data pool.
    pub data_pools: Vec<String>,
    /// Active ranks wanted. Only 1 is supported today (no subtree partitioning).
    pub max_mds: u32,
    pub allow_standby_replay: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MdsInfo {
    /// gRPC address clients reach it at.
    pub addr: String,
    /// The daemon instance (its RADOS client id, `mds.a/<nonce>`): what the OSD blocklist
    /// fences when the mons give its rank away.
    pub instance: String,
    pub role: MdsRole,
}

/// What the mons assigned to a daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MdsRole {
    /// Waits for a role.
    Standby,
    /// Tails the journal of `fs`'s rank 0, ready to take it over.
    StandbyReplay { fs: FsId },
    /// Holds rank 0 of `fs`. `serving` turns true once it has replayed the journal and
    /// answers clients (`up:active`); before that it is `up:replay`.
    Active { fs: FsId, serving: bool },
}

impl MdsRole {
    /// The state as `cairn status` and `cairn fs status` print it.
    pub fn state_name(&self) -> &'static str {
        match self {
            MdsRole::Standby => "up:standby",
            MdsRole::StandbyReplay { .. } => "up:standby-replay",
            MdsRole::Active { serving: false, .. } => "up:replay",
            MdsRole::Active { serving: true, .. } => "up:active",
        }
    }
}

impl FsMap {
    pub fn fs_by_name(&self, name: &str) -> Option<(FsId, &Filesystem)> {
        self.filesystems
            .iter()
            .find(|(_, f)| f.name == name)
            .map(|(id, f)| (*id, f))
    }

    /// The daemon holding rank 0 of `fs`, if any.
    pub fn active_of(&self, fs: FsId) -> Option<(&str, &MdsInfo)> {
        self.daemons
            .iter()
            .find(|(_, d)| matches!(d.role, MdsRole::Active { fs: f, .. } if f == fs))
            .map(|(n, d)| (n.as_str(), d))
    }

    pub fn standby_replay_of(&self, fs: FsId) -> Option<(&str, &MdsInfo)> {
        self.daemons
            .iter()
            .find(|(_, d)| d.role == MdsRole::StandbyReplay { fs })
            .map(|(n, d)| (n.as_str(), d))
    }

    /// The filesystem that uses `pool`, as metadata or data pool: two filesystems sharing a
    /// pool would name their objects alike (`<inode>.<block>`) and overwrite each other.
    pub fn fs_using_pool(&self, pool: &str) -> Option<&Filesystem> {
        self.filesystems
            .values()
            .find(|f| f.metadata_pool == pool || f.data_pools.iter().any(|p| p == pool))
    }

    /// Fills every filesystem's rank 0 (from its standby-replay first, else any standby) and
    /// its standby-replay slot (when allowed), in filesystem id and daemon name order so the
    /// result is the same on every mon. Returns whether anything changed.
    pub fn assign(&mut self) -> bool {
        let mut changed = false;
        let ids: Vec<FsId> = self.filesystems.keys().copied().collect();
        for fs in ids {
            if self.active_of(fs).is_none() {
                let heir = self
                    .standby_replay_of(fs)
                    .or_else(|| self.first_standby())
                    .map(|(n, _)| n.to_string());
                if let Some(name) = heir {
                    self.set_role(&name, MdsRole::Active { fs, serving: false });
                    changed = true;
                }
            }
        }
        for (fs, f) in self.filesystems.clone() {
            let wanted = f.allow_standby_replay && self.active_of(fs).is_some();
            match self.standby_replay_of(fs).map(|(n, _)| n.to_string()) {
                Some(name) if !wanted => {
                    self.set_role(&name, MdsRole::Standby);
                    changed = true;
                }
                None if wanted => {
                    if let Some(name) = self.first_standby().map(|(n, _)| n.to_string()) {
                        self.set_role(&name, MdsRole::StandbyReplay { fs });
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        changed
    }

    /// Sends every daemon of a removed filesystem back to standby.
    pub fn release_fs(&mut self, fs: FsId) {
        for d in self.daemons.values_mut() {
            let of_fs = match d.role {
                MdsRole::StandbyReplay { fs: f } | MdsRole::Active { fs: f, .. } => f == fs,
                MdsRole::Standby => false,
            };
            if of_fs {
                d.role = MdsRole::Standby;
            }
        }
    }

    fn first_standby(&self) -> Option<(&str, &MdsInfo)> {
        self.daemons
            .iter()
            .find(|(_, d)| d.role == MdsRole::Standby)
            .map(|(n, d)| (n.as_str(), d))
    }

    fn set_role(&mut self, name: &str, role: MdsRole) {
        if let Some(d) = self.daemons.get_mut(name) {
            d.role = role;
        }
    }
}

/// Checks a filesystem name: the pool-name rules (letters, digits, '-', '_', '.').
pub fn validate_fs_name(name: &str) -> Result<(), String> {
    crate::command::validate_pool_name(name).map_err(|e| e.replace("pool name", "filesystem name"))
}

/// Longest MDS instance id accepted (`mds.a/<nonce>`).
pub const MDS_INSTANCE_BYTES_MAX: usize = 256;

/// Checks what an MDS announces in its beacons, before the mons put it in the map: its name
/// (`a` for the entity `mds.a`), its address (IP:PORT, as OSDs announce theirs) and its
/// instance id.
pub fn validate_mds(name: &str, addr: &str, instance: &str) -> Result<(), String> {
    crate::auth::validate_entity(&format!("mds.{name}")).map_err(|e| e.to_string())?;
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("invalid mds address {addr:?}: expected IP:PORT"));
    }
    if instance.is_empty() || instance.len() > MDS_INSTANCE_BYTES_MAX {
        return Err(format!(
            "invalid mds instance {:?}: use 1 to {MDS_INSTANCE_BYTES_MAX} bytes",
            instance.chars().take(32).collect::<String>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(role: MdsRole) -> MdsInfo {
        MdsInfo {
            addr: "127.0.0.1:1".into(),
            instance: "mds.x/1".into(),
            role,
        }
    }

    fn one_fs(standby_replay: bool) -> FsMap {
        let mut m = FsMap::default();
        m.filesystems.insert(
            1,
            Filesystem {
                name: "myfs".into(),
                metadata_pool: "meta".into(),
                data_pools: vec!["data".into()],
                max_mds: 1,
                allow_standby_replay: standby_replay,
            },
        );
        m
    }

    #[test]
    fn assigns_active_then_standby_replay_in_name_order() {
        let mut m = one_fs(true);
        for n in ["c", "a", "b"] {
            m.daemons.insert(n.into(), daemon(MdsRole::Standby));
        }
        assert!(m.assign());
        assert_eq!(m.active_of(1).unwrap().0, "a");
        assert_eq!(m.standby_replay_of(1).unwrap().0, "b");
        assert_eq!(m.daemons["c"].role, MdsRole::Standby);
        assert!(!m.assign(), "a second pass changes nothing");
    }

    #[test]
    fn the_standby_replay_inherits_the_rank() {
        let mut m = one_fs(true);
        for n in ["a", "b", "c"] {
            m.daemons.insert(n.into(), daemon(MdsRole::Standby));
        }
        m.assign();
        m.daemons.remove("a");
        assert!(m.assign());
        assert_eq!(m.active_of(1).unwrap().0, "b");
        assert_eq!(m.standby_replay_of(1).unwrap().0, "c");
    }

    #[test]
    fn no_standby_replay_unless_allowed() {
        let mut m = one_fs(false);
        for n in ["a", "b"] {
            m.daemons.insert(n.into(), daemon(MdsRole::Standby));
        }
        m.assign();
        assert!(m.standby_replay_of(1).is_none());
        m.filesystems.get_mut(&1).unwrap().allow_standby_replay = true;
        m.assign();
        assert_eq!(m.standby_replay_of(1).unwrap().0, "b");
        m.filesystems.get_mut(&1).unwrap().allow_standby_replay = false;
        m.assign();
        assert!(m.standby_replay_of(1).is_none());
        m.release_fs(1);
        assert!(m.daemons.values().all(|d| d.role == MdsRole::Standby));
    }
}
