//! Changes to the OSD map: OSDs booting, going down, out and in, and pools. Pure functions of
//! the map and the command, checked before proposing and again when applied (like every
//! command, see `state`).

use cairn_common::command::{
    validate_pool_name, Command, CommandOutcome, OSD_ID_MAX, POOLS_MAX, POOL_PG_NUM_MAX,
};
use cairn_common::maps::{FailureDomain, OsdInfo, OsdMap, Pool, PoolKind};

/// Most members (replicas or k + m shards) a PG may have.
pub const POOL_WIDTH_MAX: u32 = 32;
/// Largest erasure-code stripe unit.
pub const STRIPE_UNIT_MAX: u32 = 1 << 20;

/// Whether `cmd` changes the OSD map (and is handled here).
pub fn is_osdmap_command(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::OsdBoot { .. }
            | Command::OsdDown { .. }
            | Command::OsdOut { .. }
            | Command::OsdIn { .. }
            | Command::OsdReweight { .. }
            | Command::BlocklistAdd { .. }
            | Command::BlocklistRm { .. }
            | Command::PoolCreate { .. }
            | Command::PoolSet { .. }
            | Command::PoolRm { .. }
    )
}

pub fn check(map: &OsdMap, cmd: &Command) -> Result<(), String> {
    match cmd {
        Command::OsdBoot {
            id,
            addr,
            host,
            weight,
            ..
        } => check_boot(*id, addr, host, *weight),
        Command::OsdDown { ids, .. } | Command::OsdOut { ids } | Command::OsdIn { ids } => {
            require_osds(map, ids)
        }
        Command::OsdReweight { id, weight } => {
            require_osds(map, &[*id])?;
            check_weight(*weight)
        }
        Command::BlocklistAdd {
            instance,
            expire_secs,
            at_ms,
        } => check_blocklist_add(map, instance, *expire_secs, *at_ms),
        Command::BlocklistRm { instance } => {
            if map.blocklist.contains_key(instance) {
                Ok(())
            } else {
                Err(format!("{instance} is not blocklisted"))
            }
        }
        Command::PoolCreate {
            name,
            pg_num,
            kind,
            failure_domain,
        } => check_pool_create(map, name, *pg_num, kind, *failure_domain),
        Command::PoolSet { name, key, value } => {
            let (_, pool) = require_pool(map, name)?;
            pool_with(pool, key, value).map(|_| ())
        }
        Command::PoolRm { name } => require_pool(map, name).map(|_| ()),
        _ => Err("internal: not an OSD map command".into()),
    }
}

/// Applies a checked command. A command that changes nothing (an OSD already down) leaves
/// the epoch alone.
pub fn apply(map: &mut OsdMap, cmd: Command) -> CommandOutcome {
    if let Err(reason) = check(map, &cmd) {
        return CommandOutcome::Refused { reason };
    }
    let before = map.clone();
    let message = match cmd {
        Command::OsdBoot {
            id,
            addr,
            host,
            weight,
            capacity_bytes,
        } => boot(map, id, addr, host, weight, capacity_bytes),
        Command::OsdDown { ids, reason, at_ms } => {
            for id in &ids {
                let osd = map.osds.get_mut(id).expect("checked");
                if osd.up {
                    osd.up = false;
                    osd.down_since_ms = at_ms;
                }
            }
            format!("marked down osd {} ({reason})", list(&ids))
        }
        Command::OsdOut { ids } => {
            set_in(map, &ids, false);
            format!("marked out osd {}", list(&ids))
        }
        Command::OsdIn { ids } => {
            set_in(map, &ids, true);
            format!("marked in osd {}", list(&ids))
        }
        Command::OsdReweight { id, weight } => {
            map.osds.get_mut(&id).expect("checked").weight = weight;
            format!("reweighted osd.{id} to {weight}")
        }
        Command::BlocklistAdd {
            instance,
            expire_secs,
            at_ms,
        } => {
            let until = at_ms.saturating_add(expire_secs.saturating_mul(1000));
            map.fence(&instance, at_ms, until);
            format!("blocklisting {instance} for {expire_secs} s")
        }
        Command::BlocklistRm { instance } => {
            map.blocklist.remove(&instance);
            format!("un-blocklisted {instance}")
        }
        Command::PoolCreate {
            name,
            pg_num,
            kind,
            failure_domain,
        } => {
            map.pool_id_max += 1;
            let id = map.pool_id_max;
            map.pools.insert(
                id,
                Pool {
                    name: name.clone(),
                    pg_num,
                    kind,
                    failure_domain,
                },
            );
            format!("pool '{name}' created (id {id})")
        }
        Command::PoolSet { name, key, value } => {
            let (id, pool) = require_pool(map, &name).expect("checked");
            let updated = pool_with(pool, &key, &value).expect("checked");
            map.pools.insert(id, updated);
            format!("set pool '{name}' {key} to {value}")
        }
        Command::PoolRm { name } => {
            let (id, _) = require_pool(map, &name).expect("checked");
            map.pools.remove(&id);
            format!("pool '{name}' removed")
        }
        _ => unreachable!("check refuses other commands"),
    };
    if *map != before {
        map.epoch += 1;
    }
    CommandOutcome::Done {
        epoch: map.epoch,
        message,
    }
}

