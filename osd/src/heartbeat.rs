//! Heartbeats between OSDs and beacons to the mons. Every `osd.heartbeat_interval_ms` this
//! OSD pings every other up OSD; a peer whose port refuses the connection (its process is
//! gone) or that stayed silent for `osd.heartbeat_grace_ms` is reported in the next beacon,
//! sent at once when the set of failures grows, `osd.beacon_after_pg_change_ms` after a PG's
//! shown state changes, and every `osd.beacon_interval_ms` anyway.
//! The mons decide (see `cairn-mon`'s `osd_liveness`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{watch, Notify};

use cairn_common::placement::PgId;
use cairn_common::proto::{
    HeartbeatRequest, OsdBeaconRequest, PeerFailure, PgScrubStamps, PoolUsage,
};

use crate::node::OsdNode;

/// What this OSD knows of one peer's liveness.
struct PeerHealth {
    /// The peer's boot epoch: a restarted peer starts with a clean slate.
    up_from: u64,
    last_ok: Instant,
    refused: bool,
}

#[derive(Default)]
pub struct Heartbeats {
    peers: std::sync::Mutex<HashMap<u32, PeerHealth>>,
    /// Wakes the beacon loop when a new failure appears.
    pub failure_seen: Notify,
}

/// Whether a failed call means nothing listens on the peer's port any more.
fn is_refused(status: &tonic::Status) -> bool {
    let text = format!("{status:?}").to_ascii_lowercase();
    text.contains("connection refused") || text.contains("connectionrefused")
}

impl Heartbeats {
    /// Current failures: peers refused or silent beyond the grace.
    pub fn failures(&self, grace: Duration) -> Vec<PeerFailure> {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .filter_map(|(id, h)| {
                let silent = now.duration_since(h.last_ok);
                (h.refused || silent >= grace).then_some(PeerFailure {
                    osd: *id,
                    refused: h.refused,
                    silent_ms: silent.as_millis() as u64,
                })
            })
            .collect()
    }

    /// Keeps one entry per up peer, resetting those that restarted.
    fn track(&self, up: &BTreeMap<u32, u64>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.retain(|id, h| up.get(id) == Some(&h.up_from));
        for (id, up_from) in up {
            peers.entry(*id).or_insert_with(|| PeerHealth {
                up_from: *up_from,
                last_ok: Instant::now(),
                refused: false,
            });
        }
    }

    fn record(&self, id: u32, result: Result<(), bool>) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = peers.get_mut(&id) {
            match result {
                Ok(()) => {
                    h.last_ok = Instant::now();
                    h.refused = false;
                }
                Err(refused) => h.refused = refused,
            }
        }
    }
}

/// Pings every up peer each interval until `stop`.
pub async fn run_heartbeats(
    node: Arc<OsdNode>,
    hb: Arc<Heartbeats>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(node.settings.heartbeat_interval_ms);
    let grace = Duration::from_millis(node.settings.heartbeat_grace_ms);
    // A fixed period: a round whose pings wait out their timeout (a hung peer) does not
    // stretch the next one, nor the time until that peer's silence is reported.
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let maps = node.maps();
        let up: BTreeMap<u32, u64> = maps
            .osdmap
            .osds
            .iter()
            .filter(|(id, o)| o.up && **id != node.id)
            .map(|(id, o)| (*id, o.up_from))
            .collect();
        hb.track(&up);
        let before = hb.failures(grace).len();
        let pings = up.keys().map(|id| ping(&node, &hb, *id, interval));
        futures::future::join_all(pings).await;
        if hb.failures(grace).len() > before {
            hb.failure_seen.notify_one();
        }
    }
}

async fn ping(node: &OsdNode, hb: &Heartbeats, id: u32, timeout: Duration) {
    let Some(mut client) = node.peer(id) else {
        return;
    };
    let result = match node
        .peer_request(HeartbeatRequest {
            from: node.id,
            osdmap_epoch: node.maps().osdmap.epoch,
        })
        .await
    {
        Ok(mut req) => {
            req.set_timeout(timeout);
            client
                .heartbeat(req)
                .await
                .map(|_| ())
                .map_err(|s| is_refused(&s))
        }
        // No ticket: the mons are unreachable, which says nothing about the peer.
        Err(_) => return,
    };
    hb.record(id, result);
}

/// Takes the stamps of scrubs done under an earlier primary into this OSD's records, so its
/// schedule counts from them and its reports carry them.
fn adopt_scrub_stamps(node: &OsdNode, stamps: &[PgScrubStamps]) {
    for s in stamps {
        let pg = PgId {
            pool: s.pool,
            seed: s.pg,
        };
        node.pg_records.update(pg, |r| {
            r.last_scrub_ms = r.last_scrub_ms.max(s.last_scrub_ms);
            r.last_deep_scrub_ms = r.last_deep_scrub_ms.max(s.last_deep_scrub_ms);
        });
    }
}

/// What this OSD's PG collections hold, summed per pool.
fn pool_usage(store: &crate::ObjectStore) -> Vec<PoolUsage> {
    let mut pools: BTreeMap<u32, PoolUsage> = BTreeMap::new();
    for (coll, stats) in store.collection_stats() {
        let Some(pool) = crate::cleanup::pool_of_collection(&coll) else {
            continue;
        };
        let p = pools.entry(pool).or_insert_with(|| PoolUsage {
            pool,
            ..PoolUsage::default()
        });
        p.objects += stats.objects;
        p.bytes += stats.bytes;
        p.allocated_bytes += stats.allocated_bytes;
    }
    pools.into_values().collect()
}

/// Sends beacons until `stop`: at every interval, at once when a failure appears, and shortly
/// after a PG's state changes (PGs that change together go in one beacon; the delay bounds how
/// often PG reports go to the mons).
pub async fn run_beacons(node: Arc<OsdNode>, hb: Arc<Heartbeats>, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(node.settings.beacon_interval_ms);
    let after_pg_change = Duration::from_millis(node.settings.beacon_after_pg_change_ms);
    let grace = Duration::from_millis(node.settings.heartbeat_grace_ms);
    loop {
        // This beacon reports every change made so far: a wake-up stored for one is spent.
        let _ = node.pg_records.state_changed.notified().now_or_never();
        let space = node.store.statfs();
        let io = node.io.totals();
        let req = OsdBeaconRequest {
            osd: node.id,
            failures: hb.failures(grace),
            going_down: false,
            used_bytes: space.used,
            total_bytes: space.total,
            reads: io.reads,
            writes: io.writes,
            read_bytes: io.read_bytes,
            written_bytes: io.written_bytes,
            recovered_objects: io.recovered_objects,
            recovered_bytes: io.recovered_bytes,
            pgs: node.pg_records.reports(node.id, &node.maps().osdmap),
            pool_usage: pool_usage(&node.store),
        };
        match node.monc.osd_beacon(req).await {
            Ok(reply) => adopt_scrub_stamps(&node, &reply.scrub_stamps),
            Err(e) => tracing::warn!(error = %e, "beacon not delivered"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = hb.failure_seen.notified() => {}
            _ = node.pg_records.state_changed.notified(), if after_pg_change < interval => {
                tokio::select! {
                    _ = tokio::time::sleep(after_pg_change) => {}
                    _ = hb.failure_seen.notified() => {}
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
    }
}
