//! The Raft transport: openraft's network traits over tonic gRPC (`RaftService`).

use std::future::Future;
use std::time::Duration;

use openraft::BasicNode;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

use crate::limits;
use crate::pb;
use crate::pb::raft_service_client::RaftServiceClient;
use crate::raft::{self, AppendEntriesResponse, NodeId, TypeConfig};

/// Builds one lazily connecting client per peer.
#[derive(Clone, Default)]
pub struct Network {
    /// This node's id, named in timeout errors.
    pub id: NodeId,
    /// Source address for connections to peers (the node's own listen IP), so that traffic
    /// between two nodes is identifiable by address pair (the jepsen harness cuts links so).
    pub local_ip: Option<std::net::IpAddr>,
}

/// A connection to one peer.
pub struct Connection {
    id: NodeId,
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, String>,
}

/// A lazily connecting channel to `addr` (`host:port`) from `local_ip` (any when `None`),
/// with our message limits and timeouts.
pub fn channel(addr: &str, local_ip: Option<std::net::IpAddr>) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .local_address(local_ip)
        .connect_timeout(Duration::from_millis(limits::CONNECT_TIMEOUT_MS))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let client = channel(&node.addr, self.local_ip).map_err(|e| e.to_string()).map(|ch| {
            RaftServiceClient::new(ch)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
        });
        Connection { id: self.id, target, client }
    }
}

type RpcError = RPCError<TypeConfig>;