fn list(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn check_boot(id: u32, addr: &str, host: &str, weight: f64) -> Result<(), String> {
    if id > OSD_ID_MAX {
        return Err(format!("osd id {id} is above the limit {OSD_ID_MAX}"));
    }
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("invalid osd address {addr:?}: expected IP:PORT"));
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !host_ok {
        return Err(format!("invalid host name {host:?}"));
    }
    check_weight(weight)
}

/// Longest a blocklist entry may last: ten years.
const BLOCKLIST_EXPIRE_SECS_MAX: u64 = 10 * 365 * 24 * 3600;
/// Longest instance name (`entity/nonce`).
const INSTANCE_BYTES_MAX: usize = 256;

fn check_blocklist_add(
    map: &OsdMap,
    instance: &str,
    expire_secs: u64,
    at_ms: u64,
) -> Result<(), String> {
    let well_formed = instance.len() <= INSTANCE_BYTES_MAX
        && instance
            .split_once('/')
            .is_some_and(|(entity, nonce)| !entity.is_empty() && !nonce.is_empty())
        && !instance.contains(['|', ':']);
    if !well_formed {
        return Err(format!(
            "invalid instance {instance:?}: expected ENTITY/NONCE, e.g. client.admin/5eed"
        ));
    }
    if !(1..=BLOCKLIST_EXPIRE_SECS_MAX).contains(&expire_secs) {
        return Err(format!(
            "invalid expiry {expire_secs} s: use 1 to {BLOCKLIST_EXPIRE_SECS_MAX}"
        ));
    }
    let live = map.blocklist.values().filter(|u| **u > at_ms).count();
    if live >= cairn_common::maps::BLOCKLIST_MAX && !map.blocklist.contains_key(instance) {
        return Err(format!(
            "the blocklist is full ({live} entries): remove some or wait for them to lapse"
        ));
    }
    Ok(())
}

fn check_weight(weight: f64) -> Result<(), String> {
    if !(weight.is_finite() && (0.0..=1.0e6).contains(&weight)) {
        return Err(format!("invalid weight {weight}: use 0 to 1000000"));
    }
    Ok(())
}

fn boot(map: &mut OsdMap, id: u32, addr: String, host: String, weight: f64, cap: u64) -> String {
    let first = !map.osds.contains_key(&id);
    let osd = map.osds.entry(id).or_insert_with(|| OsdInfo {
        in_cluster: true,
        weight,
        ..OsdInfo::default()
    });
    let old_host = std::mem::replace(&mut osd.host, host.clone());
    osd.addr = addr.clone();
    osd.up = true;
    osd.up_from = map.epoch + 1;
    osd.down_since_ms = 0;
    osd.capacity_bytes = cap;
    if old_host != host {
        if let Some(ids) = map.hosts.get_mut(&old_host) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                map.hosts.remove(&old_host);
            }
        }
    }
    let ids = map.hosts.entry(host.clone()).or_default();
    if !ids.contains(&id) {
        ids.push(id);
        ids.sort_unstable();
    }
    if first {
        format!("osd.{id} joined at {addr} on host {host}")
    } else {
        format!("osd.{id} is up at {addr}")
    }
}

