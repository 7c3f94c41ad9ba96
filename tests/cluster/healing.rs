//! Self-healing through real OSDs: an erasure-coded 2+1 PG that loses two members stops
//! serving rather than answer wrong, says which OSD it waits for, and comes back clean when
//! that OSD returns; a member that missed writes is brought up to date, in the background
//! while its PGs serve, and never passes for holding what it has not received yet; an OSD
//! marked out gives its space back once its PGs are clean on the others.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::SeedableRng;

use cairn_client::dev::Kind;
use cairn_client::Rados;
use cairn_common::command::Command;
use cairn_tests::{seed, wait_for, TestCluster};

use crate::rados::{cluster_with_pools, create_replicated_pool, payload, EC_POOL, POOL};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_failures_in_an_ec_pool_stop_it_and_one_return_heals_it() {
    let seed = seed("two_failures_in_an_ec_pool_stop_it_and_one_return_heals_it");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (c, rados) = cluster_with_pools(&[]).await;
    let mut written = BTreeMap::new();
    for i in 0..12 {
        let data = payload(&mut rng, 10_000 + i * 777);
        rados
            .write_full(EC_POOL, &format!("before-{i}"), data.clone())
            .await
            .unwrap();
        written.insert(format!("before-{i}"), data);
    }
    // osd.0 misses the next writes; then osd.1 goes too, leaving one shard of each.
    assert!(c.cluster.kill(Kind::Osd, "0").unwrap());
    let mut missed = BTreeMap::new();
    for i in 0..12 {
        let data = payload(&mut rng, 20_000 + i * 333);
        let name = format!("missed-{i}");
        rados
            .write_full(EC_POOL, &name, data.clone())
            .await
            .unwrap();
        missed.insert(name, data);
    }
    assert!(c.cluster.kill(Kind::Osd, "1").unwrap());
    c.cluster.start(Kind::Osd, "0").unwrap();

    // osd.0 and osd.2 are up, but only osd.2 has the newest writes: no wrong answer, and
    // the PGs say they wait for osd.1.
    let mut config = c.config();
    config.client.op_timeout_ms = 3000;
    let impatient = Rados::connect(&config).await.unwrap();
    for (name, want) in &missed {
        if let Ok(got) = impatient.read_all(EC_POOL, name, 1 << 20).await {
            assert!(
                got == *want,
                "seed {seed}: {name} read back wrong with two members down"
            );
        }
    }
    let rows = wait_for(
        Duration::from_secs(20),
        "a PG down waiting for osd.1",
        || async {
            let rows = c.admin().pg_list().await.ok()?;
            rows.iter()
                .any(|r| r.state == "down" && r.blocked.contains("osd.1"))
                .then_some(rows)
        },
    )
    .await;
    eprintln!(
        "{}",
        rows.iter()
            .filter(|r| r.state == "down")
            .map(|r| format!("pg {} down: {}", r.pgid, r.blocked))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The primary's account of a down PG names the interval it waits for: osd.1 was a
    // member of one that may have accepted writes, and the intervals run up to now.
    let down = rows
        .iter()
        .find(|r| r.state == "down" && r.blocked.contains("osd.1"))
        .expect("a down pg");
    let detail = impatient.pg_query(down.pgid).await.expect("pg query");
    let intervals = detail["past_intervals"].as_array().expect("past intervals");
    assert!(
        intervals.iter().any(|i| i["maybe_went_rw"] == true
            && i["osds"].as_array().is_some_and(|o| o.contains(&1.into()))),
        "seed {seed}: no interval with osd.1 that may have accepted writes: {detail}"
    );
    assert_eq!(
        intervals.last().map(|i| &i["last"]),
        Some(&detail["osdmap_epoch"]),
        "seed {seed}: {detail}"
    );

    c.cluster.start(Kind::Osd, "1").unwrap();
    c.wait_healthy(Duration::from_secs(60)).await;
    written.extend(missed);
    for (name, want) in &written {
        let got = rados.read_all(EC_POOL, name, 1 << 20).await.expect("read");
        assert!(
            got == *want,
            "seed {seed}: {name} differs once osd.1 returned"
        );
    }
    // Every shard is in line: with osd.2 gone, osd.0's shards (brought up to date) serve.
    assert!(c.cluster.kill(Kind::Osd, "2").unwrap());
    for (name, want) in &written {
        let got = rados.read_all(EC_POOL, name, 1 << 20).await.expect("read");
        assert!(got == *want, "seed {seed}: {name} differs with osd.2 down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_member_catches_up_in_the_background_and_is_never_taken_for_current() {
    let seed =
        seed("a_returning_member_catches_up_in_the_background_and_is_never_taken_for_current");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // 128 KiB/s: what osd.0 misses (about 4 MB) takes half a minute to recover, long enough
    // to watch the PGs serve meanwhile and to fail another OSD half-way.
    let (c, rados) = cluster_with_pools(&[
        "osd.recovery_max_bytes_per_sec=131072",
        "osd.recovery_idle_max_bytes_per_sec=131072",
    ])
    .await;
    // Small objects in (nearly) every PG first, so that osd.0's logs and its peers' share
    // entries: then its return is decided from the logs, not by comparing every object.
    let mut written = BTreeMap::new();
    for i in 0..300 {
        for pool in [POOL, EC_POOL] {
            let data = payload(&mut rng, 64 + i);
            let name = format!("before-{i}");
            rados.write_full(pool, &name, data.clone()).await.unwrap();
            written.insert((pool, name), data);
        }
    }
    assert!(c.cluster.kill(Kind::Osd, "0").unwrap());
    let mut missed = BTreeMap::new();
    for i in 0..24 {
        for pool in [POOL, EC_POOL] {
            let data = payload(&mut rng, 100_000 + i * 1000);
            let name = format!("missed-{i}");
            rados.write_full(pool, &name, data.clone()).await.unwrap();
            missed.insert((pool, name), data);
        }
    }
    c.cluster.start(Kind::Osd, "0").unwrap();
    let recovering = wait_for(
        Duration::from_secs(30),
        "a PG serving while it recovers",
        || async {
            let rows = c.admin().pg_list().await.ok()?;
            // Backfilling when osd.0 went down before its PGs first activated (it holds
            // nothing of them then).
            rows.iter()
                .find(|r| {
                    r.state == "active+recovering+degraded"
                        || r.state == "active+backfilling+degraded"
                })
                .map(|r| r.pgid)
        },
    )
    .await;
    // Its primary says what recovery still owes whom: osd.0, the returning member.
    let detail = rados.pg_query(recovering).await.expect("pg query");
    let owed_to_osd0 = detail["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["osd"] == 0)
        .map(|m| m["copies_to_recover"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(
        owed_to_osd0 > 0 || detail["state"]["recovery_objects_left"] == 0,
        "seed {seed}: pg {recovering} recovers, yet its primary owes osd.0 nothing: {detail}"
    );
    assert!(
        detail["activated_epoch"].as_u64().is_some(),
        "seed {seed}: {detail}"
    );
    // The returning member's log shares entries with the others': only what it missed was
    // compared, not every object of the PG.
    let compared = detail["objects_compared"].as_u64().unwrap_or(u64::MAX);
    assert!(
        detail["compared_by"] == "log" && compared < detail["objects"].as_u64().unwrap_or(0),
        "seed {seed}: pg {recovering} compared {compared} objects, not from the logs: {detail}"
    );
    // Reads of what osd.0 lacks recover those objects first: right, long before the rest.
    for ((pool, name), want) in missed.iter().step_by(7) {
        let got = rados.read_all(pool, name, 1 << 20).await.expect("read");
        assert!(
            got == *want,
            "seed {seed}: {pool}/{name} read wrong while recovering"
        );
    }
    // A second failure half-way: osd.0's copies that recovery has not reached yet must not
    // be taken for current. Replicated PGs recover from osd.2; erasure-coded ones have one
    // current shard left and must not answer wrong.
    let left = c.status().await.redundancy.recovering;
    assert!(
        left > 0,
        "seed {seed}: recovery finished before the second failure"
    );
    assert!(c.cluster.kill(Kind::Osd, "1").unwrap());
    for ((pool, name), want) in missed.iter().filter(|((p, _), _)| *p == POOL) {
        let got = rados.read_all(pool, name, 1 << 20).await.expect("read");
        assert!(
            got == *want,
            "seed {seed}: {pool}/{name} read wrong with osd.1 down"
        );
    }
    let mut config = c.config();
    config.client.op_timeout_ms = 2000;
    let impatient = Rados::connect(&config).await.unwrap();
    for ((pool, name), want) in missed.iter().filter(|((p, _), _)| *p == EC_POOL).step_by(6) {
        if let Ok(got) = impatient.read_all(pool, name, 1 << 20).await {
            assert!(
                got == *want,
                "seed {seed}: {pool}/{name} read wrong with osd.1 down"
            );
        }
    }
    c.cluster.start(Kind::Osd, "1").unwrap();
    c.wait_healthy(Duration::from_secs(120)).await;
    // osd.0 holds everything now: with osd.2 gone, its copies serve.
    assert!(c.cluster.kill(Kind::Osd, "2").unwrap());
    for ((pool, name), want) in missed.iter().chain(&written) {
        let got = rados.read_all(pool, name, 1 << 20).await.expect("read");
        assert!(
            got == *want,
            "seed {seed}: {pool}/{name} differs with osd.2 down"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_osd_weighted_to_zero_or_out_gives_its_space_back_once_clean_elsewhere() {
    let seed = seed("an_osd_weighted_to_zero_or_out_gives_its_space_back_once_clean_elsewhere");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Recovery at 1 MiB/s per OSD, so that filling osd.3 lasts long enough to be seen.
    let slow = "osd.recovery_idle_max_bytes_per_sec=1048576";
    let c = TestCluster::start_with_osds(3, 4, &[slow]).await;
    let admin = c.admin();
    create_replicated_pool(&admin, 16).await;
    let rados = Rados::connect(&c.config()).await.expect("connect");
    let used_by_3 = || async {
        let status = admin.status().await.ok()?;
        status.osd_usage.get(&3).map(|u| u.used_bytes)
    };
    let empty = wait_for(Duration::from_secs(10), "osd.3's usage", used_by_3).await;
    let mut written = BTreeMap::new();
    for i in 0..24 {
        let data = payload(&mut rng, 1 << 20);
        let name = format!("obj-{i}");
        rados.write_full(POOL, &name, data.clone()).await.unwrap();
        written.insert(name, data);
    }
    // With 4 OSDs and 3 copies, osd.3 holds about three quarters of the objects. Weight 0
    // moves them off, weight 1 back (recovered onto it in the background), out off again;
    // each time the copies left behind go once the PGs are clean elsewhere.
    let holds_data = |u: &u64| *u >= empty + (8 << 20);
    let grown = wait_for(Duration::from_secs(10), "osd.3 to hold data", || async {
        used_by_3().await.filter(holds_data)
    })
    .await;
    eprintln!("osd.3 uses {} MiB more than empty", (grown - empty) >> 20);
    let moves = [
        (Command::OsdReweight { id: 3, weight: 0.0 }, false),
        (Command::OsdReweight { id: 3, weight: 1.0 }, true),
        (Command::OsdOut { ids: vec![3] }, false),
    ];
    for (cmd, filled) in moves {
        let what = format!("{} ({cmd:?})", cmd.label());
        admin.command(cmd).await.expect("move data");
        if filled {
            // osd.3 gave everything away before: its PGs are filled by backfill, while the
            // OSDs they leave keep their copies up to date — misplaced, not degraded. (Not
            // asserted: no degraded copy at all, since a map change during the fill makes the
            // PGs peer again without asking the OSDs they left, and count those as degraded.)
            wait_for(
                Duration::from_secs(20),
                "a PG backfilling osd.3",
                || async {
                    let rows = admin.pg_list().await.ok()?;
                    rows.iter()
                        .any(|r| r.state == "active+remapped+backfilling")
                        .then_some(())
                },
            )
            .await;
            let r = c.status().await.redundancy;
            assert!(r.misplaced > 0, "seed {seed}: while osd.3 fills, {r:?}");
        }
        c.wait_healthy(Duration::from_secs(90)).await;
        wait_for(
            Duration::from_secs(30),
            &format!("osd.3's usage after {what}"),
            || async {
                used_by_3()
                    .await
                    .filter(|u| holds_data(u) == filled && (filled || *u < empty + (4 << 20)))
            },
        )
        .await;
        for (name, want) in &written {
            let got = rados.read_all(POOL, name, 2 << 20).await.expect("read");
            assert!(got == *want, "seed {seed}: {name} differs after {what}");
        }
    }
    // The copies the others hold are complete: with osd.3 stopped and one more down, every
    // object still reads back.
    assert!(c.cluster.kill(Kind::Osd, "3").unwrap());
    assert!(c.cluster.kill(Kind::Osd, "0").unwrap());
    for (name, want) in &written {
        let got = rados.read_all(POOL, name, 2 << 20).await.expect("read");
        assert!(got == *want, "seed {seed}: {name} differs with osd.0 down");
    }
}
