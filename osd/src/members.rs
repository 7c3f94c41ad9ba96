//! The primary talking to the members of its PG: itself through direct calls (it already
//! holds the PG's lock), the others over gRPC. Every failure is a reason to answer the client
//! RETRY: the member may be down, and the map will say so shortly.

use cairn_common::proto::{
    OpResult, PgPullReply, PgPullRequest, PgQueryReply, PgQueryRequest, ScrubMapReply,
    ScrubMapRequest, ShardReadReply, ShardReadRequest, SubOpRequest,
};

use crate::node::OsdNode;
use crate::pg::{Pg, PgState};
use crate::replica::Listing;
use crate::{replica, scrub};

/// One member of a PG: an OSD and its position (-1 for replicated pools).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub osd: u32,
    pub shard: i32,
}

fn failed(what: &str, m: Member, e: impl std::fmt::Display) -> String {
    format!("{what} to osd.{} failed: {e}", m.osd)
}

fn check(result: i32, message: &str, what: &str, m: Member) -> Result<(), String> {
    if result == OpResult::Ok as i32 {
        Ok(())
    } else {
        Err(failed(what, m, message))
    }
}

/// Sends a sub-op and waits until the member has it durable.
pub async fn sub_op(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    m: Member,
    mut req: SubOpRequest,
) -> Result<(), String> {
    if m.osd != node.id {
        return remote_sub_op(node, m, req).await;
    }
    req.shard = m.shard;
    let reply = replica::apply_locked(node, pg, st, req).await;
    check(reply.result, &reply.message, "sub-op", m)
}

/// Sends one sub-op to a remote member (for fanning out while the primary writes locally).
pub async fn remote_sub_op(node: &OsdNode, m: Member, mut req: SubOpRequest) -> Result<(), String> {
    req.shard = m.shard;
    let mut client = node
        .peer(m.osd)
        .ok_or_else(|| failed("sub-op", m, "not in the map"))?;
    let request = node
        .peer_request(req)
        .await
        .map_err(|e| failed("sub-op", m, e))?;
    let reply = client
        .sub_op(request)
        .await
        .map_err(|e| failed("sub-op", m, e.message()))?
        .into_inner();
    check(reply.result, &reply.message, "sub-op", m)
}

pub async fn query(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    m: Member,
    epoch: u64,
    listing: Listing,
) -> Result<PgQueryReply, String> {
    let reply = if m.osd == node.id && m.shard == pg.shard {
        replica::query_locked(node, pg, st, epoch, listing).await
    } else if m.osd == node.id {
        // Another shard this OSD held in a past interval: its own PG state and lock.
        replica::query(node, pg.id, m.shard, epoch, listing).await
    } else {
        let (skip_objects, names) = match listing {
            Listing::All => (false, Vec::new()),
            Listing::Named(names) => (true, names),
        };
        let mut client = node
            .peer(m.osd)
            .ok_or_else(|| failed("query", m, "not in the map"))?;
        let request = node
            .peer_request(PgQueryRequest {
                osdmap_epoch: epoch,
                pool: pg.id.pool,
                pg: pg.id.seed,
                shard: m.shard,
                skip_objects,
                names,
            })
            .await
            .map_err(|e| failed("query", m, e))?;
        client
            .pg_query(request)
            .await
            .map_err(|e| failed("query", m, e.message()))?
            .into_inner()
    };
    check(reply.result, &reply.message, "query", m)?;
    Ok(reply)
}

pub async fn pull(node: &OsdNode, pg: &Pg, m: Member, object: &str) -> Result<PgPullReply, String> {
    let reply = if m.osd == node.id {
        replica::pull(node, pg.id, m.shard, object.to_string()).await
    } else {
        let mut client = node
            .peer(m.osd)
            .ok_or_else(|| failed("pull", m, "not in the map"))?;
        let request = node
            .peer_request(PgPullRequest {
                pool: pg.id.pool,
                pg: pg.id.seed,
                shard: m.shard,
                object: object.to_string(),
            })
            .await
            .map_err(|e| failed("pull", m, e))?;
        client
            .pg_pull(request)
            .await
            .map_err(|e| failed("pull", m, e.message()))?
            .into_inner()
    };
    check(reply.result, &reply.message, "pull", m)?;
    Ok(reply)
}

/// A byte range of a member's shard of `object` (erasure-coded pools).
pub async fn shard_read(
    node: &OsdNode,
    pg: &Pg,
    m: Member,
    object: &str,
    offset: u64,
    length: u64,
) -> Result<ShardReadReply, String> {
    let req = ShardReadRequest {
        pool: pg.id.pool,
        pg: pg.id.seed,
        shard: m.shard,
        object: object.to_string(),
        offset,
        length,
    };
    let reply = if m.osd == node.id {
        replica::shard_read(node, req).await
    } else {
        let mut client = node
            .peer(m.osd)
            .ok_or_else(|| failed("shard read", m, "not in the map"))?;
        let request = node
            .peer_request(req)
            .await
            .map_err(|e| failed("shard read", m, e))?;
        client
            .shard_read(request)
            .await
            .map_err(|e| failed("shard read", m, e.message()))?
            .into_inner()
    };
    check(reply.result, &reply.message, "shard read", m)?;
    Ok(reply)
}

/// A member's description of a range of its PG's objects, for a scrub.
pub async fn scrub_map(
    node: &OsdNode,
    m: Member,
    req: ScrubMapRequest,
) -> Result<ScrubMapReply, String> {
    let reply = if m.osd == node.id {
        scrub::scrub_map(node, req).await
    } else {
        let mut client = node
            .peer(m.osd)
            .ok_or_else(|| failed("scrub", m, "not in the map"))?;
        let request = node
            .peer_request(req)
            .await
            .map_err(|e| failed("scrub", m, e))?;
        client
            .scrub_map(request)
            .await
            .map_err(|e| failed("scrub", m, e.message()))?
            .into_inner()
    };
    check(reply.result, &reply.message, "scrub", m)?;
    Ok(reply)
}
