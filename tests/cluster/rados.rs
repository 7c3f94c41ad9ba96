//! Objects through real OSDs: 3 mons and 3 OSDs on loopback, a replicated pool of size 3.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

use cairn_client::dev::Kind;
use cairn_client::{ClientError, Rados};
use cairn_common::command::Command;
use cairn_common::maps::{FailureDomain, PoolKind};
use cairn_tests::{seed, wait_for, TestCluster};

const POOL: &str = "rep";

async fn cluster_with_pool() -> (TestCluster, Rados) {
    let c = TestCluster::start_with_osds(3, 3, &[]).await;
    let admin = c.admin();
    admin
        .command(Command::PoolCreate {
            name: POOL.into(),
            pg_num: 32,
            kind: PoolKind::Replicated {
                size: 3,
                min_size: 2,
            },
            failure_domain: FailureDomain::Osd,
        })
        .await
        .expect("create pool");
    let rados = Rados::connect(&c.config()).await.expect("connect");
    (c, rados)
}

fn random_len(rng: &mut impl Rng, range: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.gen_range(range);
    payload(rng, len)
}

fn payload(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_round_trip_with_overwrites_appends_and_metadata() {
    let seed = seed("rados_round_trip");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (_c, rados) = cluster_with_pool().await;

    // A model of what each object should hold.
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let sizes = [0usize, 1, 4095, 4096, 4097, 65_537, 1 << 20, (3 << 20) + 17];
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("obj-{i}");
        let data = payload(&mut rng, *size);
        rados
            .write_full(POOL, &name, data.clone())
            .await
            .expect("write_full");
        model.insert(name, data);
    }
    for _ in 0..60 {
        let name = format!("obj-{}", rng.gen_range(0..sizes.len()));
        let cur = model.get_mut(&name).unwrap();
        if rng.gen_bool(0.5) {
            let offset = rng.gen_range(0..=cur.len() + 5000);
            let data = random_len(&mut rng, 1..20_000);
            rados
                .write(POOL, &name, offset as u64, data.clone())
                .await
                .expect("write");
            if cur.len() < offset + data.len() {
                cur.resize(offset + data.len(), 0);
            }
            cur[offset..offset + data.len()].copy_from_slice(&data);
        } else {
            let data = random_len(&mut rng, 0..9000);
            rados
                .append(POOL, &name, data.clone())
                .await
                .expect("append");
            cur.extend_from_slice(&data);
        }
    }
    for (name, want) in &model {
        let got = rados.read_all(POOL, name, 1 << 20).await.expect("read");
        assert_eq!(got.len(), want.len(), "{name} size");
        assert!(got == *want, "{name} differs");
        assert_eq!(
            rados.stat(POOL, name).await.unwrap().size,
            want.len() as u64
        );
    }

    // Attributes and omap.
    rados
        .set_xattr(POOL, "obj-1", "color", b"blue".to_vec())
        .await
        .unwrap();
    let xattrs = rados.get_xattrs(POOL, "obj-1").await.unwrap();
    assert_eq!(xattrs, vec![("color".to_string(), b"blue".to_vec())]);
    rados
        .omap_set(
            POOL,
            "dir",
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec()),
            ],
        )
        .await
        .unwrap();
    rados
        .omap_rm(POOL, "dir", vec![b"a".to_vec()])
        .await
        .unwrap();
    let omap = rados.omap_get(POOL, "dir", b"", 100).await.unwrap();
    assert_eq!(omap, vec![(b"b".to_vec(), b"2".to_vec())]);

    // Listing sees every object once; removal works and a missing object is NotFound.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = rados.list(POOL, cursor, 3).await.unwrap();
        listed.extend(page.objects);
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    listed.sort();
    let mut expected: Vec<String> = model.keys().cloned().chain(["dir".to_string()]).collect();
    expected.sort();
    assert_eq!(listed, expected);
    rados.remove(POOL, "obj-0").await.unwrap();
    assert!(matches!(
        rados.stat(POOL, "obj-0").await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        rados.remove(POOL, "obj-0").await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        rados.read(POOL, "no-such", 0, 10).await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        rados.write_full("no-such-pool", "x", vec![1]).await,
        Err(ClientError::NotFound(_))
    ));
}

