//! Removing what the map no longer places here: the collections of deleted pools, so their
//! space is freed (pool ids are never reused, so a collection of a pool id the map has passed
//! and no longer lists is garbage), and stray copies of PGs that moved elsewhere once they are
//! clean there.

use std::sync::atomic::{AtomicBool, Ordering};

use cairn_common::maps::OsdMap;
use cairn_common::pg_states::ACTIVE_CLEAN;
use cairn_common::placement::{pg_acting, PgId, NO_OSD};

use crate::error::StoreError;
use crate::members::Member;
use crate::node::OsdNode;
use crate::pg::{is_internal, PgState};
use crate::{ObjectStore, Op, Transaction};

/// Objects removed per transaction: bounded, so one deletion never makes a huge batch.
const REMOVALS_PER_TXN: usize = 256;

/// The pool id of a PG collection name (`pg.POOL.SEED` or `pg.POOL.SEEDsSHARD`).
pub fn pool_of_collection(name: &str) -> Option<u32> {
    name.strip_prefix("pg.")?.split('.').next()?.parse().ok()
}

/// The PG and shard (-1: replicated) of a PG collection name (see `pg::collection`).
pub fn pg_of_collection(name: &str) -> Option<(PgId, i32)> {
    let (pool, rest) = name.strip_prefix("pg.")?.split_once('.')?;
    let (seed, shard) = match rest.split_once('s') {
        Some((seed, shard)) => (seed, shard.parse().ok()?),
        None => (rest, -1),
    };
    let pg = PgId {
        pool: pool.parse().ok()?,
        seed: u32::from_str_radix(seed, 16).ok()?,
    };
    Some((pg, shard))
}

/// Collections of PGs of live pools that OSD `me` is not a member of (at that position) in
/// `map`: copies left behind when the PG moved.
pub fn stray_collections(
    collections: &[String],
    map: &OsdMap,
    me: u32,
) -> Vec<(String, PgId, i32)> {
    collections
        .iter()
        .filter_map(|c| {
            let (pg, shard) = pg_of_collection(c)?;
            let pool = map.pools.get(&pg.pool)?;
            let members = crate::peering::members_of(map, pool, pg);
            let member = Member { osd: me, shard };
            (!members.contains(&member)).then(|| (c.clone(), pg, shard))
        })
        .collect()
}

/// Removes this OSD's stray PG copies whose PG the mons show `active+clean` with the members
/// this OSD's map gives it: every member up and holding everything, nothing left to recover.
/// Such a copy is never needed again — peering asks only members of the PG's last activation
/// and of later intervals, and this OSD is neither. One pass at a time.
pub async fn remove_strays(node: &OsdNode, running: &AtomicBool) {
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    if let Err(e) = remove_clean_strays(node).await {
        tracing::debug!(error = %e, "stray copies stay for now");
    }
    running.store(false, Ordering::Release);
}

async fn remove_clean_strays(node: &OsdNode) -> Result<(), String> {
    let maps = node.maps();
    let map = &maps.osdmap;
    let me = node.id;
    let collections = node
        .blocking(|store| store.list_collections())
        .await
        .map_err(|e| e.to_string())?;
    let strays = stray_collections(&collections, map, me);
    if strays.is_empty() {
        return Ok(());
    }
    let rows = node.monc.pg_list().await.map_err(|e| e.to_string())?;
    for (coll, pg, shard) in strays {
        let Some(pool) = map.pools.get(&pg.pool) else {
            continue;
        };
        let acting: Vec<Option<u32>> = pg_acting(map, pool, pg)
            .iter()
            .map(|o| (*o != NO_OSD).then_some(*o))
            .collect();
        let clean = rows
            .iter()
            .any(|r| r.pgid == pg && r.state == ACTIVE_CLEAN && r.acting == acting);
        if !clean {
            continue;
        }
        // Under the member's lock, so no query or sub-op sees the copy half-removed; a map
        // change meanwhile leaves it for the next pass.
        let member = node.pg(pg, shard);
        let mut st = member.state.lock().await;
        if node.maps().osdmap.epoch != map.epoch {
            return Ok(());
        }
        let c = coll.clone();
        let objects = node
            .blocking(move |store| remove_collection(store, &c))
            .await
            .map_err(|e| e.to_string())?;
        // Empty from now on; primaries of intervals before this map stay fenced.
        let min_epoch = st.min_epoch.max(map.epoch);
        *st = PgState::default();
        st.min_epoch = min_epoch;
        tracing::info!(collection = %coll, objects, "removed a stray copy: its PG is clean elsewhere");
    }
    Ok(())
}

