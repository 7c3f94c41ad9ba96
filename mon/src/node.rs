//! One monitor's request handling: runs a request here when this mon leads, forwards it to the
//! leader otherwise, and retries across leader changes until `commit_timeout_ms` runs out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::ticket_check::auth_status;
use cairn_common::auth::{self, AuthError};
use cairn_common::auth::{SecretKey, TicketAuthority};
use cairn_common::command::{Command, CommandOutcome, Forwarded, PeerFailureReport, Proposal};
use cairn_common::config::MonSettings;
use cairn_common::df::PoolUsage;
use cairn_common::health::{self, HealthInput};
use cairn_common::maps::{mon_node_id, validate_daemon_name, MonInfo, OsdMap};
use cairn_common::pg_states::{PgReport, PgReports, ScrubStamps};
use cairn_common::placement::PgId;
use cairn_common::proto::mon_client::MonClient as MonRpcClient;
use cairn_common::proto::mon_peer_client::MonPeerClient;
use cairn_common::proto::{ForwardRequest, PingRequest};
use cairn_common::status::{
    ClusterStatus, Epochs, IoRates, IoTotals, MdsSummary, MonStatus, OsdSummary, RaftSummary, Usage,
};

use crate::mds_liveness::{self, MdsBeacon, MdsLiveness};
use crate::network::peer_channel;
use crate::osd_liveness::OsdLiveness;
use crate::quorum::{Liveness, QuorumAge};
use crate::raft_types::{NodeId, Raft};
use crate::state_machine::SharedState;
use crate::ticket_check::MonCredentials;

/// An OSD's I/O rates count in status while its last beacon is this recent.
const IO_SAMPLE_FRESH: Duration = Duration::from_secs(5);

struct IoSample {
    at: Instant,
    totals: IoTotals,
    rates: IoRates,
}

/// How long to wait between attempts while there is no leader or it is changing.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why one attempt did not complete.
pub enum Attempt {
    /// Leadership moved or there is no quorum yet: try again until the deadline.
    Retry(String),
    /// A definite answer to return to the caller.
    Fail(Status),
}

pub struct MonNode {
    pub id: NodeId,
    pub name: String,
    pub fsid: uuid::Uuid,
    pub raft: Raft,
    pub shared: SharedState,
    pub settings: MonSettings,
    pub authority: Arc<TicketAuthority>,
    pub credentials: Arc<MonCredentials>,
    pub liveness: Arc<Liveness>,
    pub osd_liveness: OsdLiveness,
    pub mds_liveness: MdsLiveness,
    /// Each OSD's data device, and what its collections of each pool hold, as its last
    /// beacon reported them (on the leader).
    osd_usage: Mutex<BTreeMap<u32, OsdSpace>>,
    /// Each OSD's last I/O totals, when they arrived, and the rates since the sample before.
    osd_io: Mutex<BTreeMap<u32, IoSample>>,
    /// The PGs each OSD is the primary of, as its last beacon reported them.
    pg_reports: Mutex<BTreeMap<u32, Vec<(PgId, PgReport)>>>,
    /// Signs the second copy of each ticket, the one OSDs verify.
    pub osd_authority: TicketAuthority,
    /// Handed to OSDs (`ServiceKey`) so they can verify tickets.
    pub osd_service_key: SecretKey,
    /// The same pair for the MDSs.
    pub mds_authority: TicketAuthority,
    pub mds_service_key: SecretKey,
    quorum_age: QuorumAge,
    peers: Mutex<HashMap<String, MonPeerClient<Channel>>>,
}

/// One OSD's data device and what its collections of each pool hold (by pool id).
type OsdSpace = (Usage, BTreeMap<u32, PoolUsage>);

