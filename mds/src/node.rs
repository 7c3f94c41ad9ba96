//! One MDS daemon's state and roles: it follows what the FSMap assigns to its instance —
//! nothing (standby), tailing a rank's journal (standby-replay), or holding the rank (replay
//! to the journal's end, then serve).
//!
//! While active it also holds the clients' session streams, through which it recalls the
//! writes clients hold back: a request that shows a file's size while other clients write
//! it waits until they have reported their writes (or `recall_timeout_ms` passes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, oneshot, watch, Mutex, Notify, Semaphore};
use tonic::Status;

use cairn_client::Rados;
use cairn_common::config::MdsSettings;
use cairn_common::fsmap::{FsId, MdsRole};
use cairn_common::fsops::{FsOp, FsReply, ROOT_INO, S_IFDIR};
use cairn_common::proto::MdsSessionEvent;

use crate::inode::Inode;
use crate::journal::Event;
use crate::rank::{Answer, Rank};
use crate::replay::Replayer;
use crate::sessions::Opens;

/// How much longer than a client's lease the MDS waits for it to stop trusting it (for the
/// heartbeat's way to the client).
const LEASE_MARGIN: Duration = Duration::from_millis(250);

/// A recall (`changed_elsewhere`: a notice of another client's change) of `ino`; its number
/// is given when it is sent.
fn session_event(ino: u64, changed_elsewhere: bool) -> MdsSessionEvent {
    MdsSessionEvent {
        recall: 0,
        ino,
        lease_ms: 0,
        changed_elsewhere,
    }
}

/// Where a session's events go: the stream the client holds open.
pub type SessionSender = mpsc::Sender<Result<MdsSessionEvent, Status>>;
/// Events queued per session before the MDS stops waiting for room (a stuck client).
pub const SESSION_EVENTS_QUEUED: usize = 64;
/// How often a session stream carries a heartbeat (recall 0), sent only while this daemon
/// holds its lease: a client uses its capabilities only while it hears them, and drops a
/// stream silent for a few seconds to look for the active again. Five per client lease
/// (500 ms by default): on a loaded machine a heartbeat can be hundreds of milliseconds
/// late, and each lapse sends the client's stats to the MDS and its writes through.
const SESSION_HEARTBEAT: Duration = Duration::from_millis(100);

struct Stream {
    /// Tells this stream from the client's later ones (a reconnect replaces the stream).
    generation: u64,
    events: SessionSender,
    /// Ends this stream (a client that did not answer a recall).
    stop: Arc<Notify>,
}

/// How often a standby-replay re-reads the journal head (to drop what was written back).
const HEAD_POLL: Duration = Duration::from_secs(1);

pub struct MdsNode {
    pub name: String,
    pub addr: String,
    pub rados: Arc<Rados>,
    pub settings: MdsSettings,
    /// The rank while this daemon serves it.
    rank: Mutex<Option<Rank>>,
    serving: AtomicBool,
    admitted: Semaphore,
    /// Set when the rank can no longer be served (a failed journal write): the daemon exits.
    broken: watch::Sender<Option<String>>,
    /// When the mons last answered a beacon, and how long that keeps this daemon sure it
    /// still holds its role (half the mons' grace): an active cut off from the mons stops
    /// answering before they can have handed its rank to another.
    beacon_acked: std::sync::Mutex<Instant>,
    lease: Duration,
    streams: std::sync::Mutex<HashMap<String, Stream>>,
    next_stream: AtomicU64,
    /// Bumped to end every session stream (the rank is no longer served here).
    closing: watch::Sender<u64>,
    /// Recalls sent and not yet answered, by number: the client asked and the waiter.
    recalls: std::sync::Mutex<HashMap<u64, (String, oneshot::Sender<()>)>>,
    next_recall: AtomicU64,
    /// The OSD map epoch clients must hold before their next data op (sent with every
    /// reply): at least the map this daemon took the rank in, raised by each client it
    /// fences. OSDs refuse a fenced client's ops only once they have the map that fences it.
    osdmap_barrier: AtomicU64,
}

