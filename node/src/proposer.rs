//! The write path: concurrent client commands coalesce into one log entry, so one fsync and
//! one replication round serve many bids (TigerBeetle-style batching), while every command
//! still gets its own outcome.
//!
//! Callers enqueue requests (each with one reply channel) on a queue bounded in commands. A
//! single batcher drains whole requests while they fit (up to `BATCH_COMMANDS_MAX` commands
//! and `BATCH_BYTES_MAX` encoded bytes; lingering `BATCH_LINGER_US` only while entries are
//! already in flight), stamps the batch with the leader's clock and hands it to openraft; up to
//! `ENTRIES_IN_FLIGHT_MAX` entries replicate concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::errors::{ClientWriteError, RaftError};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tracing::warn;

use crate::limits;
use crate::pb;
use crate::raft::{Payload, TypeConfig};
use crate::store::{Raft, Shared};

/// Why a command could not be ordered. Every variant is safe to retry with the same ids;
/// `TooLarge` will fail again unless the request is split.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader_addr:?})")]
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    #[error("the proposal queue is full")]
    Overloaded,
    #[error("raft stopped: {0}")]
    Stopped(String),
    #[error("the request's commands take {bytes} bytes; at most {max} fit in one log entry", max = limits::PROPOSAL_BYTES_MAX)]
    TooLarge { bytes: usize },
}

/// The leader's clock: wall time plus an offset (for fault injection), never going backwards
/// across entries, and never behind the time already applied (so a new leader continues from
/// its predecessor's stamps).
pub struct Clock {
    offset_ms: i64,
    last_ms: AtomicI64,
}

impl Clock {
    pub fn new(offset_ms: i64) -> Clock {
        Clock { offset_ms, last_ms: AtomicI64::new(0) }
    }

    /// Wall time plus the offset, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        wall.saturating_add(self.offset_ms)
    }

    /// A stamp for the next entry: `max(now, last stamp, applied time)`.
    pub fn stamp(&self, applied_ms: i64) -> i64 {
        let candidate = self.now_ms().max(applied_ms);
        let previous = self.last_ms.fetch_max(candidate, Ordering::AcqRel);
        candidate.max(previous)
    }
}

/// One request's commands and the one channel its outcomes go back on. A request is never
/// split: its commands land in one log entry, so they commit (or fail) together.
struct Pending {
    commands: Vec<ledger::pb::Command>,
    /// The commands' encoded size, for the entry's byte bound.
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<pb::CommandResult>, ProposeError>>,
    /// Its share of the queue's room, given back once the batcher takes the request.
    _room: OwnedSemaphorePermit,
}

/// Handle to the batcher. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
    /// The queue's bound, in commands (`PROPOSER_QUEUE_COMMANDS_MAX`).
    room: Arc<Semaphore>,
}

impl Proposer {
    /// `unsafe_ack_before_commit` is a deliberately broken mode for the jepsen harness: it
    /// answers from a speculative copy of the ledger before the entry is committed.
    pub fn start(raft: Raft, shared: Arc<Shared>, clock: Arc<Clock>, unsafe_ack_before_commit: bool) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, raft, shared, clock, unsafe_ack_before_commit));
        Proposer { tx, room: Arc::new(Semaphore::new(limits::PROPOSER_QUEUE_COMMANDS_MAX)) }
    }

    /// Orders `commands` (all in one log entry) and returns their outcomes, in order. Either
    /// every command is queued or none is.
    pub async fn propose(&self, commands: Vec<ledger::pb::Command>) -> Result<Vec<pb::CommandResult>, ProposeError> {
        let bytes: usize = commands.iter().map(Message::encoded_len).sum();
        if bytes > limits::PROPOSAL_BYTES_MAX {
            return Err(ProposeError::TooLarge { bytes });
        }
        let n = u32::try_from(commands.len()).map_err(|_| ProposeError::Overloaded)?;
        let room = self.room.clone().try_acquire_many_owned(n).map_err(|e| match e {
            TryAcquireError::NoPermits => ProposeError::Overloaded,
            TryAcquireError::Closed => ProposeError::Stopped("proposer stopped".into()),
        })?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { commands, bytes, reply, _room: room })
            .map_err(|_| ProposeError::Stopped("proposer stopped".into()))?;
        rx.await.map_err(|_| ProposeError::Stopped("proposer dropped the request".into()))?
    }
}

/// What a batch holds so far.
#[derive(Default)]
struct Size {
    commands: usize,
    bytes: usize,
}

impl Size {
    fn full(&self) -> bool {
        self.commands >= limits::BATCH_COMMANDS_MAX || self.bytes >= limits::BATCH_BYTES_MAX
    }
}

