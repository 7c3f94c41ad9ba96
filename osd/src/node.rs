//! One running OSD: its store, its copy of the cluster maps, its PGs and its connections to
//! peer OSDs. The op paths (`primary`, `replica`, `activate`) and the services work on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;

use cairn_client::MonClient;
use cairn_common::config::OsdSettings;
use cairn_common::maps::{ClusterMaps, OsdMap};
use cairn_common::placement::PgId;
use cairn_common::proto::osd_client::OsdClient;
use cairn_common::status::IoTotals;

use crate::error::StoreError;
use crate::pg::Pg;
use crate::pg_stats::PgRecords;
use crate::ObjectStore;

/// How long an op waits for a map at least as new as its sender's before the OSD asks the
/// mons directly.
const MAP_WAIT: Duration = Duration::from_secs(2);
/// Past OSD maps kept in memory for peering.
const OSDMAP_HISTORY_KEPT: usize = 2000;

/// Client ops served as primary, for the beacons' I/O totals.
#[derive(Default)]
pub struct IoCounters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    /// Object copies (shards) brought in line as primary, and their data bytes.
    pub recovered_objects: AtomicU64,
    pub recovered_bytes: AtomicU64,
}

impl IoCounters {
    pub fn totals(&self) -> IoTotals {
        IoTotals {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            recovered_objects: self.recovered_objects.load(Ordering::Relaxed),
            recovered_bytes: self.recovered_bytes.load(Ordering::Relaxed),
        }
    }
}

pub struct OsdNode {
    pub id: u32,
    pub io: IoCounters,
    pub store: Arc<ObjectStore>,
    pub monc: Arc<MonClient>,
    pub settings: OsdSettings,
    /// The PGs this OSD is primary of, for the beacons.
    pub pg_records: PgRecords,
    /// Paces recovery in the background (`osd.recovery_max_bytes_per_sec`).
    pub recovery_throttle: crate::recovery::Throttle,
    maps_tx: watch::Sender<Arc<ClusterMaps>>,
    pgs: Mutex<HashMap<(PgId, i32), Arc<Pg>>>,
    /// Past OSD maps for peering: each map installed here, and ranges fetched from the mons.
    history: Mutex<BTreeMap<u64, Arc<OsdMap>>>,
    peers: Mutex<HashMap<String, Channel>>,
}

impl OsdNode {
    pub fn new(
        id: u32,
        store: Arc<ObjectStore>,
        monc: Arc<MonClient>,
        settings: OsdSettings,
        maps: ClusterMaps,
    ) -> OsdNode {
        OsdNode {
            id,
            io: IoCounters::default(),
            store,
            monc,
            recovery_throttle: crate::recovery::Throttle::new(
                settings.recovery_max_bytes_per_sec,
                settings.recovery_idle_max_bytes_per_sec,
            ),
            settings,
            pg_records: PgRecords::default(),
            maps_tx: watch::channel(Arc::new(maps)).0,
            pgs: Mutex::new(HashMap::new()),
            history: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(HashMap::new()),
        }
    }

    pub fn maps(&self) -> Arc<ClusterMaps> {
        self.maps_tx.borrow().clone()
    }

    pub fn subscribe_maps(&self) -> watch::Receiver<Arc<ClusterMaps>> {
        self.maps_tx.subscribe()
    }

    /// Installs newer maps; older or equal ones (from a lagging mon) are ignored. Whoever
    /// installs them, the daemon's map watcher starts the work a change calls for.
    pub fn publish_maps(&self, maps: ClusterMaps) {
        self.remember_osdmaps([maps.osdmap.clone()]);
        self.maps_tx.send_if_modified(|cur| {
            if maps.epoch_sum() > cur.epoch_sum() && maps.osdmap.epoch >= cur.osdmap.epoch {
                *cur = Arc::new(maps);
                true
            } else {
                false
            }
        });
    }

    /// Maps with an OSD map at least `epoch`: waits for the subscription, then asks the mons.
    pub async fn maps_at_least(&self, epoch: u64) -> Arc<ClusterMaps> {
        let mut rx = self.subscribe_maps();
        let newer = tokio::time::timeout(MAP_WAIT, async {
            rx.wait_for(|m| m.osdmap.epoch >= epoch)
                .await
                .map(|m| m.clone())
        })
        .await;
        if let Ok(Ok(maps)) = newer {
            return maps;
        }
        match self.monc.maps().await {
            Ok(maps) => {
                self.publish_maps(maps);
            }
            Err(e) => tracing::warn!(error = %e, "cannot fetch maps from the mons"),
        }
        self.maps()
    }

