//! The OSD's gRPC service. Every call carries a ticket signed with the OSD service key (the
//! mons hand it to OSDs only); client ops need `osd allow r` or `allow rw`, peer calls come
//! from OSD entities with `osd allow *`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use cairn_common::auth::grpc_status as auth_status;
use cairn_common::auth::{
    bearer_ticket, ticket_is_current, AuthError, Need, Ticket, TicketAuthority,
};
use cairn_common::placement::PgId;
use cairn_common::proto::osd_server::Osd;
use cairn_common::proto::*;

use crate::node::OsdNode;
use crate::{primary, replica, scrub};

/// Verifies the ticket of every call before its handler runs, and refuses tickets the auth
/// map has revoked since they were issued.
#[derive(Clone)]
pub struct OsdTicketCheck {
    pub authority: Arc<TicketAuthority>,
    pub node: Arc<OsdNode>,
}

impl tonic::service::Interceptor for OsdTicketCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let ticket = bearer_ticket(req.metadata(), &self.authority)?;
        if !ticket_is_current(&ticket, &self.node.maps().auth) {
            return Err(Status::unauthenticated(format!(
                "ticket revoked: {} was removed or its caps changed; authenticate again",
                ticket.entity
            )));
        }
        req.extensions_mut().insert(ticket);
        Ok(req)
    }
}

/// Longest request id a client may send.
const REQID_BYTES_MAX: usize = 256;

/// Runs a handler's work in its own task, so it completes even when the caller goes away
/// (a client's deadline passes, a connection drops): an op cancelled half-way would leave
/// the store ahead of the PG's state in memory.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work)
        .await
        .map_err(|e| Status::internal(format!("the op failed: {e}")))
}

fn ticket_of<T>(req: &Request<T>) -> Result<Ticket, Status> {
    req.extensions()
        .get::<Ticket>()
        .cloned()
        .ok_or_else(|| auth_status(AuthError::NoTicket))
}

fn require_peer<T>(req: &Request<T>) -> Result<(), Status> {
    let ticket = ticket_of(req)?;
    ticket
        .require("osd", Need::All, "call an osd's peer service")
        .map_err(auth_status)?;
    if ticket.entity.starts_with("osd.") {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{} is not an osd: peer calls are for osds only",
            ticket.entity
        )))
    }
}

pub struct OsdService {
    pub node: Arc<OsdNode>,
    /// Client ops running at once.
    pub running: Arc<Semaphore>,
    /// Client ops running or waiting: beyond `op_queue_max` new ones are refused.
    pub admitted: Arc<AtomicUsize>,
}

impl OsdService {
    pub fn new(node: Arc<OsdNode>) -> OsdService {
        OsdService {
            running: Arc::new(Semaphore::new(node.settings.ops_in_flight_max)),
            admitted: Arc::new(AtomicUsize::new(0)),
            node,
        }
    }
}

/// Counts an admitted op until dropped.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Osd for OsdService {
    async fn op(&self, req: Request<OpRequest>) -> Result<Response<OpReply>, Status> {
        let ticket = ticket_of(&req)?;
        let (need, action) = primary::op_need(req.get_ref());
        ticket.require("osd", need, action).map_err(auth_status)?;
        let limit = self.node.settings.ops_in_flight_max + self.node.settings.op_queue_max;
        let admission = Admission(self.admitted.clone());
        if self.admitted.fetch_add(1, Ordering::Relaxed) >= limit {
            return Err(Status::resource_exhausted(format!(
                "osd.{} has {limit} ops running or queued; retry later",
                self.node.id
            )));
        }
        let mut req = req.into_inner();
        if req.reqid.len() > REQID_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "request ids are at most {REQID_BYTES_MAX} bytes"
            )));
        }
        // A request id means something only for the entity that sent it.
        if !req.reqid.is_empty() {
            req.reqid = format!("{}|{}", ticket.entity, req.reqid);
        }
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the osd is shutting down"))?;
        let node = self.node.clone();
        let name = req
            .op
            .as_ref()
            .and_then(|o| o.op.as_ref())
            .map_or("none", |o| o.name());
        let reply = to_completion(async move {
            let _held = (permit, admission);
            let started = std::time::Instant::now();
            let reply = primary::handle_op(&node, req).await;
            metrics::histogram!("cairn_osd_op_seconds", "op" => name)
                .record(started.elapsed().as_secs_f64());
            reply
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn sub_op(&self, req: Request<SubOpRequest>) -> Result<Response<SubOpReply>, Status> {
        require_peer(&req)?;
        let req = req.into_inner();
        let node = self.node.clone();
        let reply = to_completion(async move {
            node.maps_at_least(req.osdmap_epoch).await;
            replica::apply_sub_op(&node, req).await
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn pg_query(
        &self,
        req: Request<PgQueryRequest>,
    ) -> Result<Response<PgQueryReply>, Status> {
        require_peer(&req)?;
        let req = req.into_inner();
        let pg = PgId {
            pool: req.pool,
            seed: req.pg,
        };
        let node = self.node.clone();
        let listing = replica::Listing::of_request(req.skip_objects, req.names);
        let reply = to_completion(async move {
            replica::query(&node, pg, req.shard, req.osdmap_epoch, listing).await
        })
        .await?;
        Ok(Response::new(reply))
    }

    async fn pg_pull(&self, req: Request<PgPullRequest>) -> Result<Response<PgPullReply>, Status> {
        require_peer(&req)?;
        let req = req.into_inner();
        let pg = PgId {
            pool: req.pool,
            seed: req.pg,
        };
        Ok(Response::new(
            replica::pull(&self.node, pg, req.shard, req.object).await,
        ))
    }

    async fn shard_read(
        &self,
        req: Request<ShardReadRequest>,
    ) -> Result<Response<ShardReadReply>, Status> {
        require_peer(&req)?;
        Ok(Response::new(
            replica::shard_read(&self.node, req.into_inner()).await,
        ))
    }

    async fn scrub_map(
        &self,
        req: Request<ScrubMapRequest>,
    ) -> Result<Response<ScrubMapReply>, Status> {
        require_peer(&req)?;
        let node = self.node.clone();
        let req = req.into_inner();
        let reply = to_completion(async move { scrub::scrub_map(&node, req).await }).await?;
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        require_peer(&req)?;
        Ok(Response::new(HeartbeatReply {
            osd: self.node.id,
            osdmap_epoch: self.node.maps().osdmap.epoch,
        }))
    }
}
