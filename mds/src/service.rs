//! The MDS's gRPC service. Every call carries a ticket signed with the MDS service key;
//! changes need `mds allow rw`, reads `mds allow r`. Only the serving active answers: others
//! say UNAVAILABLE, and clients retry at the daemon the FSMap names.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use cairn_common::auth::{
    bearer_ticket, grpc_status, ticket_is_current, Need, Ticket, TicketAuthority,
};
use cairn_common::fsops::FsOp;
use cairn_common::proto::mds_server::Mds;
use cairn_common::proto::{MdsReply, MdsRequest, MdsSessionRequest};
use tokio_stream::wrappers::ReceiverStream;

use crate::node::{MdsNode, SESSION_EVENTS_QUEUED};
use crate::sessions::Opens;

/// Longest client id and request body accepted.
const CLIENT_ID_BYTES_MAX: usize = 256;
pub const REQUEST_BYTES_MAX: usize = 1 << 20;

#[derive(Clone)]
pub struct MdsTicketCheck {
    pub authority: Arc<TicketAuthority>,
    pub node: Arc<MdsNode>,
}

impl tonic::service::Interceptor for MdsTicketCheck {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let ticket = bearer_ticket(req.metadata(), &self.authority)?;
        if !ticket_is_current(&ticket, &self.node.rados.maps().auth) {
            return Err(Status::unauthenticated(format!(
                "ticket revoked: {} was removed or its caps changed; authenticate again",
                ticket.entity
            )));
        }
        req.extensions_mut().insert(ticket);
        Ok(req)
    }
}

pub struct MdsService {
    pub node: Arc<MdsNode>,
}

fn ticket_of<T>(req: &Request<T>) -> Result<Ticket, Status> {
    req.extensions()
        .get::<Ticket>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no ticket"))
}

/// The session a request belongs to: the client instance it names, under the entity its
/// ticket proves (the entity keeps clients apart).
fn session_of(ticket: &Ticket, client: &str) -> Result<String, Status> {
    if client.is_empty() || client.len() > CLIENT_ID_BYTES_MAX {
        return Err(Status::invalid_argument(
            "a request names its client (at most 256 bytes)",
        ));
    }
    Ok(format!("{}|{client}", ticket.entity))
}

#[tonic::async_trait]
impl Mds for MdsService {
    async fn call(&self, req: Request<MdsRequest>) -> Result<Response<MdsReply>, Status> {
        let ticket = ticket_of(&req)?;
        let req = req.into_inner();
        let client = session_of(&ticket, &req.client)?;
        let op: FsOp = serde_json::from_slice(&req.op_json)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))?;
        // Opening for writing makes the client one the MDS waits on (recalls); a release of
        // a read-only open is the end of a read.
        let writes = match &op {
            FsOp::Open { write, .. } | FsOp::Release { write, .. } => *write,
            other => other.is_change(),
        };
        let (need, action) = if matches!(op, FsOp::Fsck) {
            // It walks the whole namespace while every other request waits.
            (Need::All, "check the filesystem")
        } else if writes {
            (Need::Write, "change filesystem metadata")
        } else {
            (Need::Read, "read filesystem metadata")
        };
        ticket.require("mds", need, action).map_err(grpc_status)?;
        let node = self.node.clone();
        // In its own task: a change cut off half-way by a departing caller would leave the
        // journal ahead of the cache.
        let reply = tokio::spawn(async move { node.handle(&client, req.tid, op).await })
            .await
            .map_err(|e| Status::internal(format!("the request failed: {e}")))??;
        Ok(Response::new(MdsReply {
            reply_json: serde_json::to_vec(&reply)
                .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))?,
            // Read after the answer: a client fenced before it is in this epoch.
            osdmap_barrier: self.node.osdmap_barrier(),
        }))
    }

    type SessionStream = ReceiverStream<Result<cairn_common::proto::MdsSessionEvent, Status>>;

    async fn session(
        &self,
        req: Request<MdsSessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ticket = ticket_of(&req)?;
        ticket
            .require("mds", Need::Read, "open a filesystem session")
            .map_err(grpc_status)?;
        let req = req.into_inner();
        let client = session_of(&ticket, &req.client)?;
        let files = req
            .open_files
            .iter()
            .map(|f| {
                (
                    f.ino,
                    Opens {
                        readers: f.readers,
                        writers: f.writers,
                    },
                )
            })
            .collect();
        let (events, stream) = tokio::sync::mpsc::channel(SESSION_EVENTS_QUEUED);
        self.node.open_session(&client, files, events).await?;
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
