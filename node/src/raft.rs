//! The openraft adapter: our type configuration and conversions between openraft's types and
//! our versioned protobuf messages. openraft is an alpha; everything that names its types
//! beyond the storage and network traits lives here, so the next alpha is a contained change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use openraft::{BasicNode, EntryPayload};

use crate::pb;

/// Node ids are small integers chosen by the operator.
pub type NodeId = u64;

/// What one applied log entry answers: one outcome per command of its proposal, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub outcomes: Vec<ledger::pb::Outcome>,
}

openraft::declare_raft_types!(
    /// Gavel's Raft types: a log entry carries a [`pb::Proposal`] (a batch of ledger commands),
    /// shared: the log's cache of recent entries, replication and apply read the one decoded
    /// copy instead of copying or decoding it again.
    pub TypeConfig:
        D = Arc<pb::Proposal>,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
);

impl fmt::Display for pb::Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal(at={}ms, {} commands)", self.at_ms, self.commands.len())
    }
}

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;
pub type Membership = openraft::Membership<NodeId, BasicNode>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;

/// A protobuf message that does not describe a valid Raft value.
#[derive(Debug, thiserror::Error)]
#[error("malformed {0}")]
pub struct Malformed(pub &'static str);

// ---- log ids and votes ---------------------------------------------------------------------

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, node_id: id.leader_id.node_id, index: id.index }
}

pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    LogId { leader_id: LeaderId { term: id.term, node_id: id.node_id }, index: id.index }
}

pub fn opt_log_id_to_pb(id: &Option<LogId>) -> Option<pb::LogId> {
    id.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(id: &Option<pb::LogId>) -> Option<LogId> {
    id.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

pub fn vote_from_pb(v: &Option<pb::Vote>) -> Result<Vote, Malformed> {
    let v = v.as_ref().ok_or(Malformed("vote"))?;
    Ok(Vote { leader_id: LeaderId { term: v.term, node_id: v.node_id }, committed: v.committed })
}

// ---- membership ----------------------------------------------------------------------------

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m.get_joint_config().iter().map(|set| pb::NodeIdSet { ids: set.iter().copied().collect() }).collect(),
        nodes: m.nodes().map(|(id, n)| pb::Node { id: *id, addr: n.addr.clone() }).collect(),
    }
}

pub fn membership_from_pb(m: &pb::Membership) -> Result<Membership, Malformed> {
    let configs: Vec<BTreeSet<NodeId>> = m.configs.iter().map(|c| c.ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<NodeId, BasicNode> = m.nodes.iter().map(|n| (n.id, BasicNode::new(n.addr.clone()))).collect();
    Membership::new(configs, nodes).map_err(|_| Malformed("membership"))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership { log_id: opt_log_id_to_pb(m.log_id()), membership: Some(membership_to_pb(m.membership())) }
}

pub fn stored_membership_from_pb(m: &Option<pb::StoredMembership>) -> Result<StoredMembership, Malformed> {
    let Some(m) = m else { return Ok(StoredMembership::default()) };
    let membership = membership_from_pb(m.membership.as_ref().ok_or(Malformed("stored membership"))?)?;
    Ok(StoredMembership::new(opt_log_id_from_pb(&m.log_id), membership))
}

// ---- entries -------------------------------------------------------------------------------

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(p) => pb::entry::Payload::Proposal((**p).clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry { log_id: Some(log_id_to_pb(&e.log_id)), payload: Some(payload) }
}

/// `entry_to_pb(e).encode_to_vec()`, without copying a proposal into the message first.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    use prost::Message;
    match &e.payload {
        EntryPayload::Normal(proposal) => {
            let log_id = log_id_to_pb(&e.log_id);
            // pb::Entry's field numbers: log_id = 1, proposal = 3.
            let mut buf = Vec::with_capacity(field_len(log_id.encoded_len()) + field_len(proposal.encoded_len()));
            prost::encoding::message::encode(1, &log_id, &mut buf);
            prost::encoding::message::encode(3, &**proposal, &mut buf);
            buf
        }
        _ => entry_to_pb(e).encode_to_vec(),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, Malformed> {
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or(Malformed("entry log id"))?);
    let payload = match e.payload.ok_or(Malformed("entry payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Proposal(p) => EntryPayload::Normal(Arc::new(p)),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
    };
    Ok(Entry { log_id, payload })
}

// ---- transport messages --------------------------------------------------------------------

pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;

/// The message for `r`, carrying the longest prefix of its entries within `budget` encoded
/// bytes (at least one), and how many that is. Entries are sized before they are converted,
/// so the ones left for the next call are never copied.
pub fn append_request_to_pb(r: &AppendEntriesRequest, budget: usize) -> (pb::AppendEntriesRequest, usize) {
    let mut message = pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(&r.prev_log_id),
        entries: Vec::new(),
        leader_commit: opt_log_id_to_pb(&r.leader_commit),
    };
    let mut total = 0usize;
    for entry in &r.entries {
        total = total.saturating_add(field_len(entry_len(entry)));
        if total > budget && !message.entries.is_empty() {
            break;
        }
        message.entries.push(entry_to_pb(entry));
    }
    let kept = message.entries.len();
    (message, kept)
}

/// A length-delimited protobuf field's encoded size (tag below 16, so one byte of tag).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

/// An entry's encoded size as `entry_to_pb` would make it, without copying its proposal.
fn entry_len(entry: &Entry) -> usize {
    use prost::Message;
    match &entry.payload {
        EntryPayload::Normal(proposal) => {
            field_len(log_id_to_pb(&entry.log_id).encoded_len()) + field_len(proposal.encoded_len())
        }
        _ => entry_to_pb(entry).encoded_len(),
    }
}

pub fn append_request_from_pb(r: pb::AppendEntriesRequest) -> Result<AppendEntriesRequest, Malformed> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(&r.vote)?,
        prev_log_id: opt_log_id_from_pb(&r.prev_log_id),
        leader_commit: opt_log_id_from_pb(&r.leader_commit),
        entries: r.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
    })
}