fn set_in(map: &mut OsdMap, ids: &[u32], value: bool) {
    for id in ids {
        map.osds.get_mut(id).expect("checked").in_cluster = value;
    }
}

fn require_osds(map: &OsdMap, ids: &[u32]) -> Result<(), String> {
    if ids.is_empty() {
        return Err("name at least one osd".into());
    }
    match ids.iter().find(|id| !map.osds.contains_key(id)) {
        Some(id) => Err(format!("osd.{id} does not exist")),
        None => Ok(()),
    }
}

fn require_pool<'a>(map: &'a OsdMap, name: &str) -> Result<(u32, &'a Pool), String> {
    map.pool_by_name(name)
        .ok_or_else(|| format!("pool '{name}' does not exist"))
}

fn check_pool_create(
    map: &OsdMap,
    name: &str,
    pg_num: u32,
    kind: &PoolKind,
    domain: FailureDomain,
) -> Result<(), String> {
    validate_pool_name(name)?;
    if map.pool_by_name(name).is_some() {
        return Err(format!("pool '{name}' exists"));
    }
    if map.pools.len() >= POOLS_MAX {
        return Err(format!(
            "the cluster holds its maximum of {POOLS_MAX} pools"
        ));
    }
    if !(1..=POOL_PG_NUM_MAX).contains(&pg_num) {
        return Err(format!(
            "pg_num {pg_num} is out of range: use 1 to {POOL_PG_NUM_MAX}"
        ));
    }
    check_kind(kind)?;
    let width = match kind {
        PoolKind::Replicated { size, .. } => *size,
        PoolKind::Erasure { k, m, .. } => k + m,
    };
    let domains = map.failure_domains(domain);
    if width as usize > domains {
        return Err(format!(
            "the pool needs {width} distinct failure domains ({domain}) but the cluster has {domains} with OSDs in it; use fewer members or --failure-domain osd"
        ));
    }
    Ok(())
}

fn check_kind(kind: &PoolKind) -> Result<(), String> {
    match *kind {
        PoolKind::Replicated { size, min_size } => {
            if !(1..=POOL_WIDTH_MAX).contains(&size) {
                return Err(format!(
                    "size {size} is out of range: use 1 to {POOL_WIDTH_MAX}"
                ));
            }
            // A majority, so every interval that takes writes overlaps the one before it
            // (until PGs remember their past intervals, this is what keeps writes safe).
            let majority = size / 2 + 1;
            if !(majority..=size).contains(&min_size) {
                return Err(format!(
                    "min_size {min_size} must be between {majority} (a majority of size {size}) and {size}"
                ));
            }
        }
        PoolKind::Erasure {
            k,
            m,
            stripe_unit,
            min_size,
        } => {
            if k < 1 || m < 1 || k + m > POOL_WIDTH_MAX {
                return Err(format!(
                    "erasure code {k}+{m} is invalid: k and m must be at least 1 and k + m at most {POOL_WIDTH_MAX}"
                ));
            }
            let block = 4096;
            if stripe_unit < block || stripe_unit > STRIPE_UNIT_MAX || stripe_unit % block != 0 {
                return Err(format!(
                    "stripe unit {stripe_unit} is invalid: use a multiple of {block} up to {STRIPE_UNIT_MAX}"
                ));
            }
            if !(k..=k + m).contains(&min_size) {
                return Err(format!(
                    "min_size {min_size} must be between k ({k}) and k + m ({})",
                    k + m
                ));
            }
        }
    }
    Ok(())
}

