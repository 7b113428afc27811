//! gRPC services: the Raft transport (server side), the client API and the admin API.
//!
//! - `raft_service`: appends, votes and snapshots from the leader.
//! - `client_service`: proposals, reads (linearizable by default) and the event feed.
//! - `admin_service`: initialization, membership and metrics.
//!
//! This module holds what they share: [`Services`], the not-leader answer and request
//! forwarding.

use std::sync::Arc;
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::RaftError;
use tonic::{Request, Status};

use crate::limits;
use crate::pb::client_service_client::ClientServiceClient;
use crate::proposer::ProposeError;
use crate::replica::NodeInner;
use crate::store::Poisoned;

/// Metadata key naming the leader's address on `Unavailable` answers.
pub const LEADER_ADDR_HEADER: &str = "gavel-leader-addr";
/// On a refused subscription: the index after which this node's feed starts.
pub const FEED_START_HEADER: &str = "gavel-feed-start";
/// Metadata key marking a request forwarded by another node (never forwarded twice).
const FORWARDED_HEADER: &str = "gavel-forwarded";

pub struct Services {
    pub(crate) node: Arc<NodeInner>,
    /// The channel to the current leader for forwarded requests, reused while it leads.
    pub(crate) leader_channel: Arc<std::sync::Mutex<Option<(String, tonic::transport::Channel)>>>,
    /// Turns true when the node stops: open feed streams end, so shutdown does not wait on
    /// subscribers that never hang up.
    pub(crate) stopped: tokio::sync::watch::Receiver<bool>,
}

fn not_leader(leader_addr: Option<String>) -> Status {
    let mut status = Status::unavailable("this node is not the leader; retry on the leader (same ids are safe)");
    if let Some(addr) = leader_addr.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
    }
    status
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { leader_addr, .. } => not_leader(leader_addr),
        ProposeError::Overloaded => {
            Status::resource_exhausted("overloaded: too many commands queued; retry with backoff")
        }
        ProposeError::Stopped(msg) => Status::unavailable(format!("raft unavailable: {msg}")),
        e @ ProposeError::TooLarge { .. } => Status::invalid_argument(e.to_string()),
    }
}

/// The state machine is broken: this replica answers nothing from it.
fn poisoned(e: Poisoned) -> Status {
    Status::unavailable(e.to_string())
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

impl Services {
    /// A client to the current leader, if it is another node.
    fn leader_client(&self) -> Result<(ClientServiceClient<tonic::transport::Channel>, String), Status> {
        let metrics = self.node.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader.ok_or_else(|| not_leader(None))?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| not_leader(None))?;
        let channel = {
            let mut cached = self.leader_channel.lock().map_err(|_| Status::internal("poisoned lock"))?;
            match cached.as_ref() {
                Some((a, ch)) if *a == addr => ch.clone(),
                _ => {
                    let ch = crate::network::channel(&addr, self.node.local_ip())
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    *cached = Some((addr.clone(), ch.clone()));
                    ch
                }
            }
        };
        let client = ClientServiceClient::new(channel)
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
        Ok((client, addr))
    }

    fn forward<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(Duration::from_millis(limits::REQUEST_TIMEOUT_MS));
        request.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        request
    }

    /// Whether this node may answer a read now: `true` to serve it here (stale, or after a
    /// read index), `false` to forward it to the leader (once).
    async fn read_here(&self, stale: bool, forwarded: bool) -> Result<bool, Status> {
        if stale {
            return Ok(true);
        }
        match self.linearize().await {
            Ok(()) => Ok(true),
            Err(status) if !forwarded && status.code() == tonic::Code::Unavailable => Ok(false),
            Err(status) => Err(status),
        }
    }

    /// The applied index and the ledger to answer a read from here, read in that order: the
    /// ledger is at least as new as the index the answer reports.
    fn local_read(&self) -> Result<(u64, std::sync::RwLockReadGuard<'_, ledger::Ledger>), Status> {
        let shared = &self.node.shared;
        let applied_index = shared.applied_index();
        Ok((applied_index, shared.ledger().map_err(poisoned)?))
    }

    /// Waits for a read index from the leader; on a follower, says who leads.
    async fn linearize(&self) -> Result<(), Status> {
        if self.node.config.unsafe_modes.stale_reads {
            return Ok(());
        }
        match self.node.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f))) => {
                Err(not_leader(f.leader_node.map(|n| n.addr)))
            }
            Err(e) => Err(Status::unavailable(format!("no read index: {e}"))),
        }
    }
}

mod admin_service;
mod client_service;
mod raft_service;