/// How long a recall waits for a client that has the file open for writing but whose
/// session stream is down to reconnect: a live client drops a silent stream after 1.5 s and
/// opens a new one at once. Past it the client is fenced.
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

/// The instance (what the OSD blocklist names) of a session `entity|instance`.
fn instance_of(client: &str) -> &str {
    client
        .split_once('|')
        .map_or(client, |(_, instance)| instance)
}

impl MdsNode {
    pub fn new(
        name: &str,
        addr: String,
        rados: Arc<Rados>,
        settings: MdsSettings,
        lease: Duration,
    ) -> MdsNode {
        MdsNode {
            name: name.to_string(),
            addr,
            rados,
            admitted: Semaphore::new(settings.requests_in_flight_max),
            settings,
            rank: Mutex::new(None),
            serving: AtomicBool::new(false),
            broken: watch::channel(None).0,
            beacon_acked: std::sync::Mutex::new(Instant::now()),
            lease,
            streams: std::sync::Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            closing: watch::channel(0).0,
            recalls: std::sync::Mutex::new(HashMap::new()),
            next_recall: AtomicU64::new(1),
            osdmap_barrier: AtomicU64::new(0),
        }
    }

    pub fn osdmap_barrier(&self) -> u64 {
        self.osdmap_barrier.load(Ordering::SeqCst)
    }

    /// Refuses a client this cluster has fenced: the MDS evicted it (its files went to
    /// others), and what it still holds must not come back.
    fn refuse_fenced(&self, client: &str) -> Result<(), Status> {
        let instance = instance_of(client);
        if self
            .rados
            .maps()
            .osdmap
            .is_blocklisted(instance, cairn_common::now_ms())
        {
            return Err(Status::failed_precondition(format!(
                "{instance} was evicted and is blocklisted: unmount and mount again"
            )));
        }
        Ok(())
    }

    /// The mons answered a beacon sent at `sent`: the lease runs from the sending, since
    /// the mons' grace runs from when they received it.
    pub fn beacon_acked(&self, sent: Instant) {
        let mut acked = self.beacon_acked.lock().unwrap_or_else(|e| e.into_inner());
        *acked = (*acked).max(sent);
    }

    /// How long a client may trust a heartbeat: a quarter of the mons' grace. Heartbeats go
    /// out only within this daemon's lease (half the grace from a beacon's sending); no
    /// successor serves before the grace: a capability ends a quarter of the grace, less
    /// delivery delays, before anyone else can serve the file.
    fn client_lease(&self) -> Duration {
        self.lease / 2
    }

    /// Whether the mons answered a beacon recently enough that no other daemon can hold
    /// this one's rank yet.
    fn leased(&self) -> bool {
        self.beacon_acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            < self.lease
    }

    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn fail(&self, why: String) {
        tracing::error!(reason = %why, "the rank cannot be served any more");
        self.serving.store(false, Ordering::Relaxed);
        self.close_streams();
        let _ = self.broken.send(Some(why));
    }

    /// Ends every session stream: their clients look for the active again.
    fn close_streams(&self) {
        self.closing.send_modify(|g| *g += 1);
    }

    /// The role the FSMap gives this daemon's instance (`None`: not in the map).
    fn role(&self) -> Option<MdsRole> {
        let maps = self.rados.maps();
        maps.fsmap
            .daemons
            .get(&self.name)
            .filter(|d| d.instance == self.rados.instance())
            .map(|d| d.role.clone())
    }

