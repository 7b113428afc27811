//! The Raft transport, server side: appends, votes and snapshots from the leader.

use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::Services;
use crate::limits;
use crate::pb;
use crate::raft;

fn malformed(e: raft::Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for Services {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let rpc = raft::append_request_from_pb(request.into_inner()).map_err(malformed)?;
        let response = self.node.raft.append_entries(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(raft::append_response_to_pb(&response)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = raft::vote_request_from_pb(request.into_inner()).map_err(malformed)?;
        let response = self.node.raft.vote(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(raft::vote_response_to_pb(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Header(header)) }) = stream.message().await?
        else {
            return Err(Status::invalid_argument("a snapshot stream starts with its header"));
        };
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            let Some(pb::snapshot_chunk::Part::Data(bytes)) = chunk.part else {
                return Err(Status::invalid_argument("only data chunks may follow the header"));
            };
            if data.len() + bytes.len() > limits::SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            data.extend_from_slice(&bytes);
        }
        let vote = raft::vote_from_pb(&header.vote).map_err(malformed)?;
        let meta = raft::SnapshotMeta {
            last_log_id: raft::opt_log_id_from_pb(&header.last_log_id),
            last_membership: raft::stored_membership_from_pb(&header.last_membership).map_err(malformed)?,
        };
        debug!(bytes = data.len(), "installing snapshot from leader");
        let response = self
            .node
            .raft
            .install_full_snapshot(vote, raft::Snapshot { meta, snapshot: data })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::SnapshotResponse { vote: Some(raft::vote_to_pb(&response.vote)) }))
    }
}
