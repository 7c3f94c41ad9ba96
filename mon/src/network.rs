//! Raft traffic between mons over gRPC (`MonPeer`): openraft's requests and replies travel as
//! JSON inside protobuf envelopes, each call carrying this mon's ticket.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use cairn_common::maps::MonInfo;
use cairn_common::proto::mon_peer_client::MonPeerClient;
use cairn_common::proto::RaftMessage;

use crate::quorum::Liveness;
use crate::raft_types::{NodeId, TypeConfig};
use crate::ticket_check::MonCredentials;

/// Builds a channel to a peer; connections are made on first use and re-made after failures.
pub fn peer_channel(
    addr: &str,
    connect_timeout: Duration,
    message_bytes_max: usize,
) -> Result<MonPeerClient<Channel>, String> {
    let endpoint = cairn_common::channel::endpoint(addr, connect_timeout)?;
    Ok(MonPeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(message_bytes_max))
}

#[derive(Clone)]
pub struct PeerNetwork {
    pub credentials: Arc<MonCredentials>,
    pub liveness: Arc<Liveness>,
    pub connect_timeout: Duration,
    pub message_bytes_max: usize,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &MonInfo) -> PeerClient {
        PeerClient {
            target,
            client: peer_channel(&node.addr, self.connect_timeout, self.message_bytes_max),
            net: self.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    client: Result<MonPeerClient<Channel>, String>,
    net: PeerNetwork,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MonInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(why) => return Err(unreachable(why.clone())),
        };
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage { json });
        request.set_timeout(option.hard_ttl());
        self.net.credentials.authorize(&mut request);
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        }
        .map_err(|s| unreachable(format!("mon {}: {}", self.target, s.message())))?;
        self.net.liveness.heard(self.target);
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn unreachable<E: std::error::Error>(why: String) -> RPCError<NodeId, MonInfo, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MonInfo, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MonInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MonInfo, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
