//! Changes to the FSMap: filesystems created, changed and removed; MDS daemons booting,
//! serving and failing. Pure functions of the maps and the command, checked before proposing
//! and again when applied (like every command, see `state`). They take every map because they
//! read the OSD map's pools and write its blocklist (fencing an MDS that lost its rank).
//!
//! After every change the ranks are assigned again (`FsMap::assign`), so a filesystem gets
//! an active MDS, and a standby-replay when allowed, as soon as a daemon is free for it.

use cairn_common::command::{Command, CommandOutcome};
use cairn_common::fsmap::{
    validate_fs_name, validate_mds, Filesystem, FsId, FsMap, MdsInfo, MdsRole,
};
use cairn_common::maps::{ClusterMaps, OsdMap, Pool};

/// How long a fenced MDS instance stays on the blocklist: far longer than any pause a process
/// could wake up from, short enough that the list does not grow without end.
pub const MDS_BLOCKLIST_MS: u64 = 24 * 3600 * 1000;

/// Whether `cmd` changes the FSMap (and is handled here).
pub fn is_fsmap_command(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::FsNew { .. }
            | Command::FsRm { .. }
            | Command::FsSet { .. }
            | Command::FsAddDataPool { .. }
            | Command::MdsBoot { .. }
            | Command::MdsFailed { .. }
            | Command::MdsServing { .. }
    )
}

pub fn check(maps: &ClusterMaps, cmd: &Command) -> Result<(), String> {
    match cmd {
        Command::FsNew {
            name,
            metadata_pool,
            data_pool,
            ..
        } => check_fs_new(maps, name, metadata_pool, data_pool),
        Command::FsRm { name, .. } => require_fs(&maps.fsmap, name).map(|_| ()),
        Command::FsSet { name, key, value } => {
            let (_, fs) = require_fs(&maps.fsmap, name)?;
            fs_with(fs, key, value).map(|_| ())
        }
        Command::FsAddDataPool { name, pool } => {
            require_fs(&maps.fsmap, name)?;
            require_free_pool(maps, pool).map(|_| ())
        }
        Command::MdsBoot {
            name,
            addr,
            instance,
            ..
        } => {
            validate_mds(name, addr, instance)?;
            if maps.osdmap.blocklist.contains_key(instance) {
                return Err(format!(
                    "mds.{name} instance {instance} is blocklisted (it lost its rank): restart the daemon"
                ));
            }
            Ok(())
        }
        // Both are no-ops for an instance that is gone: a late report is harmless.
        Command::MdsFailed { .. } | Command::MdsServing { .. } => Ok(()),
        _ => Err("internal: not an FSMap command".into()),
    }
}

