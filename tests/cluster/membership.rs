//! Mons join and leave at runtime (Raft joint consensus) while writes go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::dev::Kind;
use cairn_common::command::Command;
use cairn_tests::{wait_for, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_back_while_writing() {
    let c = Arc::new(TestCluster::start(3, &[]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let admin = c.admin();
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("grow.k{i}");
                if admin
                    .command(Command::ConfigSet {
                        name: name.clone(),
                        value: i.to_string(),
                    })
                    .await
                    .is_ok()
                {
                    acked.push((name, i.to_string()));
                }
                i += 1;
            }
            acked
        })
    };
    let admin = c.admin();
    for name in ["d", "e"] {
        let addr = c.cluster.prepare_mon(name).expect("prepare mon");
        c.cluster.start(Kind::Mon, name).expect("start");
        wait_for(Duration::from_secs(10), "the new mon to listen", || async {
            admin.ping(&addr).await.ok()
        })
        .await;
        let (_, msg) = admin.mon_add(name, &addr).await.expect("mon add");
        assert!(msg.contains(&format!("added mon.{name}")), "{msg}");
    }
    let status = c.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(status.quorum_names(), vec!["a", "b", "c", "d", "e"]);
    let err = admin
        .mon_add("d", &c.addr_of("d"))
        .await
        .expect_err("duplicate add");
    assert!(err.to_string().contains("already a member"), "{err}");

    for name in ["e", "d"] {
        admin.mon_rm(name).await.expect("mon rm");
        c.cluster
            .stop(Kind::Mon, name, Duration::from_secs(10))
            .expect("stop");
        c.cluster.forget_mon(name).expect("forget");
    }
    let status = c.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(status.quorum_names(), vec!["a", "b", "c"]);
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 10, "only {} writes went through", acked.len());
    let maps = admin.maps().await.expect("maps");
    for (name, value) in &acked {
        assert_eq!(
            maps.config.options.get(name),
            Some(value),
            "acknowledged write {name} lost"
        );
    }
    assert_eq!(maps.monmap.mons.len(), 3);
}