    fn remember_osdmaps(&self, maps: impl IntoIterator<Item = OsdMap>) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for map in maps {
            history.entry(map.epoch).or_insert_with(|| Arc::new(map));
        }
        while history.len() > OSDMAP_HISTORY_KEPT {
            history.pop_first();
        }
    }

    fn remembered_osdmaps(&self, from: u64, to: u64) -> Vec<Arc<OsdMap>> {
        if from > to {
            return Vec::new();
        }
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.range(from..=to).map(|(_, m)| m.clone()).collect()
    }

    /// The OSD maps of epochs `from..=to`, fetching from the mons those not seen here. Epochs
    /// the mons no longer keep are missing from the answer (logged).
    pub async fn osdmaps(&self, from: u64, to: u64) -> Result<Vec<Arc<OsdMap>>, String> {
        let mut cursor = from;
        while let Some(missing) = self.first_missing_osdmap(cursor, to) {
            let fetched = self
                .monc
                .osdmap_history(missing, to)
                .await
                .map_err(|e| format!("cannot read past osd maps from the mons: {e}"))?;
            let (Some(first), Some(last)) = (fetched.first(), fetched.last()) else {
                tracing::warn!(
                    from = missing,
                    to,
                    "the mons no longer keep these osd maps; peering goes on without them"
                );
                break;
            };
            if first.epoch > missing {
                tracing::warn!(
                    from = missing,
                    to = first.epoch - 1,
                    "the mons no longer keep these osd maps; peering goes on without them"
                );
            }
            cursor = last.epoch + 1;
            self.remember_osdmaps(fetched);
        }
        Ok(self.remembered_osdmaps(from, to))
    }

    /// The first epoch of `from..=to` whose map is not here.
    fn first_missing_osdmap(&self, from: u64, to: u64) -> Option<u64> {
        let mut expected = from;
        for map in self.remembered_osdmaps(from, to) {
            if map.epoch != expected {
                return Some(expected);
            }
            expected += 1;
        }
        (expected <= to).then_some(expected)
    }

    /// The PG member this OSD holds for `(pg, shard)`, created in memory on first use.
    pub fn pg(&self, pg: PgId, shard: i32) -> Arc<Pg> {
        let mut pgs = self.pgs.lock().unwrap_or_else(|p| p.into_inner());
        pgs.entry((pg, shard))
            .or_insert_with(|| Pg::new(pg, shard))
            .clone()
    }

    /// The PG member a request names by pool, PG seed and shard.
    pub fn pg_of(&self, pool: u32, seed: u32, shard: i32) -> Arc<Pg> {
        self.pg(PgId { pool, seed }, shard)
    }

    /// Drops the in-memory state of a PG member whose collection is gone.
    pub fn forget_pg_collection(&self, coll: &str) {
        let mut pgs = self.pgs.lock().unwrap_or_else(|p| p.into_inner());
        pgs.retain(|_, pg| pg.coll != coll);
    }

    /// Runs blocking store work off the async threads.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&ObjectStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Invalid(format!("store task failed: {e}")))?
    }

    /// A client for the OSD `osd` as the current map places it.
    pub fn peer(&self, osd: u32) -> Option<OsdClient<Channel>> {
        let addr = self.maps().osdmap.osds.get(&osd)?.addr.clone();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match peers.get(&addr) {
            Some(c) => c.clone(),
            None => {
                let c = cairn_common::channel::endpoint(
                    &addr,
                    Duration::from_millis(self.settings.heartbeat_interval_ms),
                )
                .ok()?
                .connect_lazy();
                peers.insert(addr, c.clone());
                c
            }
        };
        Some(
            OsdClient::new(channel)
                .max_decoding_message_size(self.settings.message_bytes_max)
                .max_encoding_message_size(self.settings.message_bytes_max),
        )
    }

    /// A request to a peer OSD, with this OSD's ticket and the peer timeout.
    pub async fn peer_request<T>(&self, body: T) -> Result<tonic::Request<T>, tonic::Status> {
        let bearer = self
            .monc
            .osd_bearer()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("no ticket: {e}")))?;
        let mut req = tonic::Request::new(body);
        req.set_timeout(Duration::from_millis(self.settings.peer_timeout_ms));
        if let Ok(v) = bearer.parse() {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}