impl MonNode {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        name: String,
        fsid: uuid::Uuid,
        raft: Raft,
        shared: SharedState,
        settings: MonSettings,
        authority: Arc<TicketAuthority>,
        credentials: Arc<MonCredentials>,
        liveness: Arc<Liveness>,
        osd_service_key: SecretKey,
        mds_service_key: SecretKey,
    ) -> MonNode {
        MonNode {
            osd_liveness: OsdLiveness::default(),
            osd_usage: Mutex::new(BTreeMap::new()),
            osd_io: Mutex::new(BTreeMap::new()),
            pg_reports: Mutex::new(BTreeMap::new()),
            osd_authority: TicketAuthority::from_service_key(osd_service_key.clone()),
            osd_service_key,
            mds_liveness: MdsLiveness::default(),
            mds_authority: TicketAuthority::from_service_key(mds_service_key.clone()),
            mds_service_key,
            id,
            name,
            fsid,
            raft,
            shared,
            settings,
            authority,
            credentials,
            liveness,
            quorum_age: QuorumAge::default(),
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.commit_timeout_ms)
    }

    /// Runs `req` on the leader (here or by forwarding), retrying while leadership settles.
    pub async fn execute(&self, entity: &str, req: &Forwarded) -> Result<Value, Status> {
        let deadline = Instant::now() + self.commit_timeout();
        loop {
            let attempt = match self.raft.current_leader().await {
                Some(leader) if leader == self.id => self.execute_on_leader(entity, req).await,
                Some(leader) => self.forward(leader, entity, req).await,
                None => Err(Attempt::Retry("no leader elected".into())),
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(status)) => return Err(status),
                Err(Attempt::Retry(why)) if Instant::now() >= deadline => {
                    return Err(Status::unavailable(format!(
                        "no quorum: {why}; gave up after {} ms (are a majority of the mons up?)",
                        self.settings.commit_timeout_ms
                    )))
                }
                Err(Attempt::Retry(why)) => {
                    tracing::debug!(%why, "retrying request");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Runs a request here, as the leader; called for local and forwarded requests.
    pub async fn execute_on_leader_once(
        &self,
        entity: &str,
        req: &Forwarded,
    ) -> Result<Value, Status> {
        self.execute_on_leader(entity, req)
            .await
            .map_err(|a| match a {
                Attempt::Fail(s) => s,
                Attempt::Retry(why) => Status::unavailable(format!("retry: {why}")),
            })
    }

    async fn execute_on_leader(&self, entity: &str, req: &Forwarded) -> Result<Value, Attempt> {
        match req {
            Forwarded::Command(p) => {
                let outcome = self.propose(entity, p.clone()).await?;
                Ok(json!(outcome))
            }
            Forwarded::Authenticate {
                entity: who,
                challenge,
                client_nonce,
                proof,
            } => {
                self.read_barrier().await?;
                self.check_proof(who, challenge, client_nonce, proof)
                    .map_err(Attempt::Fail)
            }
            Forwarded::Status => {
                self.read_barrier().await?;
                Ok(json!(self.status().await))
            }
            Forwarded::PgList => {
                self.read_barrier().await?;
                let maps = self.shared.maps();
                let reports = self.current_pg_reports(&maps.osdmap);
                Ok(json!(cairn_common::pg_states::rows(&maps.osdmap, &reports)))
            }
            Forwarded::OsdMapHistory { from, to } => {
                self.read_barrier().await?;
                Ok(json!(self
                    .shared
                    .read(|a| a.state.osdmap_history(*from, *to))))
            }
            Forwarded::GetMaps => {
                self.read_barrier().await?;
                Ok(json!(*self.shared.maps()))
            }
            Forwarded::AuthGetKey { entity: target } => {
                self.read_barrier().await?;
                let found = self.shared.read(|a| a.state.key_and_caps(target));
                match found {
                    Some((key, caps)) => Ok(json!({ "entity": target, "key": key, "caps": caps })),
                    None => Err(Attempt::Fail(Status::not_found(format!(
                        "entity {target} does not exist"
                    )))),
                }
            }
            Forwarded::OsdBeacon {
                osd,
                failures,
                going_down,
                usage,
                io,
                pgs,
                pools,
            } => {
                self.osd_usage
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*osd, (*usage, pools.clone()));
                self.pg_reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(*osd, pgs.clone());
                self.record_io(*osd, *io);
                let epoch = self.osd_beacon(*osd, failures, *going_down).await?;
                // After the beacon is recorded: a slow commit must not delay its liveness.
                self.commit_scrub_stamps(pgs).await;
                Ok(json!({
                    "osdmap_epoch": epoch,
                    "scrub_stamps": self.newer_scrub_stamps(pgs),
                }))
            }
            Forwarded::MdsBeacon {
                name,
                addr,
                instance,
                serving,
                going_down,
            } => {
                let beacon = MdsBeacon {
                    name,
                    addr,
                    instance,
                    serving: *serving,
                    going_down: *going_down,
                };
                self.mds_beacon(&beacon).await
            }
            Forwarded::MonAdd { name, addr } => self.mon_add(name, addr).await,
            Forwarded::MonRm { name } => self.mon_rm(name).await,
        }
    }

    /// Proposes a command through Raft and waits for it to be applied. The state machine
    /// checks the command again when it applies it, and that outcome is the answer; the check
    /// here only spares the log commands bound to be refused. It reads local state, which may
    /// lag just after an election, so a refusal is confirmed after a read barrier.
    async fn propose(&self, entity: &str, mut p: Proposal) -> Result<CommandOutcome, Attempt> {
        if let Some(id) = &p.request {
            if let Some(out) = self.shared.read(|a| a.state.cached_outcome(id).cloned()) {
                return Ok(out);
            }
        }
        match &mut p.command {
            Command::AuthAdd { key, .. } => {
                key.get_or_insert_with(SecretKey::generate);
            }
            Command::FsRm { at_ms, .. } | Command::BlocklistAdd { at_ms, .. } => {
                *at_ms = cairn_common::now_ms()
            }
            _ => {}
        }
        if let Command::FsNew {
            metadata_pool,
            force: false,
            ..
        } = &p.command
        {
            if let Some(reason) = self.metadata_pool_in_use(metadata_pool) {
                return Ok(CommandOutcome::Refused { reason });
            }
        }
        if self.shared.read(|a| a.state.check(&p.command)).is_err() {
            self.read_barrier().await?;
            if let Err(reason) = self.shared.read(|a| a.state.check(&p.command)) {
                return Ok(CommandOutcome::Refused { reason });
            }
        }
        tracing::debug!(%entity, command = p.command.label(), "proposing");
        let write = tokio::time::timeout(self.commit_timeout(), self.raft.client_write(p)).await;
        match write {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(Attempt::Retry("leadership moved".into()))
            }
            Ok(Err(e)) => Err(Attempt::Retry(format!("raft: {e}"))),
            // Retrying is safe: requests carry ids and apply once.
            Err(_) => Err(Attempt::Retry("the write was not committed in time".into())),
        }
    }

    /// Records an OSD's beacon; marks down at once an OSD going down, or peers it reports
    /// refused or silent when the rules say so (see `osd_liveness`), rather than waiting for
    /// the next check. Answers with the OSD map epoch.
    async fn osd_beacon(
        &self,
        osd: u32,
        failures: &[PeerFailureReport],
        going_down: bool,
    ) -> Result<Value, Attempt> {
        self.osd_liveness.beacon(osd, failures, Instant::now());
        if going_down {
            self.mark_osds_down(vec![(osd, "shutting down".to_string())])
                .await?;
        } else if !failures.is_empty() {
            self.mark_failed_osds_down().await?;
        }
        Ok(json!(self.shared.read(|a| a.state.maps.osdmap.epoch)))
    }

    fn record_io(&self, osd: u32, totals: IoTotals) {
        let now = Instant::now();
        let mut samples = self.osd_io.lock().unwrap_or_else(|p| p.into_inner());
        let rates = samples.get(&osd).and_then(|old| {
            IoRates::between(
                &old.totals,
                &totals,
                now.duration_since(old.at).as_secs_f64(),
            )
        });
        samples.insert(
            osd,
            IoSample {
                at: now,
                totals,
                rates: rates.unwrap_or_default(),
            },
        );
    }

    /// Client I/O over the OSDs whose beacons are recent.
    fn io_rates(&self) -> IoRates {
        let samples = self.osd_io.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .values()
            .filter(|s| s.at.elapsed() < IO_SAMPLE_FRESH)
            .fold(IoRates::default(), |sum, s| sum.add(&s.rates))
    }

    /// Marks down the OSDs the liveness rules condemn now.
    pub async fn mark_failed_osds_down(&self) -> Result<(), Attempt> {
        let map = self.shared.read(|a| a.state.maps.osdmap.clone());
        let verdicts = self
            .osd_liveness
            .verdicts(&map, &self.settings, Instant::now());
        self.mark_osds_down(verdicts).await
    }

    async fn mark_osds_down(&self, verdicts: Vec<(u32, String)>) -> Result<(), Attempt> {
        if verdicts.is_empty() {
            return Ok(());
        }
        for (osd, why) in &verdicts {
            tracing::info!(osd, reason = %why, "marking osd down");
        }
        let reason = verdicts
            .iter()
            .map(|(osd, why)| format!("osd.{osd}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        let command = Command::OsdDown {
            ids: verdicts.into_iter().map(|(id, _)| id).collect(),
            reason,
            at_ms: cairn_common::now_ms(),
        };
        self.propose_own(command).await
    }

    /// Records an MDS's beacon and proposes the FSMap change it calls for (see
    /// `mds_liveness::beacon_command`). Answers with the FSMap epoch.
    async fn mds_beacon(&self, beacon: &MdsBeacon<'_>) -> Result<Value, Attempt> {
        self.mds_liveness
            .beacon(beacon.name, beacon.instance, Instant::now());
        let maps = self.shared.maps();
        let command = mds_liveness::beacon_command(&maps, beacon, cairn_common::now_ms())
            .map_err(|e| Attempt::Fail(Status::failed_precondition(e)))?;
        if let Some(command) = command {
            self.propose_own(command).await?;
        }
        Ok(json!(self.shared.maps().fsmap.epoch))
    }

    /// Fails the MDSs silent for `mon.mds_beacon_grace_ms`: their standbys take over.
    pub async fn fail_silent_mdss(&self) -> Result<(), Attempt> {
        let maps = self.shared.maps();
        let grace = Duration::from_millis(self.settings.mds_beacon_grace_ms);
        let failed =
            self.mds_liveness
                .failed(&maps.fsmap, grace, Instant::now(), cairn_common::now_ms());
        for command in failed {
            if let Command::MdsFailed { name, reason, .. } = &command {
                tracing::info!(mds = %name, %reason, "failing mds");
            }
            self.propose_own(command).await?;
        }
        Ok(())
    }

    /// Proposes a command the mon decided on itself (no client request id: these are
    /// idempotent).
    pub async fn propose_own(&self, command: Command) -> Result<(), Attempt> {
        let entity = format!("mon.{}", self.name);
        let proposal = Proposal {
            request: None,
            command,
        };
        match self.propose(&entity, proposal).await? {
            CommandOutcome::Refused { reason } => {
                tracing::warn!(%reason, "own command refused");
                Ok(())
            }
            CommandOutcome::Done { .. } => Ok(()),
        }
    }

    /// Whether this mon leads now.
    pub async fn is_leader(&self) -> bool {
        self.raft.current_leader().await == Some(self.id)
    }

    /// Verifies a client's proof against its key, here on the leader, and returns its caps and
    /// the mon's own proof; the key never leaves this process.
    fn check_proof(
        &self,
        entity: &str,
        challenge: &[u8],
        client_nonce: &[u8],
        proof: &[u8],
    ) -> Result<Value, Status> {
        let found = self.shared.read(|a| a.state.key_and_caps(entity));
        let bad = || {
            metrics::counter!("cairn_mon_auth_failures_total").increment(1);
            tracing::warn!(%entity, "authentication failed: unknown entity or wrong key");
            auth_status(AuthError::BadProof {
                entity: entity.to_string(),
            })
        };
        let (key, caps) = found.ok_or_else(bad)?;
        if !auth::proof_matches(&auth::client_proof(&key, challenge, client_nonce), proof) {
            return Err(bad());
        }
        let server_proof = auth::server_proof(&key, challenge, client_nonce).to_vec();
        Ok(json!({ "caps": caps, "server_proof": server_proof }))
    }

    /// Waits until this mon is confirmed leader by a quorum and has applied everything
    /// committed before the call (read index), so reads after it are linearizable.
    async fn read_barrier(&self) -> Result<(), Attempt> {
        match tokio::time::timeout(self.commit_timeout(), self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(Attempt::Retry("leadership moved".into()))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Attempt::Retry(format!("quorum not reached: {e}")))
            }
            Ok(Err(e)) => Err(Attempt::Retry(format!("raft: {e}"))),
            Err(_) => Err(Attempt::Retry("leadership not confirmed in time".into())),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        entity: &str,
        req: &Forwarded,
    ) -> Result<Value, Attempt> {
        let addr = self.shared.read(|a| {
            a.last_membership
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        });
        let Some(addr) = addr else {
            return Err(Attempt::Retry(format!(
                "leader {leader} has no known address"
            )));
        };
        let mut client = self.peer(&addr).map_err(Attempt::Retry)?;
        let mut request = tonic::Request::new(ForwardRequest {
            entity: entity.to_string(),
            request_json: serde_json::to_vec(req)
                .map_err(|e| Attempt::Fail(Status::internal(e.to_string())))?,
        });
        // Adding a mon waits for it to catch up; every other request is one commit.
        let timeout = match req {
            Forwarded::MonAdd { .. } | Forwarded::MonRm { .. } => self.commit_timeout() * 4,
            _ => self.commit_timeout(),
        };
        request.set_timeout(timeout);
        self.credentials.authorize(&mut request);
        match client.forward(request).await {
            Ok(reply) => serde_json::from_slice(&reply.into_inner().reply_json).map_err(|e| {
                Attempt::Fail(Status::internal(format!(
                    "leader sent a malformed reply: {e}"
                )))
            }),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
                ) =>
            {
                Err(Attempt::Retry(format!(
                    "leader mon {addr}: {}",
                    s.message()
                )))
            }
            Err(s) => Err(Attempt::Fail(s)),
        }
    }

    fn peer(&self, addr: &str) -> Result<MonPeerClient<Channel>, String> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let c = peer_channel(addr, self.commit_timeout(), self.settings.request_bytes_max)?;
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Mons in quorum as this (leader) mon sees them: itself plus peers heard within the grace.
    pub fn quorum(&self) -> BTreeSet<NodeId> {
        let grace = Duration::from_millis(self.settings.down_grace_ms);
        let mut q = self.liveness.alive(grace);
        q.insert(self.id);
        let members = self.shared.read(|a| {
            a.state
                .maps
                .monmap
                .mons
                .keys()
                .copied()
                .collect::<BTreeSet<_>>()
        });
        q.intersection(&members).copied().collect()
    }

    /// Commits the scrub stamps in `pgs` that are newer than the committed ones: a new
    /// primary has not scrubbed yet, but the PG was, and a new leader must know it too. Only
    /// scrubs change stamps, so this proposes rarely; a failed proposal is left to the next
    /// beacon, which reports the same stamps again.
    async fn commit_scrub_stamps(&self, pgs: &[(PgId, PgReport)]) {
        let newer: Vec<(PgId, ScrubStamps)> = self.shared.read(|a| {
            pgs.iter()
                .map(|(pg, r)| (*pg, ScrubStamps::of(r)))
                .filter(|(pg, s)| s.is_newer_than(&a.state.scrub_stamps_of(*pg)))
                .collect()
        });
        if newer.is_empty() {
            return;
        }
        let why = match self
            .propose_own(Command::ScrubStamps { stamps: newer })
            .await
        {
            Ok(()) => return,
            Err(Attempt::Retry(why)) => why,
            Err(Attempt::Fail(status)) => status.message().to_string(),
        };
        tracing::debug!(%why, "scrub stamps not committed; the next beacon reports them again");
    }

    /// The committed stamps of the PGs in `pgs` that are newer than the reported ones.
    fn newer_scrub_stamps(&self, pgs: &[(PgId, PgReport)]) -> Vec<(PgId, ScrubStamps)> {
        self.shared.read(|a| {
            pgs.iter()
                .map(|(pg, r)| (*pg, a.state.scrub_stamps_of(*pg), ScrubStamps::of(r)))
                .filter(|(_, committed, reported)| committed.is_newer_than(reported))
                .map(|(pg, committed, _)| (pg, committed))
                .collect()
        })
    }

    /// Why `pool` cannot be a new filesystem's metadata pool: its PGs report objects, and an
    /// earlier filesystem's journal there would be replayed as the new one's. Reports lag, and a
    /// new leader has none until the next beacons, so this refuses what is known to be used;
    /// `cairn fs new` also lists the pool before it asks.
    fn metadata_pool_in_use(&self, pool: &str) -> Option<String> {
        let maps = self.shared.maps();
        let (id, _) = maps.osdmap.pool_by_name(pool)?;
        let objects: u64 = self
            .current_pg_reports(&maps.osdmap)
            .iter()
            .filter(|(pg, _)| pg.pool == id)
            .map(|(_, r)| r.objects)
            .sum();
        (objects > 0).then(|| {
            format!(
                "pool '{pool}' already holds {objects} objects (an earlier filesystem's metadata?): use an empty pool, or --force to reuse it"
            )
        })
    }

    /// The PG reports of the OSDs up in `osdmap` (a report only counts from a PG's primary),
    /// each with the newest scrub stamps the PG has had.
    fn current_pg_reports(&self, osdmap: &OsdMap) -> PgReports {
        let reports = self.pg_reports.lock().unwrap_or_else(|p| p.into_inner());
        self.shared.read(|a| {
            reports
                .iter()
                .filter(|(osd, _)| osdmap.osds.get(osd).is_some_and(|o| o.up))
                .flat_map(|(_, pgs)| pgs.iter().cloned())
                .map(|(pg, mut r)| {
                    let mut stamps = ScrubStamps::of(&r);
                    stamps.merge(a.state.scrub_stamps_of(pg));
                    r.last_scrub_ms = stamps.light_ms;
                    r.last_deep_scrub_ms = stamps.deep_ms;
                    (pg, r)
                })
                .collect()
        })
    }

    async fn status(&self) -> ClusterStatus {
        let maps = self.shared.maps();
        let quorum = self.quorum();
        let age = self.quorum_age.observe(&quorum);
        let pg_reports = self.current_pg_reports(&maps.osdmap);
        let health = health::compute(&HealthInput {
            maps: &maps,
            quorum: &quorum,
            pg_reports: &pg_reports,
        });
        let pg_summary = cairn_common::pg_states::summarize(&maps.osdmap, &pg_reports);
        let metrics = self.raft.metrics().borrow().clone();
        let osdmap = &maps.osdmap;
        let mut osd_usage: BTreeMap<u32, Usage> = BTreeMap::new();
        let mut pool_usage: BTreeMap<u32, PoolUsage> = BTreeMap::new();
        for (id, (device, pools)) in self
            .osd_usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if !osdmap.osds.contains_key(id) {
                continue;
            }
            osd_usage.insert(*id, *device);
            for (pool, u) in pools.iter().filter(|(p, _)| osdmap.pools.contains_key(p)) {
                pool_usage.entry(*pool).or_default().add(u);
            }
        }
        let usage = osd_usage.values().fold(Usage::default(), |a, u| Usage {
            used_bytes: a.used_bytes + u.used_bytes,
            total_bytes: a.total_bytes + u.total_bytes,
        });
        let mut mons: Vec<MonStatus> = maps
            .monmap
            .mons
            .iter()
            .map(|(id, m)| MonStatus {
                name: m.name.clone(),
                addr: m.addr.clone(),
                in_quorum: quorum.contains(id),
            })
            .collect();
        mons.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterStatus {
            fsid: maps.fsid,
            health,
            mons,
            leader: Some(self.name.clone()),
            quorum_age_secs: age.as_secs(),
            epochs: Epochs {
                monmap: maps.monmap.epoch,
                osdmap: osdmap.epoch,
                auth: maps.auth.epoch,
                config: maps.config.epoch,
                fsmap: maps.fsmap.epoch,
            },
            osds: OsdSummary {
                total: osdmap.osds.len() as u32,
                up: osdmap.osds.values().filter(|o| o.up).count() as u32,
                in_cluster: osdmap.osds.values().filter(|o| o.in_cluster).count() as u32,
            },
            pools: osdmap.pools.len() as u32,
            pgs: osdmap.pools.values().map(|p| p.pg_num as u64).sum(),
            pg_states: pg_summary.states,
            objects: pg_summary.objects,
            pool_objects: pg_summary.pool_objects,
            stored_bytes: pool_usage
                .iter()
                .filter_map(|(id, u)| {
                    let pool = osdmap.pools.get(id)?;
                    Some(cairn_common::df::stored_bytes(pool, u))
                })
                .sum(),
            redundancy: pg_summary.redundancy,
            usage,
            osd_usage,
            pool_usage,
            io: self.io_rates(),
            mds: MdsSummary::of(&maps.fsmap),
            raft: RaftSummary {
                term: metrics.current_term,
                last_log_index: metrics.last_log_index.unwrap_or(0),
                last_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            },
        }
    }

    async fn mon_add(&self, name: &str, addr: &str) -> Result<Value, Attempt> {
        let fail = |s: String| Attempt::Fail(Status::failed_precondition(s));
        validate_daemon_name(name).map_err(|e| Attempt::Fail(Status::invalid_argument(e)))?;
        let id = mon_node_id(name);
        let monmap = self.shared.read(|a| a.state.maps.monmap.clone());
        if monmap.by_name(name).is_some() {
            return Err(fail(format!("mon.{name} is already a member")));
        }
        if monmap.mons.contains_key(&id) {
            return Err(fail(format!(
                "mon.{name}'s id collides with mon.{}: pick another name",
                monmap.name_of(id)
            )));
        }
        self.check_joining_mon(name, id, addr).await.map_err(fail)?;
        let info = MonInfo {
            name: name.to_string(),
            addr: addr.to_string(),
        };
        tracing::info!(mon = %name, %addr, "adding a monitor: catching it up as a learner");
        let catch_up = self.commit_timeout() * 2;
        match tokio::time::timeout(catch_up, self.raft.add_learner(id, info, true)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(membership_error(e)),
            Err(_) => {
                return Err(fail(format!(
                    "mon.{name} did not catch up within {} ms",
                    catch_up.as_millis()
                )))
            }
        }
        let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        self.change_membership(change).await?;
        Ok(self.membership_outcome(format!("added mon.{name} at {addr}")))
    }

    async fn mon_rm(&self, name: &str) -> Result<Value, Attempt> {
        let monmap = self.shared.read(|a| a.state.maps.monmap.clone());
        let Some((id, _)) = monmap.by_name(name) else {
            return Err(Attempt::Fail(Status::not_found(format!(
                "mon.{name} is not a member"
            ))));
        };
        if monmap.mons.len() == 1 {
            return Err(Attempt::Fail(Status::failed_precondition(
                "cannot remove the last monitor",
            )));
        }
        tracing::info!(mon = %name, "removing a monitor");
        self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await?;
        Ok(self.membership_outcome(format!("removed mon.{name}")))
    }

    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, MonInfo>,
    ) -> Result<(), Attempt> {
        match tokio::time::timeout(
            self.commit_timeout() * 2,
            self.raft.change_membership(change, false),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(membership_error(e)),
            Err(_) => Err(Attempt::Retry(
                "the membership change was not committed in time".into(),
            )),
        }
    }

    fn membership_outcome(&self, message: String) -> Value {
        let epoch = self.shared.read(|a| a.state.maps.monmap.epoch);
        json!(CommandOutcome::Done { epoch, message })
    }

    /// Asks the new mon who it is before letting it into the group.
    async fn check_joining_mon(&self, name: &str, id: NodeId, addr: &str) -> Result<(), String> {
        let endpoint = cairn_common::channel::endpoint(addr, self.commit_timeout())?;
        let mut client = MonRpcClient::new(endpoint.connect_lazy());
        let mut request = tonic::Request::new(PingRequest {});
        request.set_timeout(self.commit_timeout());
        self.credentials.authorize(&mut request);
        let reply = client
            .ping(request)
            .await
            .map_err(|s| format!("cannot reach mon.{name} at {addr}: {} (create it with `cairn-mon mkfs --join` and start it first)", s.message()))?
            .into_inner();
        if reply.fsid != self.fsid.to_string() {
            return Err(format!(
                "the mon at {addr} belongs to cluster {}, not {}",
                reply.fsid, self.fsid
            ));
        }
        if reply.name != name || reply.node_id != id {
            return Err(format!(
                "the mon at {addr} is mon.{}, not mon.{name}",
                reply.name
            ));
        }
        Ok(())
    }

    /// A gauge snapshot for `/metrics`.
    pub fn export_metrics(&self) {
        let m = self.raft.metrics().borrow().clone();
        let is_leader = m.current_leader == Some(self.id);
        metrics::gauge!("cairn_mon_is_leader").set(if is_leader { 1.0 } else { 0.0 });
        metrics::gauge!("cairn_mon_term").set(m.current_term as f64);
        metrics::gauge!("cairn_mon_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("cairn_mon_last_applied_index")
            .set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
        let (members, epochs) = self.shared.read(|a| {
            let maps = &a.state.maps;
            (
                maps.monmap.mons.len(),
                [
                    maps.monmap.epoch,
                    maps.osdmap.epoch,
                    maps.auth.epoch,
                    maps.config.epoch,
                    maps.fsmap.epoch,
                ],
            )
        });
        metrics::gauge!("cairn_mon_members").set(members as f64);
        if is_leader {
            metrics::gauge!("cairn_mon_quorum_size").set(self.quorum().len() as f64);
        }
        for (map, epoch) in ["monmap", "osdmap", "auth", "config", "fsmap"]
            .iter()
            .zip(epochs)
        {
            metrics::gauge!("cairn_mon_map_epoch", "map" => *map).set(epoch as f64);
        }
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MonInfo>>) -> Attempt {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Attempt::Retry("leadership moved".into())
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => Attempt::Fail(
            Status::failed_precondition(format!("membership change refused: {c}")),
        ),
        other => Attempt::Retry(format!("raft: {other}")),
    }
}
