//! The leader's watch over the OSDs and MDSs: every tick it marks down the OSDs the liveness
//! rules condemn (`osd_liveness`), marks out those down longer than `mon.osd_out_interval_ms`,
//! and fails the MDSs silent for `mon.mds_beacon_grace_ms` (`mds_liveness`).

use std::sync::Arc;
use std::time::Duration;

use cairn_common::command::Command;
use tokio::sync::watch;

use crate::node::MonNode;

const TICK: Duration = Duration::from_millis(100);

pub async fn watch_osds(node: Arc<MonNode>, mut stop: watch::Receiver<bool>) {
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let now_leading = node.is_leader().await;
        if !now_leading {
            if leading {
                node.osd_liveness.reset();
                node.mds_liveness.reset();
            }
            leading = false;
            continue;
        }
        leading = true;
        // Failures are retried at the next tick; the commands are idempotent.
        let _ = node.mark_failed_osds_down().await;
        let _ = node.fail_silent_mdss().await;
        if let Some(ids) = overdue_for_out(&node) {
            tracing::info!(?ids, "marking osds out after their down interval");
            let _ = node.propose_own(Command::OsdOut { ids }).await;
        }
    }
}

/// Down OSDs still in whose down interval has passed.
fn overdue_for_out(node: &MonNode) -> Option<Vec<u32>> {
    let now = cairn_common::now_ms();
    let interval = node.settings.osd_out_interval_ms;
    let ids: Vec<u32> = node.shared.read(|a| {
        a.state
            .maps
            .osdmap
            .osds
            .iter()
            .filter(|(_, o)| {
                !o.up && o.in_cluster && o.down_since_ms > 0 && now >= o.down_since_ms + interval
            })
            .map(|(id, _)| *id)
            .collect()
    });
    (!ids.is_empty()).then_some(ids)
}
