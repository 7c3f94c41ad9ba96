//! A client of the monitors: authenticates with its key, keeps its ticket fresh, and sends
//! each call to a mon, moving to the next one when a mon is unreachable or has no quorum.
//! Every call is bounded by `client.op_timeout_ms` and `client.attempts_max`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use rand::RngCore;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use cairn_common::auth::{self, SecretKey};
use cairn_common::command::{Command, CommandOutcome};
use cairn_common::config::{ClientSettings, Config};
use cairn_common::keyring::Keyring;
use cairn_common::maps::ClusterMaps;
use cairn_common::proto::auth_client::AuthClient;
use cairn_common::proto::mon_client::MonClient as MonRpc;
use cairn_common::proto::mon_membership_request::Op;
use cairn_common::proto::*;
use cairn_common::status::ClusterStatus;

use crate::error::ClientError;

/// A ticket is renewed when less than this share of its lifetime is left.
const TICKET_RENEW_FRACTION: u64 = 5;

struct Ticket {
    bearer: String,
    /// `Bearer <ticket>` for OSDs (signed with the OSD service key).
    osd_bearer: String,
    /// `Bearer <ticket>` for MDSs (signed with the MDS service key).
    mds_bearer: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
}

struct Inner {
    ticket: Option<Ticket>,
    /// Index of the mon that answered last; calls start there.
    preferred: usize,
    channels: HashMap<String, Channel>,
}

pub struct MonClient {
    /// Identifies this client instance in request ids (entity and a random nonce).
    client_id: String,
    next_seq: std::sync::atomic::AtomicU64,
    addrs: Vec<String>,
    entity: String,
    key: SecretKey,
    settings: ClientSettings,
    inner: Mutex<Inner>,
}

/// What to do after a failed attempt.
enum Next {
    Retry(ClientError),
    Reauthenticate,
    Fail(ClientError),
}

