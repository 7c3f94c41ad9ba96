//! Removing what the map no longer places here: the collections of deleted pools, so their
//! space is freed (pool ids are never reused, so a collection of a pool id the map has passed
//! and no longer lists is garbage).

use std::sync::atomic::{AtomicBool, Ordering};

use cairn_common::maps::OsdMap;

use crate::error::StoreError;
use crate::node::OsdNode;
use crate::pg::is_internal;
use crate::{ObjectStore, Op, Transaction};

/// Objects removed per transaction: bounded, so one deletion never makes a huge batch.
const REMOVALS_PER_TXN: usize = 256;

/// The pool id of a PG collection name (`pg.POOL.SEED` or `pg.POOL.SEEDsSHARD`).
pub fn pool_of_collection(name: &str) -> Option<u32> {
    name.strip_prefix("pg.")?.split('.').next()?.parse().ok()
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
}