/// How openraft should treat a failed call. Only a peer that cannot be reached at all backs
/// off (`Unreachable`: 200 ms to 1 s between tries, at once). A call that ran out of time is a
/// `Timeout`, which backs off only after about ten in a row: one append slower than its
/// deadline (a follower's fsync under load) must not park the follower for a second.
fn status_error(status: tonic::Status, call: Call) -> RpcError {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        tonic::Code::DeadlineExceeded => {
            RPCError::Timeout(Timeout { action: call.action, id: call.id, target: call.target, timeout: call.timeout })
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

/// What a failed call was, for its error.
#[derive(Clone, Copy)]
struct Call {
    action: RPCTypes,
    id: NodeId,
    target: NodeId,
    timeout: Duration,
}

fn malformed(e: raft::Malformed) -> RpcError {
    RPCError::Network(NetworkError::new(&e))
}

impl Connection {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RpcError> {
        self.client.clone().map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }

    fn call(&self, action: RPCTypes, timeout: Duration) -> Call {
        Call { action, id: self.id, target: self.target, timeout }
    }

    fn request<T>(&self, message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.soft_ttl());
        request.metadata_mut().insert("gavel-target", self.target.into());
        request
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: raft::AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<raft::AppendEntriesResponse, RpcError> {
        let (message, kept) = raft::append_request_to_pb(&rpc, limits::APPEND_BYTES_MAX);
        let request = self.request(message, &option);
        let call = self.call(RPCTypes::AppendEntries, option.soft_ttl());
        let response = self.client()?.append_entries(request).await.map_err(|s| status_error(s, call))?;
        let response = raft::append_response_from_pb(response.into_inner()).map_err(malformed)?;
        // Only a prefix went: success means the follower holds it, and openraft sends the rest.
        Ok(match (response, kept.checked_sub(1).and_then(|last| rpc.entries.get(last))) {
            (AppendEntriesResponse::Success, Some(last)) if kept < rpc.entries.len() => {
                AppendEntriesResponse::PartialSuccess(Some(last.log_id))
            }
            (response, _) => response,
        })
    }

    async fn vote(&mut self, rpc: raft::VoteRequest, option: RPCOption) -> Result<raft::VoteResponse, RpcError> {
        let request = self.request(raft::vote_request_to_pb(&rpc), &option);
        let call = self.call(RPCTypes::Vote, option.soft_ttl());
        let response = self.client()?.vote(request).await.map_err(|s| status_error(s, call))?;
        raft::vote_response_from_pb(response.into_inner()).map_err(malformed)
    }

    async fn full_snapshot(
        &mut self,
        vote: raft::Vote,
        snapshot: raft::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<openraft::raft::SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = pb::SnapshotHeader {
            vote: Some(raft::vote_to_pb(&vote)),
            last_log_id: raft::opt_log_id_to_pb(&snapshot.meta.last_log_id),
            last_membership: Some(raft::stored_membership_to_pb(&snapshot.meta.last_membership)),
        };
        let mut chunks = vec![pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Header(header)) }];
        chunks.extend(
            snapshot
                .snapshot
                .chunks(limits::SNAPSHOT_CHUNK_BYTES)
                .map(|c| pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Data(c.to_vec())) }),
        );
        let mut request = tonic::Request::new(tokio_stream::iter(chunks));
        // A snapshot may be large: allow it the hard TTL rather than the soft one.
        let timeout = option.hard_ttl().max(Duration::from_secs(limits::SNAPSHOT_TIMEOUT_SECS));
        request.set_timeout(timeout);
        let call = self.call(RPCTypes::InstallSnapshot, timeout);
        let mut client = self.client()?;
        let install = client.install_snapshot(request);
        let response = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            response = install => response.map_err(|s| StreamingError::from(status_error(s, call)))?,
        };
        let vote = raft::vote_from_pb(&response.into_inner().vote).map_err(|e| StreamingError::from(malformed(e)))?;
        Ok(openraft::raft::SnapshotResponse::new(vote))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn call() -> Call {
        Call { action: RPCTypes::AppendEntries, id: 1, target: 2, timeout: Duration::from_millis(50) }
    }

    fn entry(index: u64, bytes: usize) -> pb::Entry {
        let command = ledger::pb::Command { actor: "x".repeat(bytes), ..Default::default() };
        let proposal = pb::Proposal { commands: vec![command], ..Default::default() };
        pb::Entry {
            log_id: Some(pb::LogId { term: 1, node_id: 1, index }),
            payload: Some(pb::entry::Payload::Proposal(proposal.encode_to_vec().into())),
        }
    }

    fn request(entries: usize) -> raft::AppendEntriesRequest {
        let message = pb::AppendEntriesRequest {
            vote: Some(pb::Vote { term: 1, node_id: 1, committed: true }),
            entries: (1..=entries as u64).map(|i| entry(i, 1000)).collect(),
            ..Default::default()
        };
        raft::append_request_from_pb(message).unwrap()
    }

    #[test]
    fn an_append_carries_entries_up_to_its_byte_budget_and_always_one() {
        let ten = request(10);
        // Entries are sized without converting them: exactly as they encode, framing included.
        let framed = |e: &raft::Entry| {
            let n = raft::entry_to_pb(e).encoded_len();
            1 + prost::length_delimiter_len(n) + n
        };
        let exact: usize = ten.entries[..3].iter().map(framed).sum();
        assert_eq!(raft::append_request_to_pb(&ten, exact).1, 3, "sized exactly as encoded");
        assert_eq!(raft::append_request_to_pb(&ten, exact - 1).1, 2);
        let (all, kept) = raft::append_request_to_pb(&ten, usize::MAX);
        assert_eq!((kept, all.entries.len()), (10, 10));
        let one = entry(1, 1000).encoded_len() + 3;
        let (three, kept) = raft::append_request_to_pb(&ten, 3 * one);
        assert_eq!((kept, three.entries.len()), (3, 3), "three fit, the fourth waits");
        assert!(three.encoded_len() <= 3 * one + 16, "the count is the message's size");
        assert_eq!(three.entries.last().and_then(|e| e.log_id.as_ref()).map(|id| id.index), Some(3));
        assert_eq!(raft::append_request_to_pb(&ten, 10).1, 1, "an entry larger than the budget goes alone");
        let (heartbeat, kept) = raft::append_request_to_pb(&request(0), 10);
        assert_eq!((kept, heartbeat.vote.is_some()), (0, true), "a heartbeat is just the header");
    }

    #[test]
    fn a_slow_call_is_a_timeout_and_only_a_dead_peer_is_unreachable() {
        let slow = status_error(tonic::Status::deadline_exceeded("slow append"), call());
        assert!(matches!(slow, RPCError::Timeout(Timeout { target: 2, .. })), "{slow:?}");
        let dead = status_error(tonic::Status::unavailable("connection refused"), call());
        assert!(matches!(dead, RPCError::Unreachable(_)), "{dead:?}");
        let other = status_error(tonic::Status::cancelled("dropped"), call());
        assert!(matches!(other, RPCError::Network(_)), "{other:?}");
    }
}