/// Applies a checked command, then assigns ranks. Each map that changed (the FSMap, the OSD
/// map's blocklist) gets its epoch bumped by one; a command that changes nothing leaves them.
pub fn apply(maps: &mut ClusterMaps, cmd: Command) -> CommandOutcome {
    if let Err(reason) = check(maps, &cmd) {
        return CommandOutcome::Refused { reason };
    }
    let fsmap_before = maps.fsmap.clone();
    let blocklist_before = maps.osdmap.blocklist.clone();
    let message = match cmd {
        Command::FsNew {
            name,
            metadata_pool,
            data_pool,
            ..
        } => fs_new(&mut maps.fsmap, name, metadata_pool, data_pool),
        Command::FsRm { name, at_ms } => {
            let (id, _) = require_fs(&maps.fsmap, &name).expect("checked");
            // Fenced like a failed active: a paused one must not write to pools that a new
            // filesystem may be given.
            if let Some(active) = maps.fsmap.active_of(id).map(|(n, _)| n.to_string()) {
                remove_daemon(maps, &active, at_ms);
            }
            maps.fsmap.release_fs(id);
            maps.fsmap.filesystems.remove(&id);
            format!("filesystem '{name}' removed (its pools remain)")
        }
        Command::FsSet { name, key, value } => {
            let (id, fs) = require_fs(&maps.fsmap, &name).expect("checked");
            let updated = fs_with(fs, &key, &value).expect("checked");
            maps.fsmap.filesystems.insert(id, updated);
            format!("set filesystem '{name}' {key} to {value}")
        }
        Command::FsAddDataPool { name, pool } => {
            let (id, _) = require_fs(&maps.fsmap, &name).expect("checked");
            if let Some(fs) = maps.fsmap.filesystems.get_mut(&id) {
                fs.data_pools.push(pool.clone());
            }
            format!("added data pool '{pool}' to filesystem '{name}'")
        }
        Command::MdsBoot {
            name,
            addr,
            instance,
            at_ms,
        } => boot(maps, name, addr, instance, at_ms),
        Command::MdsFailed {
            name,
            instance,
            at_ms,
            reason,
        } => fail(maps, &name, &instance, at_ms, &reason),
        Command::MdsServing { name, instance } => serving(&mut maps.fsmap, &name, &instance),
        _ => unreachable!("check refuses other commands"),
    };
    maps.fsmap.assign();
    if maps.fsmap != fsmap_before {
        maps.fsmap.epoch += 1;
    }
    if maps.osdmap.blocklist != blocklist_before {
        maps.osdmap.epoch += 1;
    }
    CommandOutcome::Done {
        epoch: maps.fsmap.epoch,
        message,
    }
}

/// Refuses to remove a pool a filesystem uses: the OSD map alone cannot tell.
pub fn check_pool_rm(fsmap: &FsMap, pool: &str) -> Result<(), String> {
    match fsmap.fs_using_pool(pool) {
        Some(fs) => Err(format!(
            "pool '{pool}' is used by filesystem '{}': remove the filesystem first (`cairn fs rm {}`)",
            fs.name, fs.name
        )),
        None => Ok(()),
    }
}

fn require_fs<'a>(fsmap: &'a FsMap, name: &str) -> Result<(FsId, &'a Filesystem), String> {
    fsmap
        .fs_by_name(name)
        .ok_or_else(|| format!("filesystem '{name}' does not exist"))
}

/// A pool that exists and that no filesystem uses yet (two filesystems in one pool would
/// overwrite each other's objects).
fn require_free_pool<'a>(maps: &'a ClusterMaps, pool: &str) -> Result<&'a Pool, String> {
    let (_, p) = maps
        .osdmap
        .pool_by_name(pool)
        .ok_or_else(|| format!("pool '{pool}' does not exist"))?;
    match maps.fsmap.fs_using_pool(pool) {
        Some(fs) => Err(format!(
            "pool '{pool}' is already used by filesystem '{}'",
            fs.name
        )),
        None => Ok(p),
    }
}

fn check_fs_new(
    maps: &ClusterMaps,
    name: &str,
    metadata_pool: &str,
    data_pool: &str,
) -> Result<(), String> {
    validate_fs_name(name)?;
    if maps.fsmap.fs_by_name(name).is_some() {
        return Err(format!("filesystem '{name}' exists"));
    }
    if metadata_pool == data_pool {
        return Err(format!(
            "pool '{metadata_pool}' cannot be both the metadata and the data pool: give the filesystem two pools"
        ));
    }
    if require_free_pool(maps, metadata_pool)?.is_erasure() {
        return Err(format!(
            "pool '{metadata_pool}' is erasure-coded: directories live in omap, which erasure-coded pools do not support; use a replicated metadata pool (erasure-coded data pools are fine)"
        ));
    }
    require_free_pool(maps, data_pool).map(|_| ())
}

fn fs_new(fsmap: &mut FsMap, name: String, metadata_pool: String, data_pool: String) -> String {
    fsmap.fs_id_max += 1;
    let id = fsmap.fs_id_max;
    fsmap.filesystems.insert(
        id,
        Filesystem {
            name: name.clone(),
            metadata_pool,
            data_pools: vec![data_pool],
            max_mds: 1,
            allow_standby_replay: false,
        },
    );
    format!("filesystem '{name}' created (id {id})")
}