/// The pool with one property changed, or why it cannot change.
fn pool_with(pool: &Pool, key: &str, value: &str) -> Result<Pool, String> {
    let mut updated = pool.clone();
    match key {
        "min_size" => {
            let v: u32 = value
                .parse()
                .map_err(|_| format!("min_size must be a number, not {value:?}"))?;
            match &mut updated.kind {
                PoolKind::Replicated { min_size, .. } | PoolKind::Erasure { min_size, .. } => {
                    *min_size = v
                }
            }
            check_kind(&updated.kind)?;
            Ok(updated)
        }
        other => Err(format!(
            "cannot set {other:?}: the settable pool properties are: min_size"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_cmd(id: u32, host: &str) -> Command {
        Command::OsdBoot {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            host: host.into(),
            weight: 1.0,
            capacity_bytes: 1 << 30,
        }
    }

    fn cluster(hosts: &[&str]) -> OsdMap {
        let mut map = OsdMap::default();
        for (i, h) in hosts.iter().enumerate() {
            assert!(matches!(
                apply(&mut map, boot_cmd(i as u32, h)),
                CommandOutcome::Done { .. }
            ));
        }
        map
    }

    fn ec(k: u32, m: u32) -> PoolKind {
        PoolKind::Erasure {
            k,
            m,
            stripe_unit: 4096,
            min_size: k + 1.min(m - 1),
        }
    }

    fn create(name: &str, kind: PoolKind, fd: FailureDomain) -> Command {
        Command::PoolCreate {
            name: name.into(),
            pg_num: 32,
            kind,
            failure_domain: fd,
        }
    }

    #[test]
    fn boot_down_out_in() {
        let mut map = cluster(&["h1", "h2"]);
        assert_eq!(map.epoch, 2);
        assert_eq!(map.hosts["h1"], vec![0]);
        let down = Command::OsdDown {
            ids: vec![1],
            reason: "test".into(),
            at_ms: 5,
        };
        apply(&mut map, down.clone());
        assert!(!map.osds[&1].up);
        assert_eq!(map.osds[&1].down_since_ms, 5);
        let epoch = map.epoch;
        apply(&mut map, down);
        assert_eq!(map.epoch, epoch, "marking a down osd down changes nothing");
        apply(&mut map, Command::OsdOut { ids: vec![1] });
        assert!(!map.osds[&1].in_cluster);
        // A reboot keeps the osd out (an admin's decision) but up again.
        apply(&mut map, boot_cmd(1, "h3"));
        assert!(map.osds[&1].up && !map.osds[&1].in_cluster);
        assert!(!map.hosts.contains_key("h2"));
        assert_eq!(map.hosts["h3"], vec![1]);
        let refused = apply(&mut map, Command::OsdIn { ids: vec![9] });
        assert!(matches!(refused, CommandOutcome::Refused { .. }));
    }

    #[test]
    fn blocklist_entries_lapse_are_never_shortened_and_bad_ones_are_refused() {
        let mut map = cluster(&["h1"]);
        let add = |instance: &str, expire_secs, at_ms| Command::BlocklistAdd {
            instance: instance.into(),
            expire_secs,
            at_ms,
        };
        let epoch = map.epoch;
        apply(&mut map, add("client.admin/1f", 60, 1_000));
        assert_eq!(map.epoch, epoch + 1);
        assert!(map.is_blocklisted("client.admin/1f", 60_999));
        assert!(!map.is_blocklisted("client.admin/1f", 61_000));
        // A shorter fence leaves the longer one in place.
        apply(&mut map, add("client.admin/1f", 1, 2_000));
        assert_eq!(map.blocklist["client.admin/1f"], 61_000);
        // A later fence drops the lapsed entries.
        apply(&mut map, add("client.b/2", 10, 70_000));
        assert_eq!(map.blocklist.keys().collect::<Vec<_>>(), ["client.b/2"]);
        for bad in [
            add("client.admin", 60, 0),
            add("/x", 60, 0),
            add("client.a/x:1", 60, 0),
            add("client.a/x", 0, 0),
            Command::BlocklistRm {
                instance: "client.none/1".into(),
            },
        ] {
            let before = map.clone();
            let out = apply(&mut map, bad.clone());
            assert!(
                matches!(out, CommandOutcome::Refused { .. }),
                "{bad:?} was accepted"
            );
            assert_eq!(map, before, "a refused command changes nothing");
        }
        apply(
            &mut map,
            Command::BlocklistRm {
                instance: "client.b/2".into(),
            },
        );
        assert!(map.blocklist.is_empty());
    }

    #[test]
    fn a_reweight_outlasts_reboots_and_bad_weights_are_refused() {
        let mut map = cluster(&["h1", "h2"]);
        let reweight = |id, weight| Command::OsdReweight { id, weight };
        let epoch = map.epoch;
        apply(&mut map, reweight(1, 0.25));
        assert_eq!((map.osds[&1].weight, map.epoch), (0.25, epoch + 1));
        apply(&mut map, boot_cmd(1, "h2"));
        assert_eq!(
            map.osds[&1].weight, 0.25,
            "a reboot keeps the admin's weight"
        );
        for bad in [reweight(1, -1.0), reweight(1, f64::NAN), reweight(7, 1.0)] {
            let before = map.clone();
            assert!(matches!(
                apply(&mut map, bad),
                CommandOutcome::Refused { .. }
            ));
            assert_eq!(map, before);
        }
    }

    #[test]
    fn pools_need_enough_failure_domains() {
        let mut map = cluster(&["h1", "h1", "h2"]);
        let out = apply(&mut map, create("ec", ec(2, 1), FailureDomain::Host));
        let CommandOutcome::Refused { reason } = out else {
            panic!("2+1 over 2 hosts accepted")
        };
        assert!(reason.contains("failure domains"), "{reason}");
        let out = apply(&mut map, create("ec", ec(2, 1), FailureDomain::Osd));
        assert!(matches!(out, CommandOutcome::Done { .. }), "{out:?}");
        assert_eq!(map.pool_by_name("ec").unwrap().0, 1);
        let dup = apply(&mut map, create("ec", ec(2, 1), FailureDomain::Osd));
        assert!(matches!(dup, CommandOutcome::Refused { .. }));
    }

    #[test]
    fn invalid_pools_are_refused() {
        let mut map = cluster(&["a", "b", "c", "d"]);
        let bad = [
            PoolKind::Replicated {
                size: 0,
                min_size: 0,
            },
            PoolKind::Replicated {
                size: 3,
                min_size: 4,
            },
            PoolKind::Erasure {
                k: 2,
                m: 0,
                stripe_unit: 4096,
                min_size: 2,
            },
            PoolKind::Erasure {
                k: 2,
                m: 1,
                stripe_unit: 1000,
                min_size: 2,
            },
            PoolKind::Erasure {
                k: 2,
                m: 1,
                stripe_unit: 4096,
                min_size: 1,
            },
        ];
        for kind in bad {
            let out = apply(&mut map, create("p", kind.clone(), FailureDomain::Host));
            assert!(
                matches!(out, CommandOutcome::Refused { .. }),
                "{kind:?} accepted"
            );
        }
        assert!(map.pools.is_empty());
        assert_eq!(map.epoch, 4, "refusals change nothing");
    }

    #[test]
    fn pool_ids_are_never_reused_and_set_checks_values() {
        let mut map = cluster(&["a", "b", "c"]);
        let rep = PoolKind::Replicated {
            size: 3,
            min_size: 2,
        };
        apply(&mut map, create("p", rep.clone(), FailureDomain::Host));
        apply(&mut map, Command::PoolRm { name: "p".into() });
        apply(&mut map, create("p", rep, FailureDomain::Host));
        assert_eq!(map.pool_by_name("p").unwrap().0, 2);
        let set = |v: &str| Command::PoolSet {
            name: "p".into(),
            key: "min_size".into(),
            value: v.into(),
        };
        assert!(matches!(
            apply(&mut map, set("3")),
            CommandOutcome::Done { .. }
        ));
        assert_eq!(map.pool_by_name("p").unwrap().1.min_size(), 3);
        assert!(matches!(
            apply(&mut map, set("1")),
            CommandOutcome::Refused { .. }
        ));
        assert!(matches!(
            apply(&mut map, set("4")),
            CommandOutcome::Refused { .. }
        ));
        let size = Command::PoolSet {
            name: "p".into(),
            key: "size".into(),
            value: "2".into(),
        };
        assert!(matches!(
            apply(&mut map, size),
            CommandOutcome::Refused { .. }
        ));
    }
}
