//! The admin API: initialization, membership changes and metrics.

use std::collections::{BTreeMap, BTreeSet};

use openraft::BasicNode;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use tonic::{Request, Response, Status};

use super::{Services, not_leader, poisoned};
use crate::pb;
use crate::raft;

fn write_error(e: RaftError<raft::TypeConfig, ClientWriteError<raft::TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_node.map(|n| n.addr)),
        RaftError::APIError(other) => Status::failed_precondition(other.to_string()),
        RaftError::Fatal(f) => Status::unavailable(f.to_string()),
    }
}

fn membership_response(log_index: u64, m: &raft::Membership) -> pb::MembershipResponse {
    pb::MembershipResponse { log_index, voters: m.voter_ids().collect(), learners: m.learner_ids().collect() }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Services {
    async fn init(&self, request: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        let members: BTreeMap<u64, BasicNode> =
            request.into_inner().members.into_iter().map(|n| (n.id, BasicNode::new(n.addr))).collect();
        if members.is_empty() {
            return Err(Status::invalid_argument("init needs at least one member"));
        }
        match self.node.raft.initialize(members).await {
            Ok(()) => Ok(Response::new(pb::InitResponse { initialized: true })),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Ok(Response::new(pb::InitResponse { initialized: false }))
            }
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let node = request.into_inner().node.ok_or_else(|| Status::invalid_argument("node is required"))?;
        let response =
            self.node.raft.add_learner(node.id, BasicNode::new(node.addr), true).await.map_err(write_error)?;
        let membership = response.membership.unwrap_or_default();
        Ok(Response::new(membership_response(response.log_id.index, &membership)))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.into_inner();
        let voters: BTreeSet<u64> = req.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("a cluster needs at least one voter"));
        }
        let response = self.node.raft.change_membership(voters, req.retain).await.map_err(write_error)?;
        let membership = response.membership.unwrap_or_default();
        Ok(Response::new(membership_response(response.log_id.index, &membership)))
    }

    async fn metrics(&self, request: Request<pb::MetricsRequest>) -> Result<Response<pb::MetricsResponse>, Status> {
        if request.get_ref().skip_digest {
            return Ok(Response::new(self.node.metrics(false).map_err(poisoned)?));
        }
        // Hashing the whole ledger takes a while: off the async workers.
        let node = self.node.clone();
        let metrics = tokio::task::spawn_blocking(move || node.metrics(true))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(metrics.map_err(poisoned)?))
    }
}
