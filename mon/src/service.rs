//! The mon's gRPC services: `Auth` (no ticket needed), `Mon` (clients and daemons) and
//! `MonPeer` (Raft and forwarding between mons). Handlers check capabilities, decode, and hand
//! the work to `MonNode`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use cairn_common::auth::{self, Need, Ticket};
use cairn_common::command::{Command, Forwarded, PeerFailureReport, Proposal, RequestId};
use cairn_common::fsmap::validate_mds;
use cairn_common::maps::validate_daemon_name;
use cairn_common::pg_states::ScrubStamps;
use cairn_common::placement::PgId;
use cairn_common::proto::auth_server::Auth;
use cairn_common::proto::mon_membership_request::Op;
use cairn_common::proto::mon_peer_server::MonPeer;
use cairn_common::proto::mon_server::Mon;
use cairn_common::proto::*;

use crate::node::MonNode;
use crate::ticket_check::{auth_status, require, require_mon_peer};

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

#[derive(Clone)]
pub struct AuthService {
    pub node: Arc<MonNode>,
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn challenge(
        &self,
        req: Request<ChallengeRequest>,
    ) -> Result<Response<ChallengeReply>, Status> {
        let entity = req.into_inner().entity;
        auth::validate_entity(&entity).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let challenge = self
            .node
            .authority
            .challenge(&entity, cairn_common::now_ms());
        Ok(Response::new(ChallengeReply { challenge }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateReply>, Status> {
        let req = req.into_inner();
        let node = &self.node;
        let now = cairn_common::now_ms();
        auth::validate_entity(&req.entity).map_err(|e| Status::invalid_argument(e.to_string()))?;
        node.authority
            .check_challenge(
                &req.entity,
                &req.challenge,
                now,
                node.settings.challenge_max_age_ms,
            )
            .map_err(auth_status)?;
        // The proof is checked on the leader, against the current key: a removed entity cannot
        // authenticate on a lagging mon, and the key never crosses the network.
        let verified = node
            .execute(
                &format!("mon.{}", node.name),
                &Forwarded::Authenticate {
                    entity: req.entity.clone(),
                    challenge: req.challenge.clone(),
                    client_nonce: req.client_nonce.clone(),
                    proof: req.proof.clone(),
                },
            )
            .await?;
        let caps = serde_json::from_value(verified["caps"].clone())
            .map_err(|e| Status::internal(format!("leader sent unreadable caps: {e}")))?;
        let server_proof: Vec<u8> = serde_json::from_value(verified["server_proof"].clone())
            .map_err(|e| Status::internal(format!("leader sent an unreadable proof: {e}")))?;
        let ticket = Ticket {
            entity: req.entity.clone(),
            caps,
            issued_at_ms: now,
            expires_at_ms: now + node.settings.ticket_ttl_secs * 1000,
        };
        tracing::debug!(entity = %req.entity, "issued a ticket");
        Ok(Response::new(AuthenticateReply {
            ticket: node.authority.issue(&ticket),
            expires_at_ms: ticket.expires_at_ms,
            server_proof,
            osd_ticket: node.osd_authority.issue(&ticket),
            mds_ticket: node.mds_authority.issue(&ticket),
        }))
    }
}

#[derive(Clone)]
pub struct MonService {
    pub node: Arc<MonNode>,
    pub subscribers: Arc<Semaphore>,
}

type MapsStream = Pin<Box<dyn Stream<Item = Result<MapsReply, Status>> + Send + 'static>>;

/// Checks the caller may run `cmd`: keys and caps need everything; config, OSD states,
/// pools and filesystems need write; an OSD boots only itself (or an admin with everything
/// boots it); MDS states come from the MDSs' beacons only.
fn authorize_command(ticket: &Ticket, cmd: &Command) -> Result<(), Status> {
    let need = match cmd {
        Command::Bootstrap { .. } => {
            return Err(Status::permission_denied(
                "bootstrap is issued by the monitors themselves",
            ))
        }
        Command::MdsBoot { .. } | Command::MdsFailed { .. } | Command::MdsServing { .. } => {
            return Err(Status::permission_denied(format!(
                "{} is issued by the monitors from the MDSs' beacons",
                cmd.label()
            )))
        }
        Command::ScrubStamps { .. } => {
            return Err(Status::permission_denied(
                "scrub stamps are committed by the monitors from the OSDs' beacons",
            ))
        }
        Command::OsdBoot { id, .. } if ticket.entity != format!("osd.{id}") => Need::All,
        Command::OsdBoot { .. }
        | Command::ConfigSet { .. }
        | Command::ConfigRm { .. }
        | Command::OsdDown { .. }
        | Command::OsdOut { .. }
        | Command::OsdIn { .. }
        | Command::OsdReweight { .. }
        | Command::BlocklistAdd { .. }
        | Command::BlocklistRm { .. }
        | Command::PoolCreate { .. }
        | Command::PoolSet { .. }
        | Command::PoolRm { .. }
        | Command::FsNew { .. }
        | Command::FsRm { .. }
        | Command::FsSet { .. }
        | Command::FsAddDataPool { .. } => Need::Write,
        Command::AuthAdd { .. } | Command::AuthCaps { .. } | Command::AuthRm { .. } => Need::All,
    };
    ticket
        .require("mon", need, &format!("run {}", cmd.label()))
        .map_err(auth_status)
}

/// Most PG reports one beacon may carry (an OSD is primary of a share of the PGs).
const PG_REPORTS_MAX: usize = 65_536;

fn pg_report(osd: u32, r: &PgReport) -> (PgId, cairn_common::pg_states::PgReport) {
    let pg = PgId {
        pool: r.pool,
        seed: r.pg,
    };
    let blocked: String = r.blocked.chars().take(512).collect();
    let report = cairn_common::pg_states::PgReport {
        osd,
        epoch: r.osdmap_epoch,
        active: r.active,
        blocked,
        objects: r.objects,
        scrub_errors: r.scrub_errors,
        scrubbing: r.scrubbing,
        last_scrub_ms: r.last_scrub_ms,
        last_deep_scrub_ms: r.last_deep_scrub_ms,
        recovery_left: r.recovery_left,
        backfilling: r.backfilling,
        misplaced_left: r.misplaced_left.min(r.recovery_left),
    };
    (pg, report)
}

/// The OSD id of an `osd.N` ticket.
fn osd_id_of(ticket: &Ticket) -> Option<u32> {
    ticket.entity.strip_prefix("osd.")?.parse().ok()
}

/// The MDS name of an `mds.NAME` ticket.
fn mds_name_of(ticket: &Ticket) -> Option<&str> {
    ticket.entity.strip_prefix("mds.")
}

/// The service key `service` names ("osd" when empty, as before MDSs existed), if the ticket's
/// entity is a daemon of that service: only its daemons verify its tickets.
fn service_key_for<'a>(
    node: &'a MonNode,
    ticket: &Ticket,
    service: &str,
) -> Result<&'a cairn_common::auth::SecretKey, Status> {
    let (key, is_member) = match service {
        "" | "osd" => (&node.osd_service_key, osd_id_of(ticket).is_some()),
        "mds" => (&node.mds_service_key, mds_name_of(ticket).is_some()),
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown service {other:?}: service keys exist for osd and mds"
            )))
        }
    };
    let service = if service.is_empty() { "osd" } else { service };
    if !is_member {
        return Err(Status::permission_denied(format!(
            "{} is not an {service}: only {service}s receive the {service} service key",
            ticket.entity
        )));
    }
    Ok(key)
}