/// The filesystem with one property changed, or why it cannot change.
fn fs_with(fs: &Filesystem, key: &str, value: &str) -> Result<Filesystem, String> {
    let mut updated = fs.clone();
    match key {
        "allow_standby_replay" => {
            updated.allow_standby_replay = match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(format!(
                        "allow_standby_replay must be true or false, not {value:?}"
                    ))
                }
            };
        }
        "max_mds" => {
            let n: u32 = value
                .parse()
                .map_err(|_| format!("max_mds must be a number, not {value:?}"))?;
            if n != 1 {
                return Err(format!(
                    "cannot set max_mds to {n}: only one active MDS per filesystem is supported"
                ));
            }
            updated.max_mds = n;
        }
        other => {
            return Err(format!(
                "cannot set {other:?}: the settable filesystem properties are: allow_standby_replay, max_mds"
            ))
        }
    }
    Ok(updated)
}

/// Registers an MDS instance as a standby. The same instance again (a second beacon that
/// arrived before the first boot committed) changes nothing; a new instance of a known name
/// replaces the old one, fenced if it held a rank.
fn boot(
    maps: &mut ClusterMaps,
    name: String,
    addr: String,
    instance: String,
    at_ms: u64,
) -> String {
    let old = maps.fsmap.daemons.get(&name).map(|d| d.instance.clone());
    if old.as_deref() == Some(instance.as_str()) {
        return format!("mds.{name} is registered already");
    }
    let fenced = remove_daemon(maps, &name, at_ms);
    maps.fsmap.daemons.insert(
        name.clone(),
        MdsInfo {
            addr: addr.clone(),
            instance,
            role: MdsRole::Standby,
        },
    );
    match old {
        Some(old) if fenced => format!(
            "mds.{name} restarted at {addr}; its previous instance {old} held a rank and is blocklisted"
        ),
        Some(_) => format!("mds.{name} restarted at {addr}"),
        None => format!("mds.{name} is up at {addr}"),
    }
}

/// Removes a failed daemon, if `instance` is still the one the map knows (a report about an
/// instance already replaced or removed changes nothing).
fn fail(maps: &mut ClusterMaps, name: &str, instance: &str, at_ms: u64, reason: &str) -> String {
    let current = maps
        .fsmap
        .daemons
        .get(name)
        .is_some_and(|d| d.instance == instance);
    if !current {
        return format!("mds.{name} instance {instance} is gone already");
    }
    if remove_daemon(maps, name, at_ms) {
        format!("mds.{name} failed ({reason}); instance {instance} is blocklisted")
    } else {
        format!("mds.{name} failed ({reason})")
    }
}

/// Takes a daemon out of the map. If it held a rank its instance is blocklisted from `at_ms`,
/// so that a paused process waking up later cannot write behind its successor. Returns
/// whether it was fenced.
fn remove_daemon(maps: &mut ClusterMaps, name: &str, at_ms: u64) -> bool {
    match maps.fsmap.daemons.remove(name) {
        Some(d) if matches!(d.role, MdsRole::Active { .. }) => {
            fence(&mut maps.osdmap, &d.instance, at_ms);
            true
        }
        _ => false,
    }
}

/// Blocklists `instance` for `MDS_BLOCKLIST_MS`, dropping the entries lapsed by `at_ms` (the
/// command's time, so every mon drops the same ones).
fn fence(osdmap: &mut OsdMap, instance: &str, at_ms: u64) {
    osdmap.fence(instance, at_ms, at_ms.saturating_add(MDS_BLOCKLIST_MS));
}