/// Kills an OSD in the middle of writes: every acknowledged write reads back while it is down
/// and after it restarts, and the map marks it down quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_osd_is_marked_down_and_loses_nothing() {
    let seed = seed("rados_osd_kill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (c, rados) = cluster_with_pool().await;
    let rados = std::sync::Arc::new(rados);

    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..40 {
        let name = format!("k-{i}");
        let data = random_len(&mut rng, 0..200_000);
        rados
            .write_full(POOL, &name, data.clone())
            .await
            .expect("write");
        acked.insert(name, data);
    }

    // Writers keep going while osd.1 dies.
    let writer = {
        let rados = rados.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 1);
        tokio::spawn(async move {
            let mut done = BTreeMap::new();
            for i in 0..60 {
                let name = format!("w-{i}");
                let data = random_len(&mut rng, 1..100_000);
                rados
                    .write_full(POOL, &name, data.clone())
                    .await
                    .expect("write during failure");
                done.insert(name, data);
            }
            done
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    assert!(c.cluster.kill(Kind::Osd, "1").unwrap());
    let admin = c.admin();
    wait_for(Duration::from_secs(10), "osd.1 marked down", || async {
        let maps = admin.maps().await.ok()?;
        (!maps.osdmap.osds.get(&1)?.up).then_some(())
    })
    .await;
    let detect = killed_at.elapsed();
    eprintln!("osd.1 marked down {} ms after kill -9", detect.as_millis());
    assert!(detect < Duration::from_secs(4), "took {detect:?}");
    let status = admin.status().await.unwrap();
    assert!(
        status.health.checks.iter().any(|c| c.code == "OSD_DOWN"),
        "{:?}",
        status.health
    );
    assert!(
        status
            .pg_states
            .contains_key(cairn_common::pg_states::DEGRADED),
        "{:?}",
        status.pg_states
    );

    acked.extend(writer.await.unwrap());
    for (name, want) in &acked {
        let got = rados
            .read_all(POOL, name, 1 << 20)
            .await
            .expect("read while down");
        assert!(got == *want, "{name} differs while osd.1 is down");
    }
    // Overwrite some while it is down: after its restart it must not serve the old bytes.
    for i in 0..20 {
        let name = format!("k-{i}");
        let data = random_len(&mut rng, 0..50_000);
        rados.write_full(POOL, &name, data.clone()).await.unwrap();
        acked.insert(name, data);
    }
    c.cluster.start(Kind::Osd, "1").unwrap();
    c.wait_healthy(Duration::from_secs(30)).await;
    for (name, want) in &acked {
        let got = rados
            .read_all(POOL, name, 1 << 20)
            .await
            .expect("read after restart");
        assert!(got == *want, "{name} differs after osd.1 restarted");
    }
}

/// A client without a key, with a wrong key, or without OSD caps gets nothing from the OSDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn osds_refuse_clients_without_rights() {
    let (c, rados) = cluster_with_pool().await;
    rados
        .write_full(POOL, "secret", b"data".to_vec())
        .await
        .unwrap();
    let admin = c.admin();
    admin
        .command(Command::AuthAdd {
            entity: "client.monly".into(),
            caps: BTreeMap::from([("mon".to_string(), "allow r".to_string())]),
            key: None,
        })
        .await
        .unwrap();
    let (key, _) = admin.auth_get("client.monly").await.unwrap();
    let mut config = c.config();
    config.client.name = "client.monly".into();
    let keyring_path = c.dir().join("monly.keyring");
    let mut keyring = cairn_common::keyring::Keyring::default();
    keyring.add("client.monly", key, BTreeMap::new());
    keyring.save(&keyring_path).unwrap();
    config.keyring = keyring_path;
    let weak = Rados::connect(&config)
        .await
        .expect("connect with mon caps");
    assert!(matches!(
        weak.read(POOL, "secret", 0, 4).await,
        Err(ClientError::Denied(_))
    ));

    // No ticket at all, straight to an OSD.
    let maps = admin.maps().await.unwrap();
    let addr = maps.osdmap.osds[&0].addr.clone();
    let mut raw = cairn_common::proto::osd_client::OsdClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let status = raw
        .op(cairn_common::proto::OpRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // A ticket signed for the mons (not the OSD service key) is refused too.
    let mut forged = tonic::Request::new(cairn_common::proto::OpRequest::default());
    forged
        .metadata_mut()
        .insert("authorization", "Bearer abc.def".parse().unwrap());
    assert_eq!(
        raw.op(forged).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}