    /// Answers one client request.
    pub async fn handle(&self, client: &str, tid: u64, op: FsOp) -> Result<FsReply, Status> {
        // Before admission: requests holding permits may be waiting for this very answer.
        if let FsOp::Recalled { recall } = op {
            self.recall_answered(client, recall);
            return Ok(FsReply::Done);
        }
        self.refuse_fenced(client)?;
        let _permit = self
            .admitted
            .try_acquire()
            .map_err(|_| Status::resource_exhausted("too many requests waiting; retry later"))?;
        let started = Instant::now();
        let mut after_recall: Option<Vec<u64>> = None;
        let reply = loop {
            match self
                .answer(client, tid, op.clone(), after_recall.as_deref())
                .await?
            {
                Answer::Reply(reply) => break reply,
                Answer::Recall { recalls, revoked } => {
                    self.recall(&recalls, &[]).await?;
                    after_recall = Some(revoked);
                }
            }
        };
        if !matches!(reply, FsReply::Error { .. }) {
            if let FsOp::Written { recall, .. } = op {
                self.recall_answered(client, recall);
            }
            self.tell_of_change(client, &op).await?;
        }
        metrics::histogram!("cairn_mds_request_seconds", "op" => op.name())
            .record(started.elapsed().as_secs_f64());
        Ok(reply)
    }