fn classify(status: &Status, addr: &str) -> Next {
    let msg = status.message().to_string();
    match status.code() {
        Code::Unavailable if msg.starts_with("no quorum") => {
            Next::Retry(ClientError::NoQuorum(msg))
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted => Next::Retry(ClientError::Unreachable {
            tried: addr.to_string(),
            last: msg,
        }),
        Code::Unauthenticated if msg.contains("expired") || msg.contains("revoked") => {
            Next::Reauthenticate
        }
        Code::Unauthenticated => Next::Fail(ClientError::Auth(msg)),
        Code::PermissionDenied => Next::Fail(ClientError::Denied(msg)),
        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => {
            Next::Fail(ClientError::Invalid(msg))
        }
        Code::NotFound => Next::Fail(ClientError::NotFound(msg)),
        Code::FailedPrecondition | Code::AlreadyExists => Next::Fail(ClientError::Refused(msg)),
        _ => Next::Fail(ClientError::Protocol(format!("{:?}: {msg}", status.code()))),
    }
}

impl MonClient {
    pub fn new(
        addrs: Vec<String>,
        entity: &str,
        key: SecretKey,
        settings: ClientSettings,
    ) -> Result<MonClient, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoMonitors);
        }
        auth::validate_entity(entity).map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(MonClient {
            client_id: format!("{entity}/{:016x}", rand::random::<u64>()),
            next_seq: std::sync::atomic::AtomicU64::new(1),
            addrs,
            entity: entity.to_string(),
            key,
            settings,
            inner: Mutex::new(Inner {
                ticket: None,
                preferred: 0,
                channels: HashMap::new(),
            }),
        })
    }

    /// A client as the config says: its mons, its entity (`client.name`) and keyring.
    pub fn from_config(config: &Config) -> Result<MonClient, ClientError> {
        let keyring =
            Keyring::load(&config.keyring).map_err(|e| ClientError::Config(format!("{e:#}")))?;
        let entity = &config.client.name;
        let key = keyring
            .key(entity)
            .map_err(|e| ClientError::Config(format!("{e:#} ({})", config.keyring.display())))?
            .clone();
        let addrs = config.monitors.iter().map(|m| m.addr.clone()).collect();
        MonClient::new(addrs, entity, key, config.client.clone())
    }

    pub fn entity(&self) -> &str {
        &self.entity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut inner = self.lock();
        if let Some(c) = inner.channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = cairn_common::channel::endpoint(
            addr,
            Duration::from_millis(self.settings.connect_timeout_ms),
        )
        .map_err(|e| ClientError::Config(format!("mon: {e}")))?;
        let channel = endpoint.connect_lazy();
        inner.channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn current_bearer(&self) -> Option<String> {
        self.current_ticket(|t| t.bearer.clone())
    }

    fn current_ticket<T>(&self, field: impl Fn(&Ticket) -> T) -> Option<T> {
        let now = cairn_common::now_ms();
        let inner = self.lock();
        let t = inner.ticket.as_ref()?;
        let lifetime = t.expires_at_ms.saturating_sub(t.issued_at_ms);
        (now + lifetime / TICKET_RENEW_FRACTION < t.expires_at_ms).then(|| field(t))
    }

    /// `Bearer <ticket>` for calls to OSDs, authenticating first when the ticket is missing
    /// or due for renewal.
    pub async fn osd_bearer(&self) -> Result<String, ClientError> {
        self.service_bearer(|t| t.osd_bearer.clone()).await
    }

    /// `Bearer <ticket>` for calls to MDSs, like `osd_bearer`.
    pub async fn mds_bearer(&self) -> Result<String, ClientError> {
        self.service_bearer(|t| t.mds_bearer.clone()).await
    }

    async fn service_bearer(&self, field: fn(&Ticket) -> String) -> Result<String, ClientError> {
        if let Some(b) = self.current_ticket(field) {
            return Ok(b);
        }
        self.call(|mut c, r| async move { c.ping(with(r, PingRequest {})).await })
            .await?;
        self.current_ticket(field)
            .ok_or_else(|| ClientError::Auth("no ticket after authenticating".into()))
    }

    /// Drops the ticket, so the next call authenticates again (after an OSD refused it as
    /// revoked).
    pub fn forget_ticket(&self) {
        self.lock().ticket = None;
    }

    /// Proves the key to the mon at `addr` and keeps the ticket it returns.
    async fn authenticate(&self, addr: &str, timeout: Duration) -> Result<String, Status> {
        let mut client = AuthClient::new(
            self.channel(addr)
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        );
        let mut req = Request::new(ChallengeRequest {
            entity: self.entity.clone(),
        });
        req.set_timeout(timeout);
        let challenge = client.challenge(req).await?.into_inner().challenge;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut req = Request::new(AuthenticateRequest {
            entity: self.entity.clone(),
            challenge: challenge.clone(),
            client_nonce: nonce.to_vec(),
            proof: auth::client_proof(&self.key, &challenge, &nonce).to_vec(),
        });
        req.set_timeout(timeout);
        let reply = client.authenticate(req).await?.into_inner();
        let expected = auth::server_proof(&self.key, &challenge, &nonce);
        if !auth::proof_matches(&expected, &reply.server_proof) {
            return Err(Status::unauthenticated(format!(
                "the mon at {addr} could not prove it knows {}'s key: not this cluster's monitor",
                self.entity
            )));
        }
        let bearer = format!("Bearer {}", reply.ticket);
        self.lock().ticket = Some(Ticket {
            bearer: bearer.clone(),
            osd_bearer: format!("Bearer {}", reply.osd_ticket),
            mds_bearer: format!("Bearer {}", reply.mds_ticket),
            issued_at_ms: cairn_common::now_ms(),
            expires_at_ms: reply.expires_at_ms,
        });
        Ok(bearer)
    }

    /// Runs `op` against the mons until it succeeds, fails definitively, or the bounds run out.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(MonRpc<Channel>, Request<()>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let op_timeout = Duration::from_millis(self.settings.op_timeout_ms);
        let deadline = Instant::now() + op_timeout;
        let backoff = Duration::from_millis(self.settings.retry_backoff_ms);
        let start = self.lock().preferred;
        let mut last: Option<ClientError> = None;
        let mut tried = Vec::new();
        for attempt in 0..self.settings.attempts_max as usize {
            let index = (start + attempt) % self.addrs.len();
            let addr = &self.addrs[index];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            if !tried.contains(addr) {
                tried.push(addr.clone());
            }
            let result = match self.current_bearer() {
                Some(b) => Ok(b),
                None => self.authenticate(addr, remaining).await,
            };
            let result = match result {
                Ok(bearer) => {
                    let client = MonRpc::new(self.channel(addr)?)
                        .max_decoding_message_size(self.settings.reply_bytes_max);
                    let mut req = Request::new(());
                    req.set_timeout(remaining);
                    if let Ok(v) = bearer.parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                    op(client, req).await
                }
                Err(s) => Err(s),
            };
            match result {
                Ok(v) => {
                    self.lock().preferred = index;
                    return Ok(v);
                }
                Err(status) => match classify(&status, addr) {
                    Next::Fail(e) => return Err(e),
                    Next::Reauthenticate => {
                        self.lock().ticket = None;
                        continue;
                    }
                    // "No quorum" says more than a later timeout or refused connection.
                    Next::Retry(e) => {
                        if !matches!(last, Some(ClientError::NoQuorum(_)))
                            || matches!(e, ClientError::NoQuorum(_))
                        {
                            last = Some(e);
                        }
                    }
                },
            }
            // Move on at once after a refused connection; pause once every mon was tried.
            if (attempt + 1).is_multiple_of(self.addrs.len()) {
                tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
        Err(match last {
            Some(ClientError::Unreachable { last, .. }) => ClientError::Unreachable {
                tried: tried.join(", "),
                last,
            },
            Some(e) => e,
            None => ClientError::Unreachable {
                tried: tried.join(", "),
                last: format!("no answer within {} ms", self.settings.op_timeout_ms),
            },
        })
    }

    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        let reply = self
            .call(|mut c, r| async move { c.status(with(r, StatusRequest { pgs: false })).await })
            .await?;
        decode(&reply.into_inner().json)
    }

    /// Every PG's state and numbers, as the leader sees them (`cairn pg ls`).
    pub async fn pg_list(&self) -> Result<Vec<cairn_common::pg_states::PgRow>, ClientError> {
        let reply = self
            .call(|mut c, r| async move { c.status(with(r, StatusRequest { pgs: true })).await })
            .await?;
        decode(&reply.into_inner().json)
    }

    /// The OSD maps of epochs `from..=to` the mons still keep (a bounded number per call,
    /// oldest first).
    pub async fn osdmap_history(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<cairn_common::maps::OsdMap>, ClientError> {
        let req = GetMapsRequest {
            osdmap_history_from: from,
            osdmap_history_to: to,
        };
        let reply = self
            .call(|mut c, r| async move { c.get_maps(with(r, req)).await })
            .await?;
        decode(&reply.into_inner().maps_json)
    }

    /// The current maps, read linearizably on the leader.
    pub async fn maps(&self) -> Result<ClusterMaps, ClientError> {
        let reply = self
            .call(|mut c, r| async move { c.get_maps(with(r, GetMapsRequest::default())).await })
            .await?;
        decode(&reply.into_inner().maps_json)
    }

    /// Commits a command; a command the monitors refuse is `ClientError::Refused`. Retries
    /// carry the same request id, so the command applies once.
    pub async fn command(&self, cmd: Command) -> Result<(u64, String), ClientError> {
        let command_json =
            serde_json::to_vec(&cmd).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let req = CommandRequest {
            command_json,
            client_id: self.client_id.clone(),
            seq: self
                .next_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let reply = self
            .call(|mut c, r| {
                let req = req.clone();
                async move { c.command(with(r, req)).await }
            })
            .await?;
        outcome(&reply.into_inner().outcome_json)
    }

    pub async fn mon_add(&self, name: &str, addr: &str) -> Result<(u64, String), ClientError> {
        self.membership(Op::Add, name, addr).await
    }

    pub async fn mon_rm(&self, name: &str) -> Result<(u64, String), ClientError> {
        self.membership(Op::Remove, name, "").await
    }

    async fn membership(
        &self,
        op: Op,
        name: &str,
        addr: &str,
    ) -> Result<(u64, String), ClientError> {
        let req = MonMembershipRequest {
            op: op as i32,
            name: name.to_string(),
            addr: addr.to_string(),
        };
        let reply = self
            .call(|mut c, r| {
                let req = req.clone();
                async move { c.mon_membership(with(r, req)).await }
            })
            .await?;
        outcome(&reply.into_inner().outcome_json)
    }

    /// An entity's key and caps.
    pub async fn auth_get(
        &self,
        entity: &str,
    ) -> Result<(SecretKey, BTreeMap<String, String>), ClientError> {
        let reply = self
            .call(|mut c, r| {
                let entity = entity.to_string();
                async move { c.auth_get(with(r, AuthGetRequest { entity })).await }
            })
            .await?;
        let v: serde_json::Value = decode(&reply.into_inner().json)?;
        let key = serde_json::from_value(v["key"].clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let caps = serde_json::from_value(v["caps"].clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((key, caps))
    }

    /// An OSD's beacon; the mons answer with their OSD map epoch and the scrub stamps they
    /// hold newer than the beacon's.
    pub async fn osd_beacon(&self, req: OsdBeaconRequest) -> Result<OsdBeaconReply, ClientError> {
        let reply = self
            .call(|mut c, r| {
                let req = req.clone();
                async move { c.osd_beacon(with(r, req)).await }
            })
            .await?;
        Ok(reply.into_inner())
    }

    /// An MDS's beacon; returns the mons' FSMap epoch. A blocklisted instance is
    /// `ClientError::Refused`: it lost its rank and must stop.
    pub async fn mds_beacon(&self, req: MdsBeaconRequest) -> Result<u64, ClientError> {
        let reply = self
            .call(|mut c, r| {
                let req = req.clone();
                async move { c.mds_beacon(with(r, req)).await }
            })
            .await?;
        Ok(reply.into_inner().fsmap_epoch)
    }

    /// The key OSDs verify tickets with (for `osd.*` entities only).
    pub async fn osd_service_key(&self) -> Result<SecretKey, ClientError> {
        self.service_key("osd").await
    }

    /// The key MDSs verify tickets with (for `mds.*` entities only).
    pub async fn mds_service_key(&self) -> Result<SecretKey, ClientError> {
        self.service_key("mds").await
    }

    async fn service_key(&self, service: &str) -> Result<SecretKey, ClientError> {
        let req = ServiceKeyRequest {
            service: service.to_string(),
        };
        let reply = self
            .call(|mut c, r| {
                let req = req.clone();
                async move { c.service_key(with(r, req)).await }
            })
            .await?;
        SecretKey::from_base64(&reply.into_inner().key)
            .map_err(|e| ClientError::Protocol(format!("unreadable service key: {e}")))
    }

    /// Asks one specific mon who it is and whom it follows. The ticket comes from the
    /// configured mons, so this works for a mon that has not joined yet.
    pub async fn ping(&self, addr: &str) -> Result<PingReply, ClientError> {
        let timeout = Duration::from_millis(self.settings.op_timeout_ms);
        let bearer = match self.current_bearer() {
            Some(b) => b,
            None => {
                self.call(|mut c, r| async move { c.ping(with(r, PingRequest {})).await })
                    .await?;
                self.current_bearer()
                    .ok_or_else(|| ClientError::Auth("no ticket after authenticating".into()))?
            }
        };
        let mut client = MonRpc::new(self.channel(addr)?);
        let mut req = Request::new(PingRequest {});
        req.set_timeout(timeout);
        if let Ok(v) = bearer.parse() {
            req.metadata_mut().insert("authorization", v);
        }
        client
            .ping(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| status_error(&s, addr))
    }

    /// The maps now and at every change, from one mon; ends when that mon goes away.
    pub async fn subscribe(
        &self,
    ) -> Result<impl Stream<Item = Result<ClusterMaps, ClientError>>, ClientError> {
        let stream = self
            .call(|mut c, r| async move {
                c.subscribe(with(r, SubscribeRequest { have_epoch_sum: 0 }))
                    .await
            })
            .await?
            .into_inner();
        Ok(stream.map(|item| match item {
            Ok(reply) => decode(&reply.maps_json),
            Err(s) => Err(status_error(&s, "subscription")),
        }))
    }
}

fn status_error(status: &Status, addr: &str) -> ClientError {
    match classify(status, addr) {
        Next::Retry(e) | Next::Fail(e) => e,
        Next::Reauthenticate => ClientError::Auth(status.message().to_string()),
    }
}

/// Moves the ticket and deadline of `template` onto a typed request.
fn with<T>(template: Request<()>, body: T) -> Request<T> {
    let (metadata, extensions, ()) = template.into_parts();
    Request::from_parts(metadata, extensions, body)
}

fn decode<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(json)
        .map_err(|e| ClientError::Protocol(format!("undecodable reply: {e}")))
}

fn outcome(json: &[u8]) -> Result<(u64, String), ClientError> {
    match decode(json)? {
        CommandOutcome::Done { epoch, message } => Ok((epoch, message)),
        CommandOutcome::Refused { reason } => Err(ClientError::Refused(reason)),
    }
}
