//! Scrub and repair through real OSDs: blocks of one OSD's data file are damaged while it is
//! stopped; reads stay correct; a deep scrub finds the damage, marks the PGs inconsistent
//! and raises health; `repair` rewrites the bad copies; everything is clean after, down to
//! each OSD's `fsck --deep`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use cairn_client::dev::Kind;
use cairn_client::Rados;
use cairn_common::placement::{all_pgs, PgId};
use cairn_tests::{seed, wait_for, TestCluster};

use crate::rados::{cluster_with_pools, corrupt, payload, EC_POOL, POOL};

/// Scrubs every PG of both pools; answers (objects, errors, repaired) summed.
async fn scrub_all(rados: &Rados, deep: bool, repair: bool) -> (u64, u64, u64) {
    let maps = rados.maps();
    let pgs: Vec<PgId> = maps
        .osdmap
        .pools
        .iter()
        .flat_map(|(id, pool)| all_pgs(*id, pool))
        .collect();
    let mut sum = (0, 0, 0);
    for pg in pgs {
        let r = rados.scrub(pg, deep, repair).await.expect("scrub");
        sum.0 += r.objects;
        sum.1 += r.errors;
        sum.2 += r.repaired;
    }
    sum
}

/// Flips bytes in up to `blocks` distinct random data blocks of OSD `osd`'s objects (it must be
/// stopped); answers the damaged (collection, object) pairs.
fn damage_blocks(
    c: &TestCluster,
    osd: u32,
    blocks: usize,
    rng: &mut impl Rng,
) -> BTreeSet<(String, String)> {
    let dir = c.dir().join(format!("osd.{osd}"));
    let mut candidates = Vec::new();
    {
        let store = cairn_osd::ObjectStore::open(&dir, &cairn_osd::StoreConfig::default())
            .expect("open the stopped OSD's store");
        for coll in store.list_collections().unwrap() {
            let (names, _) = store.list(&coll, None, usize::MAX).unwrap();
            for name in names.into_iter().filter(|n| !n.starts_with('\u{1}')) {
                for e in store.object_extents(&coll, &name).unwrap() {
                    for b in 0..e.len() {
                        candidates.push((coll.clone(), name.clone(), e.pblock + b));
                    }
                }
            }
        }
    }
    assert!(!candidates.is_empty(), "osd.{osd} holds no data to damage");
    let mut damaged = BTreeSet::new();
    // Distinct blocks: flipping one twice would mend it.
    let picks = rand::seq::index::sample(rng, candidates.len(), blocks.min(candidates.len()));
    for i in picks {
        let (coll, name, block) = candidates[i].clone();
        corrupt(
            &dir.join("block"),
            block * cairn_osd::BLOCK_BYTES as u64 + 100,
        );
        damaged.insert((coll, name));
    }
    damaged
}