    /// One pass of a request through the rank.
    async fn answer(
        &self,
        client: &str,
        tid: u64,
        op: FsOp,
        after_recall: Option<&[u64]>,
    ) -> Result<Answer, Status> {
        let mut rank = self.rank.lock().await;
        let Some(r) = rank.as_mut().filter(|_| self.serving()) else {
            return Err(Status::unavailable(format!(
                "mds.{} is not active",
                self.name
            )));
        };
        if !self.leased() {
            return Err(Status::unavailable(format!(
                "mds.{} has not heard from the mons for {} ms: it may no longer hold the rank",
                self.name,
                self.lease.as_millis()
            )));
        }
        match r.handle(client, tid, op, after_recall).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Status::unavailable(format!("{e:#}"))),
            Err(e) => {
                *rank = None;
                self.fail(format!("{e:#}"));
                Err(Status::unavailable(format!(
                    "mds.{} stopped serving: {e:#}",
                    self.name
                )))
            }
        }
    }

    /// Before `client` hears that its change of a file's data or size is done, every other
    /// client with the file open drops what it cached of it: a read there after this reply
    /// sees the change (close-to-open, also through handles opened before).
    async fn tell_of_change(&self, client: &str, op: &FsOp) -> Result<(), Status> {
        // Most requests change no file data: no need to take the rank's lock again.
        let Some(ino) = Rank::data_changed_by(op) else {
            return Ok(());
        };
        let changed = match self.rank.lock().await.as_ref() {
            Some(r) => r.told_of_change(client, ino),
            None => return Ok(()),
        };
        if changed.is_empty() {
            return Ok(());
        }
        self.recall(&[], &changed).await
    }

    /// Asks each client of `recalls` to report its writes to the file and drop its
    /// capability, and each client of `changed` to drop what it cached of the file (another
    /// client changed it; there is nothing to report, so answering never waits on a request
    /// of theirs). Waits until they have, or until `recall_timeout_ms`. A client that does
    /// not answer has its stream ended (no more heartbeats), and the request waits out the
    /// lease it may still trust a capability or its cache for. One recalled that has the
    /// file open for writing may also hold writes back, which would land behind the writes
    /// of whoever uses the file next: it is fenced (blocklisted and evicted) first. An error
    /// means it could not be fenced: the request must not go on.
    async fn recall(
        &self,
        recalls: &[(u64, String)],
        changed: &[(u64, String)],
    ) -> Result<(), Status> {
        let writes: Vec<bool> = {
            let rank = self.rank.lock().await;
            recalls
                .iter()
                .map(|(ino, client)| {
                    rank.as_ref()
                        .is_some_and(|r| r.sessions.writes(*ino, client))
                })
                .collect()
        };
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_millis(self.settings.recall_timeout_ms);
        let recalled = futures::future::join_all(recalls.iter().zip(&writes).map(
            |((ino, client), writes)| {
                // A client without a stream dropped its capabilities; one that writes gets a
                // moment to come back before it is fenced.
                let reconnect_by = if *writes { now + RECONNECT_WAIT } else { now };
                let event = session_event(*ino, false);
                self.recall_one(event, client, reconnect_by.min(deadline), deadline)
            },
        ));
        let told = futures::future::join_all(
            changed
                .iter()
                .map(|(ino, client)| self.tell_one(*ino, client, deadline)),
        );
        let (recalled, told) = tokio::join!(recalled, told);
        let mut unanswered = told.contains(&false);
        let mut to_fence = std::collections::BTreeSet::new();
        for (((_, client), writes), answered) in recalls.iter().zip(writes).zip(recalled) {
            if !answered {
                unanswered = true;
                if writes {
                    to_fence.insert(client.as_str());
                }
            }
        }
        for client in to_fence {
            self.fence_client(client, "it did not answer a recall of a file it writes")
                .await?;
        }
        if unanswered {
            tokio::time::sleep(self.client_lease() + LEASE_MARGIN).await;
        }
        Ok(())
    }

    /// Tells `client` that another client changed `ino`; whether it answered by `deadline`.
    /// A client without a stream hears nothing, and stops trusting what it cached once its
    /// lease lapses: that is waited for instead.
    async fn tell_one(&self, ino: u64, client: &str, deadline: tokio::time::Instant) -> bool {
        let streamless_since = match self.rank.lock().await.as_ref() {
            Some(r) => r.sessions.streamless_since(client),
            None => None,
        };
        if let Some(since) = streamless_since {
            let lapsed = since + self.client_lease() + LEASE_MARGIN;
            tokio::time::sleep_until(tokio::time::Instant::from_std(lapsed)).await;
            return true;
        }
        let now = tokio::time::Instant::now();
        self.recall_one(session_event(ino, true), client, now, deadline)
            .await
    }

    /// Sends `client` the recall `event` (its number filled in here); whether it answered
    /// by `deadline`. Waits until `reconnect_by` for a client whose stream is down.
    async fn recall_one(
        &self,
        mut event: MdsSessionEvent,
        client: &str,
        reconnect_by: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> bool {
        let events = loop {
            if let Some(events) = self.stream_of(client) {
                break events;
            }
            if tokio::time::Instant::now() >= reconnect_by {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let recall = self.next_recall.fetch_add(1, Ordering::Relaxed);
        let (done, answered) = oneshot::channel();
        self.recalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(recall, (client.to_string(), done));
        event.recall = recall;
        let ino = event.ino;
        metrics::counter!("cairn_mds_recalls_total").increment(1);
        let ok = events.try_send(Ok(event)).is_ok()
            && matches!(
                tokio::time::timeout_at(deadline, answered).await,
                Ok(Ok(()))
            );
        self.recalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&recall);
        if !ok {
            tracing::warn!(
                client,
                ino,
                "a client did not answer a recall within recall_timeout_ms; ending its stream"
            );
            self.end_stream(client);
        }
        ok
    }

    /// Blocklists `client`'s instance in the OSD map, waits until this daemon holds that
    /// map (so it refuses the client too), raises the barrier every later reply carries,
    /// then evicts the session and ends its stream.
    async fn fence_client(&self, client: &str, why: &str) -> Result<(), Status> {
        let instance = instance_of(client);
        let fence = cairn_common::command::Command::BlocklistAdd {
            instance: instance.to_string(),
            expire_secs: self.settings.evicted_blocklist_secs,
            at_ms: 0,
        };
        let unavailable = |e: cairn_client::ClientError| {
            Status::unavailable(format!("cannot fence {instance}: {e}"))
        };
        let (epoch, _) = self
            .rados
            .monc()
            .command(fence)
            .await
            .map_err(unavailable)?;
        self.rados
            .wait_for_osdmap(epoch)
            .await
            .map_err(unavailable)?;
        self.osdmap_barrier.fetch_max(epoch, Ordering::SeqCst);
        if let Some(r) = self.rank.lock().await.as_mut() {
            r.evict(client);
        }
        self.end_stream(client);
        tracing::warn!(
            client,
            osdmap_epoch = epoch,
            reason = why,
            "client evicted and blocklisted"
        );
        metrics::counter!("cairn_mds_clients_fenced_total").increment(1);
        Ok(())
    }

    fn end_stream(&self, client: &str) {
        if let Some(s) = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
        {
            s.stop.notify_one();
        }
    }

    /// `client` answered recall `recall` (a client can answer only its own).
    fn recall_answered(&self, client: &str, recall: u64) {
        let mut recalls = self.recalls.lock().unwrap_or_else(|e| e.into_inner());
        if recalls
            .get(&recall)
            .is_some_and(|(asked, _)| asked == client)
        {
            if let Some((_, done)) = recalls.remove(&recall) {
                let _ = done.send(());
            }
        }
    }

    fn stream_of(&self, client: &str) -> Option<SessionSender> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
            .map(|s| s.events.clone())
    }

    /// A client opened its session stream, stating its open files. Until the stream
    /// breaks, the session lives and recalls reach the client through `events`.
    pub async fn open_session(
        self: &Arc<Self>,
        client: &str,
        files: Vec<(u64, Opens)>,
        events: SessionSender,
    ) -> Result<(), Status> {
        let full = || {
            Status::resource_exhausted(format!(
                "mds.{} serves at most {} sessions",
                self.name, self.settings.sessions_max
            ))
        };
        let has_room = |streams: &HashMap<String, Stream>| {
            streams.contains_key(client) || streams.len() < self.settings.sessions_max
        };
        self.refuse_fenced(client)?;
        // Checked before waiting for the rank, and again under it.
        if !has_room(&self.streams.lock().unwrap_or_else(|e| e.into_inner())) {
            return Err(full());
        }
        let mut rank = self.rank.lock().await;
        let Some(r) = rank.as_mut().filter(|_| self.serving() && self.leased()) else {
            return Err(Status::unavailable(format!(
                "mds.{} is not active",
                self.name
            )));
        };
        let generation = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            if !has_room(&streams) {
                return Err(full());
            }
            streams.insert(
                client.to_string(),
                Stream {
                    generation,
                    events: events.clone(),
                    stop: stop.clone(),
                },
            );
        }
        let revoked = r.connected(client, files);
        tokio::spawn(
            self.clone()
                .keep_stream(client.to_string(), generation, events, stop),
        );
        if !revoked.is_empty() {
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.recall(&revoked, &[]).await {
                    tracing::warn!(error = %e.message(), "a recall for a reconnecting client failed");
                }
            });
        }
        Ok(())
    }

    /// Watches one session stream: heartbeats while this daemon serves the rank under its
    /// lease; ends the stream (with an error, so the client looks for the active again) when
    /// it no longer does; notes when the client goes away.
    async fn keep_stream(
        self: Arc<Self>,
        client: String,
        generation: u64,
        events: SessionSender,
        stop: Arc<Notify>,
    ) {
        let mut closing = self.closing.subscribe();
        let mut beat = tokio::time::interval(SESSION_HEARTBEAT);
        let lease_ms = self.client_lease().as_millis() as u64;
        loop {
            tokio::select! {
                _ = events.closed() => break,
                _ = stop.notified() => {
                    let _ = events.try_send(Err(Status::unavailable(
                        "the session did not answer a recall in time",
                    )));
                    break;
                }
                _ = closing.changed() => {
                    let _ = events.try_send(Err(Status::unavailable(format!(
                        "mds.{} no longer serves the rank",
                        self.name
                    ))));
                    break;
                }
                _ = beat.tick() => {
                    if !(self.serving() && self.leased()) {
                        let _ = events.try_send(Err(Status::unavailable(format!(
                            "mds.{} has lost its lease on the rank",
                            self.name
                        ))));
                        break;
                    }
                    // A full queue already tells the client this stream lives.
                    let _ = events.try_send(Ok(MdsSessionEvent { lease_ms, ..session_event(0, false) }));
                }
            }
        }
        drop(events);
        self.session_closed(&client, generation).await;
    }

    /// A session stream ended; unless the client has opened a newer one, its session is
    /// disconnected (and evicted if it stays so). Under the rank's lock, like the opening
    /// of a stream, so a late close cannot disconnect a newer stream's session.
    async fn session_closed(&self, client: &str, generation: u64) {
        let mut rank = self.rank.lock().await;
        {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            match streams.get(client) {
                Some(s) if s.generation == generation => {
                    streams.remove(client);
                }
                _ => return,
            }
        }
        if let Some(r) = rank.as_mut() {
            tracing::info!(client, "session stream closed");
            r.sessions.disconnected(client);
        }
    }

    /// Follows the role the FSMap assigns until `stop`; an error means this instance must
    /// end (fenced, or its rank broken).
    pub async fn follow_roles(&self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut known = false;
        let mut replayer: Option<(FsId, Replayer)> = None;
        let mut head_polled = Instant::now();
        let poll = Duration::from_millis(self.settings.replay_poll_ms.max(10));
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            if let Some(why) = self.broken.borrow().clone() {
                bail!("{why}");
            }
            match self.role() {
                None if known => bail!(
                    "this instance is no longer in the FSMap (its rank was given away and it is fenced): exiting so a fresh instance can start"
                ),
                None => {}
                Some(role) => {
                    known = true;
                    match role {
                        MdsRole::Standby => {
                            if self.serving() {
                                bail!("the rank was taken from this daemon");
                            }
                            replayer = None;
                        }
                        MdsRole::StandbyReplay { fs } => {
                            if self.serving() {
                                bail!("the rank was taken from this daemon");
                            }
                            let mut r = self.tail(fs, replayer.take()).await?;
                            if head_polled.elapsed() >= HEAD_POLL {
                                r.1.follow_head().await?;
                                head_polled = Instant::now();
                            }
                            replayer = Some(r);
                        }
                        MdsRole::Active { fs, .. } => {
                            if !self.serving() {
                                self.take_over(fs, replayer.take()).await?;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The metadata and default data pool of a filesystem.
    fn pools(&self, fs: FsId) -> anyhow::Result<(String, String)> {
        let maps = self.rados.maps();
        let f = maps
            .fsmap
            .filesystems
            .get(&fs)
            .with_context(|| format!("filesystem {fs} is not in the FSMap"))?;
        let data = f
            .data_pools
            .first()
            .with_context(|| format!("filesystem {} has no data pool", f.name))?;
        Ok((f.metadata_pool.clone(), data.clone()))
    }

    async fn replayer_for(
        &self,
        fs: FsId,
        have: Option<(FsId, Replayer)>,
    ) -> anyhow::Result<(FsId, Replayer)> {
        match have {
            Some((f, r)) if f == fs => Ok((f, r)),
            _ => {
                let (meta, _) = self.pools(fs)?;
                let r = Replayer::start(
                    self.rados.clone(),
                    &meta,
                    self.settings.journal_segment_bytes,
                    self.settings.cache_memory_bytes,
                )
                .await?;
                tracing::info!(fs, "replaying the journal");
                Ok((fs, r))
            }
        }
    }

    /// One step of standby-replay: apply what the active journaled since the last step.
    async fn tail(
        &self,
        fs: FsId,
        have: Option<(FsId, Replayer)>,
    ) -> anyhow::Result<(FsId, Replayer)> {
        let (fs, mut r) = self.replayer_for(fs, have).await?;
        if let Err(e) = r.catch_up().await {
            // A gap or a read failure: start over from the head next time.
            tracing::warn!(error = %e, "journal tail failed; replaying from the head again");
            return self.replayer_for(fs, None).await;
        }
        Ok((fs, r))
    }

    /// Becomes the rank: replays to the journal's end (the map that gave this daemon the rank
    /// also fenced its predecessor, and every read here carries that map's epoch, so nothing
    /// more can be appended behind this replay), then serves.
    async fn take_over(&self, fs: FsId, have: Option<(FsId, Replayer)>) -> anyhow::Result<()> {
        let started = Instant::now();
        let (_, mut r) = self.replayer_for(fs, have).await?;
        r.follow_head().await?;
        while r.catch_up().await? > 0 {}
        let (_, data_pool) = self.pools(fs)?;
        let replayed = r.finish();
        let purges = replayed.purges.clone();
        let seq = replayed.seq;
        let mut rank = Rank::new(
            self.rados.clone(),
            &data_pool,
            replayed,
            self.settings.clone(),
        );
        ensure_root(&mut rank).await?;
        for (ino, size) in purges {
            rank.spawn_purge(ino, 0, size);
        }
        // Clients a predecessor fenced are in the maps this daemon took the rank in.
        self.osdmap_barrier
            .fetch_max(self.rados.maps().osdmap.epoch, Ordering::SeqCst);
        *self.rank.lock().await = Some(rank);
        self.serving.store(true, Ordering::Relaxed);
        tracing::info!(
            fs,
            journal_seq = seq,
            took_ms = started.elapsed().as_millis() as u64,
            "active: serving"
        );
        Ok(())
    }

    /// Writes back dirty metadata every `writeback_interval_ms` (sooner when much is dirty)
    /// and expires silent sessions, until `stop`.
    pub async fn run_writeback(&self, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.settings.writeback_interval_ms.max(10));
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => return,
            }
            self.fence_expired_sessions().await;
            let mut rank = self.rank.lock().await;
            // Writing back without the lease could overwrite a successor's writes.
            let Some(r) = rank.as_mut().filter(|_| self.leased()) else {
                continue;
            };
            if last.elapsed() < interval && !r.writeback_due() {
                continue;
            }
            last = Instant::now();
            if let Err(e) = r.tend_sessions().await {
                // A failed journal append: this rank's journal end is unknown.
                *rank = None;
                self.fail(format!("{e:#}"));
                continue;
            }
            let status = r.status();
            metrics::gauge!("cairn_mds_sessions").set(status.sessions.len() as f64);
            metrics::gauge!("cairn_mds_journal_seq").set(r.seq as f64);
            metrics::gauge!("cairn_mds_journal_entries").set(status.journal_entries as f64);
            metrics::gauge!("cairn_mds_journal_bytes").set(status.journal_bytes as f64);
            metrics::gauge!("cairn_mds_cache_entries").set(status.cache_entries as f64);
            if let Err(e) = r.write_back().await {
                // Nothing is lost (the journal still holds it); try again next time.
                tracing::warn!(error = %format!("{e:#}"), "write-back failed");
            }
        }
    }

    /// Fences and evicts the sessions disconnected past the session timeout: the client may
    /// be alive, cut off, with writes held back. One that cannot be fenced now (the mons
    /// unreachable) keeps its session until the next pass.
    async fn fence_expired_sessions(&self) {
        let expired = match self.rank.lock().await.as_ref() {
            Some(r) if self.leased() => r.expired_sessions(),
            _ => return,
        };
        for client in expired {
            if let Err(e) = self
                .fence_client(&client, "disconnected past the session timeout")
                .await
            {
                tracing::warn!(client, error = %e.message(), "cannot evict a silent session yet");
            }
        }
    }

    /// A clean stop of the active: write everything back so the next one replays little.
    pub async fn flush(&self) {
        let mut rank = self.rank.lock().await;
        if let Some(r) = rank.as_mut().filter(|_| self.leased()) {
            if let Err(e) = r.write_back().await {
                tracing::warn!(error = %format!("{e:#}"), "final write-back failed; the journal keeps it");
            }
        }
        self.serving.store(false, Ordering::Relaxed);
        self.close_streams();
    }
}

/// A new filesystem (or one whose first active died before its root was journaled) gets its
/// root directory.
async fn ensure_root(rank: &mut Rank) -> anyhow::Result<()> {
    if rank.cache.inode(&rank.rados, ROOT_INO).await?.is_some() {
        return Ok(());
    }
    let mut root = Inode::new(ROOT_INO, S_IFDIR | 0o755, 0, 0, crate::ops::now_ns());
    root.parent = ROOT_INO;
    rank.commit(vec![Event::Inode(root)], None).await?;
    rank.cache.new_dir(ROOT_INO);
    tracing::info!("created the root directory");
    Ok(())
}
