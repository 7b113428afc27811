//! The replica's shared core: what the gRPC services and the background tasks all hold.

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;

use crate::config::NodeConfig;
use crate::pb;
use crate::proposer::{Clock, Proposer};
use crate::store::{Poisoned, Raft, Shared};

/// Shared by the services and background tasks.
pub(crate) struct NodeInner {
    pub(crate) config: NodeConfig,
    pub(crate) raft: Raft,
    pub(crate) shared: Arc<Shared>,
    pub(crate) proposer: Proposer,
    pub(crate) clock: Arc<Clock>,
    /// State exports served at once (`limits::EXPORTS_AT_ONCE`).
    pub(crate) exports: Arc<tokio::sync::Semaphore>,
}

impl NodeInner {
    pub(crate) fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.config.source_ip()
    }

    /// This node's metrics; `state_digest` only `with_digest` (it hashes the whole ledger).
    pub(crate) fn metrics(&self, with_digest: bool) -> Result<pb::MetricsResponse, Poisoned> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let leader_addr =
            m.current_leader.and_then(|id| membership.get_node(&id)).map(|n| n.addr.clone()).unwrap_or_default();
        let digest = if with_digest { self.shared.state_digest()? } else { String::new() };
        let applied = self.shared.applied_index();
        Ok(pb::MetricsResponse {
            node_id: m.id,
            state: format!("{:?}", m.state),
            leader_id: m.current_leader,
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: applied,
            feed_start: self.shared.feed_start(),
            understands_record_expiry: true,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            state_digest: digest,
            snapshot_index: m.snapshot.map_or(0, |s| s.index),
            purged_index: m.purged.map_or(0, |p| p.index),
        })
    }
}