async fn health_codes(c: &TestCluster) -> Vec<String> {
    c.status()
        .await
        .health
        .checks
        .iter()
        .map(|h| h.code.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_scrub_finds_damage_and_repair_mends_it() {
    let seed = seed("deep_scrub_finds_damage_and_repair_mends_it");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Checksum failures are left for `repair` here, so the inconsistent state shows.
    let (c, rados) = cluster_with_pools(&["osd.scrub_auto_repair=false"]).await;
    let mut written = BTreeMap::new();
    for i in 0..60 {
        let pool = if i % 2 == 0 { POOL } else { EC_POOL };
        let len = rng.gen_range(1..300_000);
        let data = payload(&mut rng, len);
        let name = format!("obj-{i}");
        rados.write_full(pool, &name, data.clone()).await.unwrap();
        written.insert((pool, name), data);
    }
    let (objects, errors, _) = scrub_all(&rados, true, false).await;
    assert_eq!(
        (objects as usize, errors),
        (60, 0),
        "seed {seed}: a clean cluster"
    );

    let victim = rng.gen_range(0..3u32);
    c.cluster
        .stop(Kind::Osd, &victim.to_string(), Duration::from_secs(10))
        .unwrap();
    let damaged = damage_blocks(&c, victim, 24, &mut rng);
    eprintln!(
        "seed {seed}: damaged {} objects' copies on osd.{victim}",
        damaged.len()
    );
    c.cluster.start(Kind::Osd, &victim.to_string()).unwrap();
    c.wait_healthy(Duration::from_secs(60)).await;

    // Reads return the right bytes whatever copy is damaged.
    for ((pool, name), want) in &written {
        let got = rados.read_all(pool, name, 1 << 20).await.expect("read");
        assert!(got == *want, "seed {seed}: {pool}/{name} read back wrong");
    }

    let (_, errors, repaired) = scrub_all(&rados, true, false).await;
    assert!(
        errors > 0,
        "seed {seed}: deep scrub found none of the damage"
    );
    assert_eq!(repaired, 0, "seed {seed}: repaired without being asked");
    wait_for(
        Duration::from_secs(10),
        "health to show the damage",
        || async {
            let codes = health_codes(&c).await;
            (codes.contains(&"PG_DAMAGED".to_string())
                && codes.contains(&"OSD_SCRUB_ERRORS".to_string()))
            .then_some(())
        },
    )
    .await;
    let inconsistent = c.admin().pg_list().await.unwrap();
    assert!(
        inconsistent
            .iter()
            .any(|r| r.state.contains("inconsistent") && r.scrub_errors > 0),
        "seed {seed}: no PG listed inconsistent"
    );

    let (_, errors, repaired) = scrub_all(&rados, true, true).await;
    assert_eq!(errors, repaired, "seed {seed}: repair left errors");
    let (_, errors, _) = scrub_all(&rados, true, false).await;
    assert_eq!(errors, 0, "seed {seed}: deep scrub after repair");
    c.wait_healthy(Duration::from_secs(10)).await;
    for ((pool, name), want) in &written {
        let got = rados.read_all(pool, name, 1 << 20).await.expect("read");
        assert!(
            got == *want,
            "seed {seed}: {pool}/{name} wrong after repair"
        );
    }

    c.cluster.stop_all(Duration::from_secs(10)).unwrap();
    for osd in 0..3 {
        let dir = c.dir().join(format!("osd.{osd}"));
        let store = cairn_osd::ObjectStore::open(&dir, &cairn_osd::StoreConfig::default()).unwrap();
        let report = store.fsck(true).unwrap();
        assert!(report.is_clean(), "seed {seed}: osd.{osd} fsck: {report:?}");
    }
}

/// With automatic repair (the default), a deep scrub mends checksum failures by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checksum_failures_are_repaired_by_scrub() {
    let seed = seed("checksum_failures_are_repaired_by_scrub");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (c, rados) = cluster_with_pools(&[]).await;
    for i in 0..20 {
        let pool = if i % 2 == 0 { POOL } else { EC_POOL };
        let data = payload(&mut rng, 50_000 + i * 1000);
        rados
            .write_full(pool, &format!("o{i}"), data)
            .await
            .unwrap();
    }
    c.cluster
        .stop(Kind::Osd, "1", Duration::from_secs(10))
        .unwrap();
    damage_blocks(&c, 1, 8, &mut rng);
    c.cluster.start(Kind::Osd, "1").unwrap();
    c.wait_healthy(Duration::from_secs(60)).await;
    let (_, errors, repaired) = scrub_all(&rados, true, false).await;
    assert!(errors > 0, "seed {seed}: nothing found");
    assert_eq!(
        errors, repaired,
        "seed {seed}: checksum failures left unrepaired"
    );
    assert_eq!(scrub_all(&rados, true, false).await.1, 0, "seed {seed}");
    assert!(!health_codes(&c).await.contains(&"PG_DAMAGED".to_string()));
}

/// Scrub stamps are the times PGs were scrubbed, never made up by the schedule, and a PG
/// keeps its stamp when another OSD becomes its primary and when the mon leader changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_stamps_are_real_and_outlive_a_change_of_primary_and_of_leader() {
    let (c, rados) = cluster_with_pools(&[]).await;
    let admin = c.admin();
    let all_clean = || async {
        let rows = admin.pg_list().await.ok()?;
        rows.iter()
            .all(|r| r.state == "active+clean")
            .then_some(rows)
    };
    wait_for(Duration::from_secs(60), "every pg active+clean", all_clean).await;
    // Past a tick of the schedule (10 s), which must not pass its plan off as scrubs.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let rows = admin.pg_list().await.expect("pg list");
    let made_up: Vec<_> = rows
        .iter()
        .filter(|r| r.last_scrub_ms != 0 || r.last_deep_scrub_ms != 0)
        .map(|r| r.pgid)
        .collect();
    assert!(
        made_up.is_empty(),
        "never scrubbed, yet stamped: {made_up:?}"
    );

    let before = cairn_common::now_ms();
    scrub_all(&rados, true, false).await;
    let rows = wait_for(Duration::from_secs(30), "every pg stamped", || async {
        let rows = admin.pg_list().await.ok()?;
        rows.iter()
            .all(|r| r.last_scrub_ms >= before && r.last_deep_scrub_ms >= before)
            .then_some(rows)
    })
    .await;
    let moved: BTreeSet<PgId> = rows
        .iter()
        .filter(|r| r.primary == Some(0))
        .map(|r| r.pgid)
        .collect();
    assert!(!moved.is_empty(), "osd.0 is the primary of some pgs");
    c.cluster
        .stop(Kind::Osd, "0", Duration::from_secs(10))
        .expect("stop osd.0");
    let rows = wait_for(
        Duration::from_secs(60),
        "new primaries serving osd.0's pgs",
        || async {
            let rows = admin.pg_list().await.ok()?;
            rows.iter()
                .filter(|r| moved.contains(&r.pgid))
                .all(|r| r.primary.is_some_and(|p| p != 0) && r.state.starts_with("active"))
                .then_some(rows)
        },
    )
    .await;
    for r in rows.iter().filter(|r| moved.contains(&r.pgid)) {
        assert!(
            r.last_deep_scrub_ms >= before,
            "pg {} lost its scrub stamp with its primary: {r:?}",
            r.pgid
        );
    }

    // The new primaries learn the stamps from the mons: their schedules count from them.
    let pg = *moved.iter().next().expect("a moved pg");
    wait_for(
        Duration::from_secs(30),
        "a new primary holding its pg's stamps",
        || async {
            let detail = rados.pg_query(pg).await.ok()?;
            (detail["last_deep_scrub_ms"].as_u64()? >= before).then_some(())
        },
    )
    .await;

    // The stamps are committed, not kept in the leader's memory: a new leader has them.
    let leader = c.leader().await;
    c.kill(&leader);
    let rows = wait_for(
        Duration::from_secs(60),
        "a new leader reporting osd.0's pgs",
        || async {
            let status = admin.status().await.ok()?;
            if status.leader.as_deref().is_none_or(|l| l == leader) {
                return None;
            }
            let rows = admin.pg_list().await.ok()?;
            rows.iter()
                .filter(|r| moved.contains(&r.pgid))
                .all(|r| r.state.starts_with("active"))
                .then_some(rows)
        },
    )
    .await;
    for r in rows.iter().filter(|r| moved.contains(&r.pgid)) {
        assert!(
            r.last_deep_scrub_ms >= before,
            "pg {} lost its scrub stamp with the leader mon: {r:?}",
            r.pgid
        );
    }
}
