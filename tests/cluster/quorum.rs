//! Quorum and leader failover.

use std::time::{Duration, Instant};

use cairn_common::command::Command;
use cairn_tests::{wait_for, TestCluster};

fn set(name: &str, value: &str) -> Command {
    Command::ConfigSet {
        name: name.into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_mons_fail_over_when_the_leader_dies_and_it_catches_up() {
    let c = TestCluster::start(3, &[]).await;
    let status = c.status().await;
    assert_eq!(status.quorum_names(), vec!["a", "b", "c"]);
    assert!(
        status
            .render()
            .contains("mon: 3 daemons, quorum a,b,c (leader "),
        "{}",
        status.render()
    );
    let admin = c.admin();
    admin
        .command(set("test.before", "1"))
        .await
        .expect("write before");

    let old = c.leader().await;
    let killed_at = Instant::now();
    c.kill(&old);
    admin
        .command(set("test.after", "2"))
        .await
        .expect("write after the leader died");
    eprintln!(
        "leader kill -9 -> next committed write: {} ms",
        killed_at.elapsed().as_millis()
    );
    let status = wait_for(
        Duration::from_secs(10),
        "a new leader with MON_DOWN",
        || async {
            let s = admin.status().await.ok()?;
            (s.leader.as_deref() != Some(old.as_str())
                && s.health.checks.iter().any(|c| c.code == "MON_DOWN"))
            .then_some(s)
        },
    )
    .await;
    assert_eq!(status.quorum_names().len(), 2);
    assert!(status.health.checks[0].summary.starts_with("1/3 mons down"));

    // The killed mon restarts and catches up: its own copy of the maps has the new write.
    c.start_mon(&old);
    c.wait_healthy(Duration::from_secs(30)).await;
    let local = c.client_of(&old);
    let maps = wait_for(
        Duration::from_secs(10),
        "the restarted mon to apply the write",
        || async {
            use futures::StreamExt;
            let mut stream = local.subscribe().await.ok()?;
            let maps = stream.next().await?.ok()?;
            maps.config
                .options
                .contains_key("test.after")
                .then_some(maps)
        },
    )
    .await;
    assert_eq!(maps.config.options["test.before"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mons_survive_two_failures_and_refuse_writes_without_quorum() {
    let c = TestCluster::start(
        5,
        &["mon.commit_timeout_ms=2000", "client.op_timeout_ms=6000"],
    )
    .await;
    let admin = c.admin();
    let leader = c.leader().await;
    let others: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|s| s.to_string())
        .filter(|n| *n != leader)
        .collect();
    // Two down, one of them the leader: still a majority.
    c.kill(&leader);
    c.kill(&others[0]);
    admin
        .command(set("five.x", "1"))
        .await
        .expect("write with 3 of 5");
    // Down once silent for the grace (mon.down_grace_ms).
    let s = wait_for(Duration::from_secs(10), "2/5 mons down", || async {
        let s = admin.status().await.ok()?;
        s.health
            .checks
            .iter()
            .any(|c| c.code == "MON_DOWN" && c.summary.starts_with("2/5"))
            .then_some(s)
    })
    .await;
    assert_eq!(s.quorum_names().len(), 3);

    // A third failure: no majority. Writes fail with a clear error after a bounded wait.
    c.kill(&others[1]);
    let started = Instant::now();
    let err = admin
        .command(set("five.y", "1"))
        .await
        .expect_err("no quorum");
    let waited = started.elapsed();
    assert!(
        err.to_string().contains("no quorum"),
        "unexpected error: {err}"
    );
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");

    // Majority back: the refused write left nothing behind, the accepted one is there.
    c.start_mon(&others[1]);
    let maps = wait_for(Duration::from_secs(30), "quorum again", || async {
        admin.maps().await.ok()
    })
    .await;
    assert_eq!(
        maps.config.options.get("five.x").map(String::as_str),
        Some("1")
    );
}