/// Collections of pools the map has deleted.
pub fn removed_pool_collections(collections: &[String], map: &OsdMap) -> Vec<String> {
    collections
        .iter()
        .filter(|c| {
            pool_of_collection(c)
                .is_some_and(|p| p <= map.pool_id_max && !map.pools.contains_key(&p))
        })
        .cloned()
        .collect()
}

/// Empties and removes one collection, a bounded batch at a time.
fn remove_collection(store: &ObjectStore, coll: &str) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        let (names, _) = store.list(coll, None, REMOVALS_PER_TXN)?;
        if names.is_empty() {
            break;
        }
        let mut txn = Transaction::new();
        for name in &names {
            txn.remove(coll, name);
        }
        store.apply(&txn)?;
        removed += names.iter().filter(|n| !is_internal(n)).count() as u64;
    }
    store.apply(Transaction::new().push(Op::RemoveCollection { coll: coll.into() }))?;
    Ok(removed)
}

/// Frees the collections of deleted pools, once at a time per OSD.
pub async fn collect_deleted_pools(node: &OsdNode, running: &AtomicBool) {
    if running.swap(true, Ordering::AcqRel) {
        return;
    }
    let map = node.maps().osdmap.clone();
    let result = node
        .blocking(move |store| {
            let garbage = removed_pool_collections(&store.list_collections()?, &map);
            let mut freed = Vec::new();
            for coll in garbage {
                let objects = remove_collection(store, &coll)?;
                freed.push((coll, objects));
            }
            Ok(freed)
        })
        .await;
    match result {
        Ok(freed) => {
            for (coll, objects) in freed {
                node.forget_pg_collection(&coll);
                tracing::info!(collection = %coll, objects, "removed a deleted pool's collection");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot remove a deleted pool's data yet"),
    }
    running.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::maps::{FailureDomain, Pool, PoolKind};

    #[test]
    fn only_deleted_pools_are_garbage() {
        let mut map = OsdMap {
            pool_id_max: 3,
            ..OsdMap::default()
        };
        map.pools.insert(
            2,
            Pool {
                name: "kept".into(),
                pg_num: 8,
                kind: PoolKind::Replicated {
                    size: 3,
                    min_size: 2,
                },
                failure_domain: FailureDomain::Osd,
            },
        );
        let colls: Vec<String> = ["pg.1.0", "pg.1.1fs2", "pg.2.0", "pg.4.0", "other", "pg.x.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Pool 1 was deleted; 2 lives; 4 is newer than this map (not garbage yet).
        assert_eq!(
            removed_pool_collections(&colls, &map),
            vec!["pg.1.0", "pg.1.1fs2"]
        );
        assert_eq!(pool_of_collection("pg.12.af"), Some(12));
    }

    #[test]
    fn collection_names_parse_back() {
        let pg = PgId {
            pool: 3,
            seed: 0x1f,
        };
        for shard in [-1, 0, 2] {
            let name = crate::pg::collection(pg, shard);
            assert_eq!(pg_of_collection(&name), Some((pg, shard)), "{name}");
        }
        assert_eq!(pg_of_collection("pg.x.1"), None);
        assert_eq!(pg_of_collection("other"), None);
    }

    #[test]
    fn copies_of_pgs_this_osd_no_longer_serves_are_strays() {
        let mut map = OsdMap::default();
        for id in 0..4 {
            map.osds.insert(
                id,
                cairn_common::maps::OsdInfo {
                    host: format!("h{id}"),
                    weight: 1.0,
                    up: true,
                    in_cluster: id != 3,
                    ..Default::default()
                },
            );
            map.hosts.insert(format!("h{id}"), vec![id]);
        }
        map.pools.insert(
            1,
            Pool {
                name: "p".into(),
                pg_num: 4,
                kind: PoolKind::Replicated {
                    size: 3,
                    min_size: 2,
                },
                failure_domain: FailureDomain::Osd,
            },
        );
        let colls: Vec<String> = (0..4)
            .map(|seed| crate::pg::collection(PgId { pool: 1, seed }, -1))
            .chain(["pg.9.0".to_string(), "pg.1.0s1".to_string()])
            .collect();
        // osd.3 is out: every PG copy it holds is a stray (pool 9 is not in the map: the
        // deleted-pool cleanup's business). The others are members of every PG (three OSDs
        // in, size 3), so only a shard collection of a replicated PG is a stray there.
        assert_eq!(stray_collections(&colls, &map, 3).len(), 5);
        let strays: Vec<String> = stray_collections(&colls, &map, 0)
            .into_iter()
            .map(|(c, _, _)| c)
            .collect();
        assert_eq!(strays, vec!["pg.1.0s1"]);
    }
}