#[tonic::async_trait]
impl Mon for MonService {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<JsonReply>, Status> {
        let ticket = require(&req, Need::Read, "read the cluster status")?;
        let what = if req.get_ref().pgs {
            Forwarded::PgList
        } else {
            Forwarded::Status
        };
        let v = self.node.execute(&ticket.entity, &what).await?;
        Ok(Response::new(JsonReply { json: to_json(&v)? }))
    }

    async fn get_maps(&self, req: Request<GetMapsRequest>) -> Result<Response<MapsReply>, Status> {
        let ticket = require(&req, Need::Read, "read the cluster maps")?;
        let r = req.get_ref();
        if r.osdmap_history_to > 0 {
            let history = Forwarded::OsdMapHistory {
                from: r.osdmap_history_from,
                to: r.osdmap_history_to,
            };
            let v = self.node.execute(&ticket.entity, &history).await?;
            return Ok(Response::new(MapsReply {
                epoch_sum: 0,
                maps_json: to_json(&v)?,
            }));
        }
        let v = self
            .node
            .execute(&ticket.entity, &Forwarded::GetMaps)
            .await?;
        let maps: cairn_common::maps::ClusterMaps =
            serde_json::from_value(v).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(MapsReply {
            epoch_sum: maps.epoch_sum(),
            maps_json: to_json(&maps)?,
        }))
    }

    type SubscribeStream = MapsStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<MapsStream>, Status> {
        require(&req, Need::Read, "subscribe to the cluster maps")?;
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this mon serves at most {} subscriptions",
                self.node.settings.subscribers_max
            ))
        })?;
        let have = req.into_inner().have_epoch_sum;
        let stream = WatchStream::new(self.node.shared.subscribe())
            .filter(move |maps| maps.fsid.is_some() && maps.epoch_sum() > have)
            .map(move |maps| {
                let _held = &permit;
                Ok(MapsReply {
                    epoch_sum: maps.epoch_sum(),
                    maps_json: to_json(&*maps)?,
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn command(
        &self,
        req: Request<CommandRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let ticket = require(&req, Need::Read, "send commands")?;
        let body = req.get_ref();
        let cmd: Command = from_json(&body.command_json, "command")?;
        let request = (!body.client_id.is_empty()).then(|| RequestId {
            client: body.client_id.clone(),
            seq: body.seq,
        });
        authorize_command(&ticket, &cmd)?;
        let proposal = Proposal {
            request,
            command: cmd,
        };
        let v = self
            .node
            .execute(&ticket.entity, &Forwarded::Command(proposal))
            .await?;
        Ok(Response::new(CommandReply {
            outcome_json: to_json(&v)?,
        }))
    }

    async fn mon_membership(
        &self,
        req: Request<MonMembershipRequest>,
    ) -> Result<Response<CommandReply>, Status> {
        let ticket = require(&req, Need::All, "change the monitor membership")?;
        let req = req.into_inner();
        validate_daemon_name(&req.name).map_err(Status::invalid_argument)?;
        let fwd = match Op::try_from(req.op) {
            Ok(Op::Add) => {
                if req.addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(Status::invalid_argument(format!(
                        "invalid mon address {:?}: expected IP:PORT",
                        req.addr
                    )));
                }
                Forwarded::MonAdd {
                    name: req.name,
                    addr: req.addr,
                }
            }
            Ok(Op::Remove) => Forwarded::MonRm { name: req.name },
            Err(_) => return Err(Status::invalid_argument("unknown membership operation")),
        };
        let v = self.node.execute(&ticket.entity, &fwd).await?;
        Ok(Response::new(CommandReply {
            outcome_json: to_json(&v)?,
        }))
    }

    async fn auth_get(&self, req: Request<AuthGetRequest>) -> Result<Response<JsonReply>, Status> {
        let ticket = require(&req, Need::All, "read keys")?;
        let entity = req.into_inner().entity;
        auth::validate_entity(&entity).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let v = self
            .node
            .execute(&ticket.entity, &Forwarded::AuthGetKey { entity })
            .await?;
        Ok(Response::new(JsonReply { json: to_json(&v)? }))
    }

    async fn osd_beacon(
        &self,
        req: Request<OsdBeaconRequest>,
    ) -> Result<Response<OsdBeaconReply>, Status> {
        let ticket = require(&req, Need::Write, "send osd beacons")?;
        let req = req.into_inner();
        if osd_id_of(&ticket) != Some(req.osd) {
            return Err(Status::permission_denied(format!(
                "{} cannot send beacons for osd.{}",
                ticket.entity, req.osd
            )));
        }
        let failures = req
            .failures
            .iter()
            .take(cairn_common::command::OSD_ID_MAX as usize)
            .map(|f| PeerFailureReport {
                osd: f.osd,
                refused: f.refused,
                silent_ms: f.silent_ms,
            })
            .collect();
        let fwd = Forwarded::OsdBeacon {
            osd: req.osd,
            failures,
            going_down: req.going_down,
            usage: cairn_common::status::Usage {
                used_bytes: req.used_bytes,
                total_bytes: req.total_bytes,
            },
            io: cairn_common::status::IoTotals {
                reads: req.reads,
                writes: req.writes,
                read_bytes: req.read_bytes,
                written_bytes: req.written_bytes,
                recovered_objects: req.recovered_objects,
                recovered_bytes: req.recovered_bytes,
            },
            pgs: req
                .pgs
                .iter()
                .take(PG_REPORTS_MAX)
                .map(|r| pg_report(req.osd, r))
                .collect(),
            pools: req
                .pool_usage
                .iter()
                .take(cairn_common::command::POOLS_MAX)
                .map(|p| {
                    let usage = cairn_common::df::PoolUsage {
                        objects: p.objects,
                        bytes: p.bytes,
                        allocated_bytes: p.allocated_bytes,
                    };
                    (p.pool, usage)
                })
                .collect(),
        };
        let v = self.node.execute(&ticket.entity, &fwd).await?;
        let stamps: Vec<(PgId, ScrubStamps)> =
            serde_json::from_value(v["scrub_stamps"].clone()).unwrap_or_default();
        Ok(Response::new(OsdBeaconReply {
            osdmap_epoch: v["osdmap_epoch"].as_u64().unwrap_or(0),
            scrub_stamps: stamps
                .into_iter()
                .map(|(pg, s)| PgScrubStamps {
                    pool: pg.pool,
                    pg: pg.seed,
                    last_scrub_ms: s.light_ms,
                    last_deep_scrub_ms: s.deep_ms,
                })
                .collect(),
        }))
    }

    async fn service_key(
        &self,
        req: Request<ServiceKeyRequest>,
    ) -> Result<Response<ServiceKeyReply>, Status> {
        let ticket = require(&req, Need::Read, "read a service key")?;
        let key = service_key_for(&self.node, &ticket, &req.get_ref().service)?;
        Ok(Response::new(ServiceKeyReply {
            key: key.to_base64(),
        }))
    }

    async fn mds_beacon(
        &self,
        req: Request<MdsBeaconRequest>,
    ) -> Result<Response<MdsBeaconReply>, Status> {
        let ticket = require(&req, Need::Write, "send mds beacons")?;
        let req = req.into_inner();
        if mds_name_of(&ticket) != Some(req.name.as_str()) {
            return Err(Status::permission_denied(format!(
                "{} cannot send beacons for mds.{}",
                ticket.entity, req.name
            )));
        }
        // Refused here rather than by the state machine, so the daemon learns why.
        validate_mds(&req.name, &req.addr, &req.instance).map_err(Status::invalid_argument)?;
        let fwd = Forwarded::MdsBeacon {
            name: req.name,
            addr: req.addr,
            instance: req.instance,
            serving: req.serving,
            going_down: req.going_down,
        };
        let v = self.node.execute(&ticket.entity, &fwd).await?;
        Ok(Response::new(MdsBeaconReply {
            fsmap_epoch: v.as_u64().unwrap_or(0),
        }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        require(&req, Need::Read, "ping a monitor")?;
        let leader = self.node.raft.current_leader().await;
        Ok(Response::new(PingReply {
            fsid: self.node.fsid.to_string(),
            name: self.node.name.clone(),
            node_id: self.node.id,
            leader_id: leader.unwrap_or(0),
            has_leader: leader.is_some(),
        }))
    }
}

#[derive(Clone)]
pub struct PeerService {
    pub node: Arc<MonNode>,
}

impl PeerService {
    fn reply<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
        Ok(Response::new(RaftMessage {
            json: to_json(result)?,
        }))
    }
}

#[tonic::async_trait]
impl MonPeer for PeerService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        require_mon_peer(&req)?;
        let rpc = from_json(&req.get_ref().json, "append-entries request")?;
        Self::reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        require_mon_peer(&req)?;
        let rpc = from_json(&req.get_ref().json, "vote request")?;
        Self::reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        require_mon_peer(&req)?;
        let rpc = from_json(&req.get_ref().json, "install-snapshot request")?;
        Self::reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        require_mon_peer(&req)?;
        let req = req.into_inner();
        let fwd: Forwarded = from_json(&req.request_json, "forwarded request")?;
        let v = self.node.execute_on_leader_once(&req.entity, &fwd).await?;
        Ok(Response::new(ForwardReply {
            reply_json: to_json(&v)?,
        }))
    }
}
