//! The openraft adapter: our type configuration and conversions between openraft's types and
//! our versioned protobuf messages. openraft is an alpha; everything that names its types
//! beyond the storage and network traits lives here, so the next alpha is a contained change.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
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
    /// Gavel's Raft types: a log entry carries a [`Payload`] (a batch of ledger commands with
    /// its encoding).
    pub TypeConfig:
        D = Payload,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
);

/// A log entry's application payload: a [`pb::Proposal`] and its protobuf encoding, made once
/// (by the leader's proposer, or by decoding what a replica received or read back) and shared
/// by the log, its cache of recent entries, replication and apply. The log and the followers
/// get the same bytes; nothing encodes a proposal again (the bytes are only copied into the
/// log record and the gRPC frame).
#[derive(Clone)]
pub struct Payload(Arc<Encoded>);

struct Encoded {
    proposal: pb::Proposal,
    bytes: Bytes,
}

impl Payload {
    /// Encodes `proposal`: the only time it is encoded.
    pub fn new(proposal: pb::Proposal) -> Payload {
        use prost::Message;
        let bytes = Bytes::from(proposal.encode_to_vec());
        Payload(Arc::new(Encoded { proposal, bytes }))
    }

    /// Decodes a proposal from its encoding, keeping the bytes (a shared buffer, not a copy).
    pub fn decode(bytes: Bytes) -> Result<Payload, Malformed> {
        use prost::Message;
        let proposal = pb::Proposal::decode(bytes.clone()).map_err(|_| Malformed("proposal"))?;
        Ok(Payload(Arc::new(Encoded { proposal, bytes })))
    }

    pub fn proposal(&self) -> &pb::Proposal {
        &self.0.proposal
    }

    /// The proposal's encoding.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }
}

/// Two payloads are equal when their encodings are: a proposal has exactly one.
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.bytes == other.0.bytes
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload").field("proposal", &self.0.proposal).field("bytes", &self.0.bytes.len()).finish()
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.0.proposal;
        write!(f, "Proposal(at={}ms, {} commands, {} bytes)", p.at_ms, p.commands.len(), self.0.bytes.len())
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
        // A reference count, not a copy: the message sends the proposal's own bytes.
        EntryPayload::Normal(p) => pb::entry::Payload::Proposal(p.bytes().clone()),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry { log_id: Some(log_id_to_pb(&e.log_id)), payload: Some(payload) }
}

/// The log's record of `e`: `entry_to_pb(e).encode_to_vec()`.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    use prost::Message;
    entry_to_pb(e).encode_to_vec()
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, Malformed> {
    let log_id = log_id_from_pb(e.log_id.as_ref().ok_or(Malformed("entry log id"))?);
    let payload = match e.payload.ok_or(Malformed("entry payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Proposal(bytes) => EntryPayload::Normal(Payload::decode(bytes)?),
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
/// bytes (at least one), and how many that is.
pub fn append_request_to_pb(r: &AppendEntriesRequest, budget: usize) -> (pb::AppendEntriesRequest, usize) {
    use prost::Message;
    let mut message = pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(&r.prev_log_id),
        entries: Vec::new(),
        leader_commit: opt_log_id_to_pb(&r.leader_commit),
    };
    let mut total = 0usize;
    for entry in &r.entries {
        let entry = entry_to_pb(entry);
        // A length-delimited field with a one-byte tag (field 3).
        let len = entry.encoded_len();
        total = total.saturating_add(1 + prost::length_delimiter_len(len) + len);
        if total > budget && !message.entries.is_empty() {
            break;
        }
        message.entries.push(entry);
    }
    let kept = message.entries.len();
    (message, kept)
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
        use prost::Message;
        let log_id = LogId { leader_id: LeaderId { term: 3, node_id: 2 }, index: 42 };
        let nodes: BTreeMap<NodeId, BasicNode> = [(1, BasicNode::new("a:1")), (2, BasicNode::new("b:2"))].into();
        let membership = Membership::new(vec![[1, 2].into()], nodes).unwrap();
        let entries = [
            Entry { log_id, payload: EntryPayload::Blank },
            Entry { log_id, payload: EntryPayload::Normal(Payload::new(pb::Proposal { at_ms: 7, commands: vec![] })) },
            Entry { log_id, payload: EntryPayload::Normal(Payload::new(proposal())) },
            Entry { log_id, payload: EntryPayload::Membership(membership) },
        ];
        for e in entries {
            let back = entry_from_pb(pb::Entry::decode(encode_entry(&e).as_slice()).unwrap()).unwrap();
            assert_eq!(back, e);
            if let (EntryPayload::Normal(a), EntryPayload::Normal(b)) = (&back.payload, &e.payload) {
                assert_eq!(a.proposal(), b.proposal(), "decoded once, to the proposal that was encoded");
            }
        }
        assert!(entry_from_pb(pb::Entry::default()).is_err());
        let garbage = pb::Entry {
            log_id: Some(log_id_to_pb(&log_id)),
            payload: Some(pb::entry::Payload::Proposal(Bytes::from_static(&[0xff, 0xff]))),
        };
        assert!(entry_from_pb(garbage).is_err(), "a proposal that does not decode is refused");
    }

    /// The log and the wire keep the record they had when the proposal was an embedded
    /// message: the bytes are identical, so old logs read back and old peers interoperate.
    #[test]
    fn an_entry_encodes_as_it_did_with_an_embedded_proposal() {
        use prost::Message;

        #[derive(Clone, PartialEq, prost::Message)]
        struct EmbeddedEntry {
            #[prost(message, optional, tag = "1")]
            log_id: Option<pb::LogId>,
            #[prost(message, optional, tag = "3")]
            proposal: Option<pb::Proposal>,
        }

        let log_id = LogId { leader_id: LeaderId { term: 3, node_id: 2 }, index: 42 };
        let old = EmbeddedEntry { log_id: Some(log_id_to_pb(&log_id)), proposal: Some(proposal()) };
        let entry = Entry { log_id, payload: EntryPayload::Normal(Payload::new(proposal())) };
        assert_eq!(encode_entry(&entry), old.encode_to_vec());
        let read = entry_from_pb(pb::Entry::decode(old.encode_to_vec().as_slice()).unwrap()).unwrap();
        assert_eq!(read, entry);
        assert_eq!(EmbeddedEntry::decode(encode_entry(&entry).as_slice()).unwrap(), old);
    }

    fn proposal() -> pb::Proposal {
        use ledger::pb::command::Body;
        let bid = ledger::pb::PlaceBid { lot_id: "L".into(), bid_id: "b1".into(), max_amount: 12_500 };
        let command =
            ledger::pb::Command { at_ms: 0, actor: "ana".into(), body: Some(Body::PlaceBid(bid)), log_index: 0 };
        pb::Proposal { at_ms: 1_800_000_000_000, commands: vec![command.clone(), command] }
    }
}
