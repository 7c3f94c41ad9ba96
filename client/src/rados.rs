//! The object client (Cairn's librados): computes each object's PG and primary from the OSD
//! map and sends the op straight to that OSD. The map is kept current by a subscription;
//! an OSD that knows a newer map answers MISDIRECTED with it, an OSD that cannot serve yet
//! answers RETRY, and an unreachable OSD means the map is about to change: in every case the
//! client retries with the newest map it can get, within `client.op_timeout_ms`.
//!
//! Every op carries a request id (client instance, sequence), so a write retried after its
//! reply was lost is answered from the PG's log instead of applied twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

use cairn_common::config::{ClientSettings, Config};
use cairn_common::maps::{ClusterMaps, Pool};
use cairn_common::placement::{object_pg, pg_acting, primary, PgId};
use cairn_common::proto::object_op::Op;
use cairn_common::proto::osd_client::OsdClient;
use cairn_common::proto::*;

use crate::error::ClientError;
use crate::MonClient;

/// Longest pause between attempts of one op.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

struct Shared {
    monc: MonClient,
    maps: RwLock<Arc<ClusterMaps>>,
    settings: ClientSettings,
    channels: Mutex<HashMap<String, Channel>>,
    client_id: String,
    next_tid: AtomicU64,
}

impl Shared {
    fn maps(&self) -> Arc<ClusterMaps> {
        self.maps.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `maps` when newer than the ones held.
    fn update(&self, maps: ClusterMaps) {
        let mut cur = self.maps.write().unwrap_or_else(|p| p.into_inner());
        if maps.osdmap.epoch > cur.osdmap.epoch
            || (maps.osdmap.epoch == cur.osdmap.epoch && maps.epoch_sum() > cur.epoch_sum())
        {
            *cur = Arc::new(maps);
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = cairn_common::channel::endpoint(
            addr,
            Duration::from_millis(self.settings.connect_timeout_ms),
        )
        .map_err(|e| ClientError::Config(format!("osd: {e}")))?
        .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// A connection to a cluster's objects.
pub struct Rados {
    shared: Arc<Shared>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Rados {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// A page of a pool listing, and where the next one starts.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<String>,
    pub next: Option<ListCursor>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCursor {
    pub pg: u32,
    pub after: String,
}

/// What `stat` says of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    pub version: u64,
}

impl Rados {
    pub async fn connect(config: &Config) -> Result<Rados, ClientError> {
        Rados::with_monc(MonClient::from_config(config)?, config.client.clone()).await
    }

    pub async fn with_monc(
        monc: MonClient,
        settings: ClientSettings,
    ) -> Result<Rados, ClientError> {
        let maps = monc.maps().await?;
        let shared = Arc::new(Shared {
            client_id: format!("{}/{:016x}", monc.entity(), rand::random::<u64>()),
            monc,
            maps: RwLock::new(Arc::new(maps)),
            settings,
            channels: Mutex::new(HashMap::new()),
            next_tid: AtomicU64::new(1),
        });
        let follower = tokio::spawn(follow_maps(shared.clone()));
        Ok(Rados { shared, follower })
    }

    pub fn maps(&self) -> Arc<ClusterMaps> {
        self.shared.maps()
    }

    /// This connection's instance (`entity/nonce`): what an OSD blocklist entry names.
    pub fn instance(&self) -> &str {
        &self.shared.client_id
    }

    pub fn monc(&self) -> &MonClient {
        &self.shared.monc
    }

    /// Waits until this client holds OSD map `epoch` or newer (asking the mons), so the ops
    /// it sends next make OSDs check them against that map: one that fenced another client
    /// keeps that client's late writes from landing behind these.
    pub async fn wait_for_osdmap(&self, epoch: u64) -> Result<(), ClientError> {
        let s = &self.shared;
        let deadline = Instant::now() + Duration::from_millis(s.settings.op_timeout_ms);
        let mut backoff = Duration::from_millis(s.settings.retry_backoff_ms.max(1));
        while s.maps().osdmap.epoch < epoch {
            if Instant::now() >= deadline {
                return Err(ClientError::TimedOut(format!(
                    "the mons did not show OSD map epoch {epoch} within {} ms",
                    s.settings.op_timeout_ms
                )));
            }
            match s.monc.maps().await {
                Ok(maps) => s.update(maps),
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(e),
            }
            if s.maps().osdmap.epoch < epoch {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
        Ok(())
    }

    fn pool_name(&self, id: u32) -> Result<String, ClientError> {
        self.maps()
            .osdmap
            .pools
            .get(&id)
            .map(|p| p.name.clone())
            .ok_or_else(|| ClientError::NotFound(format!("pool {id} does not exist")))
    }

    fn pool(&self, name: &str) -> Result<(u32, Pool), ClientError> {
        self.maps()
            .osdmap
            .pool_by_name(name)
            .map(|(id, p)| (id, p.clone()))
            .ok_or_else(|| ClientError::NotFound(format!("pool '{name}' does not exist")))
    }

    /// Like `pool`, but a pool this client has not seen yet (just created) is looked up in
    /// the mons' current maps before it counts as missing.
    async fn current_pool(&self, name: &str) -> Result<(u32, Pool), ClientError> {
        match self.pool(name) {
            Err(ClientError::NotFound(_)) => {
                self.shared.update(self.shared.monc.maps().await?);
                self.pool(name)
            }
            found => found,
        }
    }

    pub async fn write_full(
        &self,
        pool: &str,
        object: &str,
        data: Vec<u8>,
    ) -> Result<u64, ClientError> {
        Ok(self.op(pool, object, Op::WriteFull(data)).await?.version)
    }

    pub async fn write(
        &self,
        pool: &str,
        object: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u64, ClientError> {
        Ok(self
            .op(
                pool,
                object,
                Op::Write(WriteAt {
                    offset,
                    data: data.into(),
                }),
            )
            .await?
            .version)
    }

    pub async fn append(
        &self,
        pool: &str,
        object: &str,
        data: Vec<u8>,
    ) -> Result<u64, ClientError> {
        Ok(self.op(pool, object, Op::Append(data)).await?.version)
    }

    pub async fn truncate(&self, pool: &str, object: &str, size: u64) -> Result<u64, ClientError> {
        Ok(self.op(pool, object, Op::Truncate(size)).await?.version)
    }

    /// Up to `length` bytes from `offset` (fewer at the end of the object).
    pub async fn read(
        &self,
        pool: &str,
        object: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .op(pool, object, Op::Read(ReadRange { offset, length }))
            .await?
            .data
            .into())
    }

    /// The whole object, read in pieces no larger than `chunk`.
    pub async fn read_all(
        &self,
        pool: &str,
        object: &str,
        chunk: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let size = self.stat(pool, object).await?.size;
        // The size comes from an OSD: reserve no more than one piece ahead of the data.
        let mut out = Vec::with_capacity(size.min(chunk) as usize);
        while (out.len() as u64) < size {
            let piece = self.read(pool, object, out.len() as u64, chunk).await?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    pub async fn stat(&self, pool: &str, object: &str) -> Result<ObjectStat, ClientError> {
        let r = self.op(pool, object, Op::Stat(Empty {})).await?;
        Ok(ObjectStat {
            size: r.size,
            version: r.version,
        })
    }

    pub async fn remove(&self, pool: &str, object: &str) -> Result<(), ClientError> {
        self.op(pool, object, Op::Remove(Empty {}))
            .await
            .map(|_| ())
    }

    pub async fn set_xattr(
        &self,
        pool: &str,
        object: &str,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), ClientError> {
        let kv = KeyValue {
            key: name.to_string(),
            value,
        };
        self.op(pool, object, Op::SetXattr(kv)).await.map(|_| ())
    }

    pub async fn rm_xattr(&self, pool: &str, object: &str, name: &str) -> Result<(), ClientError> {
        self.op(pool, object, Op::RmXattr(name.to_string()))
            .await
            .map(|_| ())
    }

    pub async fn get_xattrs(
        &self,
        pool: &str,
        object: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
        let r = self.op(pool, object, Op::GetXattrs(Empty {})).await?;
        Ok(r.xattrs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    pub async fn omap_set(
        &self,
        pool: &str,
        object: &str,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), ClientError> {
        let entries = entries
            .into_iter()
            .map(|(key, value)| BytesKeyValue { key, value })
            .collect();
        self.op(pool, object, Op::OmapSet(OmapEntries { entries }))
            .await
            .map(|_| ())
    }

    pub async fn omap_rm(
        &self,
        pool: &str,
        object: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.op(pool, object, Op::OmapRm(OmapKeys { keys }))
            .await
            .map(|_| ())
    }

    /// Omap entries after `after` (from the start when empty), at most `max`.
    pub async fn omap_get(
        &self,
        pool: &str,
        object: &str,
        after: &[u8],
        max: u32,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let range = OmapRange {
            after: after.to_vec(),
            max,
        };
        let r = self.op(pool, object, Op::OmapGet(range)).await?;
        Ok(r.omap.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// Up to `max` object names of a pool, PG by PG, from `cursor` (the start when `None`).
    pub async fn list(
        &self,
        pool: &str,
        cursor: Option<ListCursor>,
        max: u32,
    ) -> Result<ListPage, ClientError> {
        let (_, p) = self.current_pool(pool).await?;
        let mut cursor = cursor.unwrap_or_default();
        let mut page = ListPage::default();
        while cursor.pg < p.pg_num && (page.objects.len() as u32) < max {
            let want = max - page.objects.len() as u32;
            let op = Op::List(ListRange {
                pg: cursor.pg,
                after: cursor.after.clone(),
                max: want,
            });
            let r = self.op_on(pool, "", Some(cursor.pg), op).await?;
            page.objects.extend(r.objects);
            cursor = if r.next.is_empty() {
                ListCursor {
                    pg: cursor.pg + 1,
                    after: String::new(),
                }
            } else {
                ListCursor {
                    pg: cursor.pg,
                    after: r.next,
                }
            };
        }
        page.next = (cursor.pg < p.pg_num).then_some(cursor);
        Ok(page)
    }

    /// Scrubs one PG on its primary (with `deep`, reading every byte; with `repair`,
    /// rewriting every inconsistent copy) and answers what it found.
    pub async fn scrub(
        &self,
        pg: PgId,
        deep: bool,
        repair: bool,
    ) -> Result<ScrubResult, ClientError> {
        let pool = self.pool_name(pg.pool)?;
        let op = Op::Scrub(ScrubOp {
            pg: pg.seed,
            deep,
            repair,
        });
        let r = self.op_on(&pool, "", Some(pg.seed), op).await?;
        Ok(r.scrub.unwrap_or_default())
    }

    /// What the primary of `pg` knows of it (`cairn pg query`), as JSON.
    pub async fn pg_query(&self, pg: PgId) -> Result<serde_json::Value, ClientError> {
        let pool = self.pool_name(pg.pool)?;
        let op = Op::PgQuery(PgQueryOp { pg: pg.seed });
        let r = self.op_on(&pool, "", Some(pg.seed), op).await?;
        serde_json::from_slice(&r.data)
            .map_err(|e| ClientError::Protocol(format!("the primary answered garbage: {e}")))
    }

    /// The PG an object maps to and its acting OSDs (`cairn pg map`).
    pub fn locate(&self, pool: &str, object: &str) -> Result<(PgId, Vec<u32>), ClientError> {
        let (id, p) = self.pool(pool)?;
        let maps = self.maps();
        let pg = object_pg(id, &p, object);
        Ok((pg, pg_acting(&maps.osdmap, &p, pg)))
    }

    async fn op(&self, pool: &str, object: &str, op: Op) -> Result<OpReply, ClientError> {
        self.op_on(pool, object, None, op).await
    }

    /// Sends one op to its PG's primary until it succeeds, fails definitively, or the
    /// bounds run out.
    async fn op_on(
        &self,
        pool: &str,
        object: &str,
        pg: Option<u32>,
        op: Op,
    ) -> Result<OpReply, ClientError> {
        let s = &self.shared;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(s.settings.op_timeout_ms);
        let reqid = format!(
            "{}:{}",
            s.client_id,
            s.next_tid.fetch_add(1, Ordering::Relaxed)
        );
        let mut backoff = Duration::from_millis(s.settings.retry_backoff_ms.max(1));
        let mut last = String::from("no attempt made");
        for attempt in 0..s.settings.attempts_max {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match self.attempt(pool, object, pg, &op, &reqid, remaining).await {
                Ok(reply) => {
                    metrics::histogram!("cairn_client_rados_op_seconds", "op" => op.name())
                        .record(started.elapsed().as_secs_f64());
                    return Ok(reply);
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Now(why)) => last = why,
                Err(Attempt::Later(why)) => {
                    last = why;
                    tokio::time::sleep(
                        backoff.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // The subscription may be on a lagging or dead mon: ask the leader.
                    if attempt % 4 == 3 {
                        if let Ok(maps) = s.monc.maps().await {
                            s.update(maps);
                        }
                    }
                }
            }
        }
        Err(ClientError::TimedOut(format!(
            "{} on {pool}/{object} did not complete within {} ms: {last}",
            op.name(),
            s.settings.op_timeout_ms
        )))
    }

    async fn attempt(
        &self,
        pool: &str,
        object: &str,
        pg: Option<u32>,
        op: &Op,
        reqid: &str,
        remaining: Duration,
    ) -> Result<OpReply, Attempt> {
        let s = &self.shared;
        let (pool_id, p) = self.current_pool(pool).await.map_err(|e| {
            if e.is_retryable() {
                Attempt::Later(e.to_string())
            } else {
                Attempt::Fail(e)
            }
        })?;
        let maps = s.maps();
        let pg_id = match pg {
            Some(seed) => PgId {
                pool: pool_id,
                seed,
            },
            None => object_pg(pool_id, &p, object),
        };
        let acting = pg_acting(&maps.osdmap, &p, pg_id);
        let Some(target) = primary(&acting) else {
            return Err(Attempt::Later(format!("pg {pg_id} has no OSD up")));
        };
        let addr = maps
            .osdmap
            .osds
            .get(&target)
            .map(|o| o.addr.clone())
            .unwrap_or_default();
        let bearer = s.monc.osd_bearer().await.map_err(|e| {
            if e.is_retryable() {
                Attempt::Later(e.to_string())
            } else {
                Attempt::Fail(e)
            }
        })?;
        let mut client = OsdClient::new(s.channel(&addr).map_err(Attempt::Fail)?)
            .max_decoding_message_size(s.settings.reply_bytes_max)
            .max_encoding_message_size(s.settings.reply_bytes_max);
        let mut req = Request::new(OpRequest {
            osdmap_epoch: maps.osdmap.epoch,
            pool: pool_id,
            object: object.to_string(),
            op: Some(ObjectOp {
                op: Some(op.clone()),
            }),
            reqid: reqid.to_string(),
        });
        req.set_timeout(remaining);
        if let Ok(v) = bearer.parse() {
            req.metadata_mut().insert("authorization", v);
        }
        let reply = match client.op(req).await {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(self.rpc_failure(target, &status)),
        };
        self.outcome(target, reply)
    }

    fn rpc_failure(&self, osd: u32, status: &tonic::Status) -> Attempt {
        let msg = format!("osd.{osd}: {}", status.message());
        match status.code() {
            Code::Unauthenticated
                if status.message().contains("revoked") || status.message().contains("expired") =>
            {
                self.shared.monc.forget_ticket();
                Attempt::Now(msg)
            }
            Code::Unauthenticated => Attempt::Fail(ClientError::Auth(msg)),
            Code::PermissionDenied => Attempt::Fail(ClientError::Denied(msg)),
            Code::InvalidArgument | Code::OutOfRange => Attempt::Fail(ClientError::Invalid(msg)),
            _ => Attempt::Later(msg),
        }
    }

    fn outcome(&self, osd: u32, reply: OpReply) -> Result<OpReply, Attempt> {
        let msg = format!("osd.{osd}: {}", reply.message);
        match OpResult::try_from(reply.result) {
            Ok(OpResult::Ok) => Ok(reply),
            Ok(OpResult::Misdirected) => {
                match serde_json::from_slice::<ClusterMaps>(&reply.maps_json) {
                    Ok(maps) => self.shared.update(maps),
                    Err(_) => return Err(Attempt::Later(msg)),
                }
                Err(Attempt::Now(msg))
            }
            Ok(OpResult::Retry) => Err(Attempt::Later(msg)),
            Ok(OpResult::NotFound) => Err(Attempt::Fail(ClientError::NotFound(reply.message))),
            Ok(OpResult::Invalid) => Err(Attempt::Fail(ClientError::Invalid(reply.message))),
            Ok(OpResult::NoSpace) => Err(Attempt::Fail(ClientError::NoSpace(reply.message))),
            Ok(OpResult::IoError) => Err(Attempt::Fail(ClientError::Io(reply.message))),
            Ok(OpResult::Blocklisted) => {
                Err(Attempt::Fail(ClientError::Blocklisted(reply.message)))
            }
            Err(_) => Err(Attempt::Fail(ClientError::Protocol(format!(
                "unknown result {}",
                reply.result
            )))),
        }
    }
}

/// Why one attempt failed, and when to try again.
enum Attempt {
    /// At once (a newer map arrived, or a ticket to renew).
    Now(String),
    /// After a pause (the PG is busy or an OSD unreachable: the map should change).
    Later(String),
    Fail(ClientError),
}

/// Keeps the maps current from a mon subscription, moving on when a mon goes away.
async fn follow_maps(shared: Arc<Shared>) {
    loop {
        if let Ok(stream) = shared.monc.subscribe().await {
            let mut stream = Box::pin(stream);
            while let Some(Ok(maps)) = stream.next().await {
                shared.update(maps);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
