//! Everything the mons hold survives a full stop and start.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_common::command::Command;
use cairn_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_and_keys_survive_restarting_every_mon() {
    // Small snapshot interval: the restart goes through snapshot + log replay.
    let c = TestCluster::start(
        3,
        &[
            "mon.snapshot_logs_since_last=20",
            "mon.logs_kept_after_snapshot=5",
        ],
    )
    .await;
    let admin = c.admin();
    for i in 0..40 {
        admin
            .command(Command::ConfigSet {
                name: format!("persist.k{i}"),
                value: format!("v{i}"),
            })
            .await
            .expect("config set");
    }
    admin
        .command(Command::AuthAdd {
            entity: "client.keep".into(),
            caps: BTreeMap::from([("mon".to_string(), "allow r".to_string())]),
            key: None,
        })
        .await
        .expect("auth add");
    let (key, _) = admin.auth_get("client.keep").await.expect("auth get");
    let before = admin.maps().await.expect("maps");

    for mon in ["a", "b", "c"] {
        c.stop(mon);
    }
    for mon in ["a", "b", "c"] {
        c.start_mon(mon);
    }
    c.wait_healthy(Duration::from_secs(60)).await;
    let admin = c.admin();
    let after = admin.maps().await.expect("maps after restart");
    assert_eq!(after.fsid, before.fsid);
    assert_eq!(after.config, before.config);
    assert_eq!(after.auth, before.auth);
    assert_eq!(after.monmap.mons, before.monmap.mons);
    assert!(after.epoch_sum() >= before.epoch_sum());
    assert_eq!(admin.auth_get("client.keep").await.expect("key").0, key);

    // Epochs continue from where they were.
    admin
        .command(Command::ConfigSet {
            name: "persist.next".into(),
            value: "x".into(),
        })
        .await
        .expect("write after restart");
    let next = admin.maps().await.expect("maps");
    assert_eq!(next.config.epoch, before.config.epoch + 1);
}