pub fn append_response_to_pb(r: &AppendEntriesResponse) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(last) => {
            R::PartialSuccess(pb::PartialSuccess { last: opt_log_id_to_pb(last) })
        }
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse { result: Some(result) }
}

pub fn append_response_from_pb(r: pb::AppendEntriesResponse) -> Result<AppendEntriesResponse, Malformed> {
    use pb::append_entries_response::Result as R;
    Ok(match r.result.ok_or(Malformed("append entries response"))? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&p.last)),
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(&Some(v))?),
    })
}

pub fn vote_request_to_pb(r: &VoteRequest) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
        leadership_transfer: r.leadership_transfer,
    }
}

pub fn vote_request_from_pb(r: pb::VoteRequest) -> Result<VoteRequest, Malformed> {
    Ok(VoteRequest {
        vote: vote_from_pb(&r.vote)?,
        last_log_id: opt_log_id_from_pb(&r.last_log_id),
        leadership_transfer: r.leadership_transfer,
    })
}

pub fn vote_response_to_pb(r: &VoteResponse) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
    }
}

pub fn vote_response_from_pb(r: pb::VoteResponse) -> Result<VoteResponse, Malformed> {
    Ok(VoteResponse::new(vote_from_pb(&r.vote)?, opt_log_id_from_pb(&r.last_log_id), r.vote_granted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_protobuf() {
        let log_id = LogId { leader_id: LeaderId { term: 3, node_id: 2 }, index: 42 };
        let nodes: BTreeMap<NodeId, BasicNode> = [(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))].into();
        let membership = Membership::new(vec![[1, 2].into()], nodes).unwrap();
        let entries = [
            Entry { log_id, payload: EntryPayload::Blank },
            Entry { log_id, payload: EntryPayload::Normal(Arc::new(pb::Proposal { at_ms: 7, commands: vec![] })) },
            Entry { log_id, payload: EntryPayload::Normal(Arc::new(proposal())) },
            Entry { log_id, payload: EntryPayload::Membership(membership) },
        ];
        for e in entries {
            use prost::Message;
            assert_eq!(encode_entry(&e), entry_to_pb(&e).encode_to_vec(), "the log's encoding is the message's");
            let back = entry_from_pb(entry_to_pb(&e)).unwrap();
            assert_eq!(back, e);
        }
        assert!(entry_from_pb(pb::Entry::default()).is_err());
    }

    fn proposal() -> pb::Proposal {
        use ledger::pb::command::Body;
        let bid = ledger::pb::PlaceBid { lot_id: "L".into(), bid_id: "b1".into(), max_amount: 12_500 };
        let command =
            ledger::pb::Command { at_ms: 0, actor: "ana".into(), body: Some(Body::PlaceBid(bid)), log_index: 0 };
        pb::Proposal { at_ms: 1_800_000_000_000, commands: vec![command.clone(), command] }
    }
}
