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
use cairn_common::proto::{MdsReply, MdsRequest};

use crate::node::MdsNode;

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

#[tonic::async_trait]
impl Mds for MdsService {
    async fn call(&self, req: Request<MdsRequest>) -> Result<Response<MdsReply>, Status> {
        let ticket = req
            .extensions()
            .get::<Ticket>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no ticket"))?;
        let req = req.into_inner();
        if req.client.is_empty() || req.client.len() > CLIENT_ID_BYTES_MAX {
            return Err(Status::invalid_argument(
                "a request names its client (at most 256 bytes)",
            ));
        }
        let op: FsOp = serde_json::from_slice(&req.op_json)
            .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))?;
        let (need, action) = if op.is_change() {
            (Need::Write, "change filesystem metadata")
        } else {
            (Need::Read, "read filesystem metadata")
        };
        ticket.require("mds", need, action).map_err(grpc_status)?;
        // Replies are remembered per client instance; the entity keeps clients apart.
        let client = format!("{}|{}", ticket.entity, req.client);
        let node = self.node.clone();
        // In its own task: a change cut off half-way by a departing caller would leave the
        // journal ahead of the cache.
        let reply = tokio::spawn(async move { node.handle(&client, req.tid, op).await })
            .await
            .map_err(|e| Status::internal(format!("the request failed: {e}")))??;
        Ok(Response::new(MdsReply {
            reply_json: serde_json::to_vec(&reply)
                .map_err(|e| Status::internal(format!("cannot encode the reply: {e}")))?,
        }))
    }
}