/// Takes whole requests off the queue while they fit in one entry (`BATCH_COMMANDS_MAX`
/// commands, `BATCH_BYTES_MAX` bytes; a larger request is an entry of its own). One that does
/// not fit waits in `carry` for the next.
fn fill(batch: &mut Vec<Pending>, size: &mut Size, carry: &mut Option<Pending>, next: Pending) {
    if size.commands + next.commands.len() > limits::BATCH_COMMANDS_MAX
        || size.bytes + next.bytes > limits::BATCH_BYTES_MAX
    {
        *carry = Some(next);
    } else {
        size.commands += next.commands.len();
        size.bytes += next.bytes;
        batch.push(next);
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    raft: Raft,
    shared: Arc<Shared>,
    clock: Arc<Clock>,
    unsafe_ack: bool,
) {
    let in_flight = Arc::new(Semaphore::new(limits::ENTRIES_IN_FLIGHT_MAX));
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut size = Size { commands: first.commands.len(), bytes: first.bytes };
        let mut batch = vec![first];
        while carry.is_none() {
            match rx.try_recv() {
                Ok(p) => fill(&mut batch, &mut size, &mut carry, p),
                Err(_) => break,
            }
        }
        // Linger only when the pipeline is busy: an idle cluster answers a lone bid at once.
        if carry.is_none() && !size.full() && in_flight.available_permits() < limits::ENTRIES_IN_FLIGHT_MAX {
            let deadline = tokio::time::Instant::now() + Duration::from_micros(limits::BATCH_LINGER_US);
            while carry.is_none() && !size.full() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => fill(&mut batch, &mut size, &mut carry, p),
                    _ => break,
                }
            }
        }
        let commands = size.commands;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let last_at_ms = match shared.ledger() {
            Ok(ledger) => ledger.last_at_ms(),
            Err(e) => {
                // The state machine is broken and raft halts on it: nothing can be proposed.
                for p in batch {
                    let _ = p.reply.send(Err(ProposeError::Stopped(e.to_string())));
                }
                continue;
            }
        };
        let at_ms = clock.stamp(last_at_ms);
        let raft = raft.clone();
        let mut all = Vec::with_capacity(commands);
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            replies.push((p.commands.len(), p.reply));
            all.extend(p.commands);
        }
        if unsafe_ack && raft.is_leader() {
            ack_before_commit(&shared, at_ms, &all, replies);
            tokio::spawn(async move {
                let _ = raft.client_write(Payload::new(pb::Proposal { at_ms, commands: all })).await;
                drop(permit);
            });
            continue;
        }
        tokio::spawn(async move {
            let result = raft.client_write(Payload::new(pb::Proposal { at_ms, commands: all })).await;
            drop(permit);
            deliver(result, replies);
        });
    }
}

/// Each request's command count and reply channel, in the entry's order.
type Replies = Vec<(usize, oneshot::Sender<Result<Vec<pb::CommandResult>, ProposeError>>)>;

/// UNSAFE: answers every command from a copy of the applied ledger, before replication. A
/// leader crash loses these acknowledged writes, and concurrent batches see stale state.
fn ack_before_commit(shared: &Shared, at_ms: i64, commands: &[ledger::pb::Command], replies: Replies) {
    let mut scratch = match shared.ledger() {
        Ok(ledger) => ledger.clone(),
        Err(e) => {
            for (_, reply) in replies {
                let _ = reply.send(Err(ProposeError::Stopped(e.to_string())));
            }
            return;
        }
    };
    let mut commands = commands.iter();
    for (n, reply) in replies {
        let results = commands
            .by_ref()
            .take(n)
            .map(|command| {
                let mut command = command.clone();
                command.at_ms = at_ms;
                let outcome = scratch.apply(&command).outcome;
                pb::CommandResult { log_index: 0, outcome: Some(outcome) }
            })
            .collect();
        let _ = reply.send(Ok(results));
    }
}

type WriteResult =
    Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

fn deliver(result: WriteResult, replies: Replies) {
    match result {
        Ok(response) => {
            let index = response.log_id.index;
            let mut outcomes = response.data.outcomes.into_iter();
            for (n, reply) in replies {
                let results: Vec<pb::CommandResult> = outcomes
                    .by_ref()
                    .take(n)
                    .map(|outcome| pb::CommandResult { log_index: index, outcome: Some(outcome) })
                    .collect();
                let result = if results.len() == n {
                    Ok(results)
                } else {
                    Err(ProposeError::Stopped("an entry returned fewer outcomes than commands".into()))
                };
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let error = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f)) => {
                    ProposeError::NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
                }
                RaftError::APIError(other) => ProposeError::Stopped(other.to_string()),
                RaftError::Fatal(fatal) => {
                    warn!(error = %fatal, "raft is fatal; refusing writes");
                    ProposeError::Stopped(fatal.to_string())
                }
            };
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