/// The rank holder `instance` has replayed its journal: it is `up:active` from now on.
fn serving(fsmap: &mut FsMap, name: &str, instance: &str) -> String {
    let Some(d) = fsmap
        .daemons
        .get_mut(name)
        .filter(|d| d.instance == instance)
    else {
        return format!("mds.{name} instance {instance} is gone already");
    };
    match &mut d.role {
        MdsRole::Active { serving, .. } => {
            *serving = true;
            format!("mds.{name} is up:active")
        }
        _ => format!("mds.{name} holds no rank: nothing changed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;
    use cairn_common::maps::{FailureDomain, PoolKind};

    const REPLICATED: PoolKind = PoolKind::Replicated {
        size: 3,
        min_size: 2,
    };
    const EC: PoolKind = PoolKind::Erasure {
        k: 2,
        m: 1,
        stripe_unit: 4096,
        min_size: 2,
    };

    /// A state with pools `meta`, `data`, `other` (replicated) and `ec` (2+1).
    fn with_pools() -> ClusterState {
        let mut s = ClusterState::default();
        for (id, name, kind) in [
            (1, "meta", REPLICATED),
            (2, "data", REPLICATED),
            (3, "other", REPLICATED),
            (4, "ec", EC),
        ] {
            s.maps.osdmap.pools.insert(
                id,
                Pool {
                    name: name.into(),
                    pg_num: 8,
                    kind,
                    failure_domain: FailureDomain::Osd,
                },
            );
        }
        s
    }

    fn fs_new(name: &str, metadata_pool: &str, data_pool: &str) -> Command {
        Command::FsNew {
            name: name.into(),
            metadata_pool: metadata_pool.into(),
            data_pool: data_pool.into(),
            force: false,
        }
    }

    fn fs_set(key: &str, value: &str) -> Command {
        Command::FsSet {
            name: "myfs".into(),
            key: key.into(),
            value: value.into(),
        }
    }

    fn boot(name: &str, instance: &str) -> Command {
        Command::MdsBoot {
            name: name.into(),
            addr: "127.0.0.1:6800".into(),
            instance: instance.into(),
            at_ms: 500,
        }
    }

    fn failed(name: &str, instance: &str, at_ms: u64) -> Command {
        Command::MdsFailed {
            name: name.into(),
            instance: instance.into(),
            at_ms,
            reason: "no beacon".into(),
        }
    }

    fn done(s: &mut ClusterState, cmd: Command) {
        let out = s.apply(cmd);
        assert!(matches!(out, CommandOutcome::Done { .. }), "{out:?}");
    }

    /// Applies `cmd`, expects a refusal mentioning `why`, and checks nothing changed.
    fn refused(s: &mut ClusterState, cmd: Command, why: &str) {
        let before = s.maps.clone();
        match s.apply(cmd) {
            CommandOutcome::Refused { reason } => assert!(reason.contains(why), "{reason}"),
            out => panic!("accepted: {out:?}"),
        }
        assert_eq!(s.maps, before, "a refusal changes nothing");
    }

    /// `myfs` over `meta` and `ec` with standby-replay allowed; mds a active and serving,
    /// b standby-replay, c standby.
    fn serving_fs() -> ClusterState {
        let mut s = with_pools();
        done(&mut s, fs_new("myfs", "meta", "ec"));
        done(&mut s, fs_set("allow_standby_replay", "true"));
        for n in ["a", "b", "c"] {
            done(&mut s, boot(n, &format!("mds.{n}/1")));
        }
        done(
            &mut s,
            Command::MdsServing {
                name: "a".into(),
                instance: "mds.a/1".into(),
            },
        );
        s
    }

    fn role(s: &ClusterState, name: &str) -> MdsRole {
        s.maps.fsmap.daemons[name].role.clone()
    }

    #[test]
    fn fs_new_checks_its_pools() {
        let mut s = with_pools();
        refused(
            &mut s,
            fs_new("myfs", "nope", "data"),
            "pool 'nope' does not exist",
        );
        refused(&mut s, fs_new("myfs", "ec", "data"), "erasure-coded");
        refused(&mut s, fs_new("myfs", "meta", "meta"), "both");
        refused(
            &mut s,
            fs_new("my fs", "meta", "data"),
            "invalid filesystem name",
        );
        done(&mut s, fs_new("myfs", "meta", "ec"));
        assert_eq!(s.maps.fsmap.epoch, 1);
        let (id, fs) = s.maps.fsmap.fs_by_name("myfs").unwrap();
        assert_eq!((id, fs.max_mds, fs.allow_standby_replay), (1, 1, false));
        refused(
            &mut s,
            fs_new("myfs", "other", "data"),
            "filesystem 'myfs' exists",
        );
        refused(
            &mut s,
            fs_new("fs2", "other", "meta"),
            "already used by filesystem 'myfs'",
        );
        refused(
            &mut s,
            fs_new("fs2", "meta", "other"),
            "already used by filesystem 'myfs'",
        );
        refused(
            &mut s,
            Command::FsAddDataPool {
                name: "myfs".into(),
                pool: "meta".into(),
            },
            "already used",
        );
        done(
            &mut s,
            Command::FsAddDataPool {
                name: "myfs".into(),
                pool: "data".into(),
            },
        );
        assert_eq!(s.maps.fsmap.filesystems[&1].data_pools, vec!["ec", "data"]);
    }

    #[test]
    fn fs_set_accepts_one_active_mds_only() {
        let mut s = with_pools();
        done(&mut s, fs_new("myfs", "meta", "data"));
        refused(
            &mut s,
            fs_set("max_mds", "2"),
            "only one active MDS per filesystem is supported",
        );
        refused(&mut s, fs_set("max_mds", "many"), "must be a number");
        refused(
            &mut s,
            fs_set("allow_standby_replay", "yes"),
            "true or false",
        );
        refused(
            &mut s,
            fs_set("size", "1"),
            "settable filesystem properties",
        );
        let epoch = s.maps.fsmap.epoch;
        done(&mut s, fs_set("max_mds", "1"));
        assert_eq!(
            s.maps.fsmap.epoch, epoch,
            "setting the current value changes nothing"
        );
    }

    #[test]
    fn pools_of_a_filesystem_cannot_be_removed() {
        let mut s = with_pools();
        done(&mut s, fs_new("myfs", "meta", "data"));
        refused(
            &mut s,
            Command::PoolRm {
                name: "data".into(),
            },
            "used by filesystem 'myfs'",
        );
        done(
            &mut s,
            Command::FsRm {
                name: "myfs".into(),
                at_ms: 1,
            },
        );
        done(
            &mut s,
            Command::PoolRm {
                name: "data".into(),
            },
        );
    }

    #[test]
    fn daemons_get_ranks_in_name_order() {
        let s = serving_fs();
        assert_eq!(
            role(&s, "a"),
            MdsRole::Active {
                fs: 1,
                serving: true
            }
        );
        assert_eq!(role(&s, "b"), MdsRole::StandbyReplay { fs: 1 });
        assert_eq!(role(&s, "c"), MdsRole::Standby);
    }

    #[test]
    fn a_failed_active_is_blocklisted_and_its_standby_replay_takes_over() {
        let mut s = serving_fs();
        let (fs_epoch, osd_epoch) = (s.maps.fsmap.epoch, s.maps.osdmap.epoch);
        done(&mut s, failed("a", "mds.a/1", 1000));
        assert!(!s.maps.fsmap.daemons.contains_key("a"));
        assert_eq!(
            s.maps.osdmap.blocklist.get("mds.a/1"),
            Some(&(1000 + MDS_BLOCKLIST_MS))
        );
        assert_eq!(
            role(&s, "b"),
            MdsRole::Active {
                fs: 1,
                serving: false
            }
        );
        assert_eq!(role(&s, "c"), MdsRole::StandbyReplay { fs: 1 });
        assert_eq!(s.maps.fsmap.epoch, fs_epoch + 1);
        assert_eq!(s.maps.osdmap.epoch, osd_epoch + 1);
        assert_eq!(s.osdmap_history.back(), Some(&s.maps.osdmap));
        // The fenced instance cannot come back; a new process of the same name can.
        refused(&mut s, boot("a", "mds.a/1"), "blocklisted");
        done(&mut s, boot("a", "mds.a/2"));
        assert_eq!(role(&s, "a"), MdsRole::Standby);
    }

    #[test]
    fn a_failed_standby_is_not_blocklisted() {
        let mut s = serving_fs();
        let osd_epoch = s.maps.osdmap.epoch;
        done(&mut s, failed("b", "mds.b/1", 1000));
        assert!(s.maps.osdmap.blocklist.is_empty());
        assert_eq!(s.maps.osdmap.epoch, osd_epoch);
        assert_eq!(role(&s, "c"), MdsRole::StandbyReplay { fs: 1 });
    }

    #[test]
    fn reports_about_a_stale_instance_change_nothing() {
        let mut s = serving_fs();
        let before = s.maps.clone();
        done(&mut s, failed("a", "mds.a/0", 1000));
        done(&mut s, failed("zz", "mds.zz/1", 1000));
        done(
            &mut s,
            Command::MdsServing {
                name: "b".into(),
                instance: "mds.b/0".into(),
            },
        );
        // A second beacon of the same instance seen before its boot committed.
        done(&mut s, boot("a", "mds.a/1"));
        assert_eq!(s.maps, before);
    }

    #[test]
    fn a_restarted_rank_holder_is_fenced_and_replaced() {
        let mut s = serving_fs();
        done(&mut s, boot("a", "mds.a/2"));
        assert!(s.maps.osdmap.blocklist.contains_key("mds.a/1"));
        assert_eq!(s.maps.fsmap.daemons["a"].instance, "mds.a/2");
        assert_eq!(
            role(&s, "b"),
            MdsRole::Active {
                fs: 1,
                serving: false
            }
        );
        // a rejoins as a standby and becomes the new standby-replay (name order).
        assert_eq!(role(&s, "a"), MdsRole::StandbyReplay { fs: 1 });
        assert_eq!(role(&s, "c"), MdsRole::Standby);
    }

    #[test]
    fn lapsed_blocklist_entries_are_dropped_with_the_next_fence() {
        let mut s = serving_fs();
        done(&mut s, failed("a", "mds.a/1", 1000));
        done(&mut s, failed("b", "mds.b/1", 2000 + MDS_BLOCKLIST_MS));
        let fenced: Vec<&str> = s.maps.osdmap.blocklist.keys().map(String::as_str).collect();
        assert_eq!(fenced, vec!["mds.b/1"]);
    }

    #[test]
    fn removing_a_filesystem_fences_its_active_and_frees_the_rest() {
        let mut s = serving_fs();
        done(
            &mut s,
            Command::FsRm {
                name: "myfs".into(),
                at_ms: 1,
            },
        );
        assert!(s.maps.fsmap.filesystems.is_empty());
        assert!(s.maps.osdmap.blocklist.contains_key("mds.a/1"));
        assert!(!s.maps.fsmap.daemons.contains_key("a"));
        assert!(s
            .maps
            .fsmap
            .daemons
            .values()
            .all(|d| d.role == MdsRole::Standby));
        // Their ranks go to the next filesystem that needs one.
        done(&mut s, fs_new("fs2", "meta", "data"));
        assert_eq!(
            role(&s, "b"),
            MdsRole::Active {
                fs: 2,
                serving: false
            }
        );
        assert_eq!(
            s.maps.fsmap.fs_by_name("fs2").unwrap().0,
            2,
            "ids are not reused"
        );
    }

    #[test]
    fn bad_beacon_contents_are_refused() {
        let mut s = with_pools();
        let bad_addr = Command::MdsBoot {
            name: "a".into(),
            addr: "somewhere".into(),
            instance: "mds.a/1".into(),
            at_ms: 0,
        };
        refused(&mut s, bad_addr, "invalid mds address");
        refused(&mut s, boot("a b", "x"), "invalid entity name");
        refused(&mut s, boot("a", ""), "invalid mds instance");
    }
}
