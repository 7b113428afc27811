//! The write path: concurrent client commands coalesce into one log entry, so one fsync and
//! one replication round serve many bids (TigerBeetle-style batching), while every command
//! still gets its own outcome.
//!
//! Callers enqueue commands on a bounded queue. A single batcher drains what is waiting (up to
//! `BATCH_COMMANDS_MAX`, lingering `BATCH_LINGER_US` only while entries are already in flight),
//! stamps the batch with the leader's clock and hands it to openraft; up to
//! `ENTRIES_IN_FLIGHT_MAX` entries replicate concurrently.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::warn;

use crate::limits;
use crate::pb;
use crate::raft::TypeConfig;
use crate::store::{Raft, Shared};

/// Why a command could not be ordered. Every variant is safe to retry with the same ids.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader_addr:?})")]
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    #[error("the proposal queue is full")]
    Overloaded,
    #[error("raft stopped: {0}")]
    Stopped(String),
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

struct Pending {
    command: ledger::pb::Command,
    reply: oneshot::Sender<Result<pb::CommandResult, ProposeError>>,
}

/// Handle to the batcher. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// `unsafe_ack_before_commit` is a deliberately broken mode for the jepsen harness: it
    /// answers from a speculative copy of the ledger before the entry is committed.
    pub fn start(raft: Raft, shared: Arc<Shared>, clock: Arc<Clock>, unsafe_ack_before_commit: bool) -> Proposer {
        let (tx, rx) = mpsc::channel(limits::PROPOSER_QUEUE_COMMANDS_MAX);
        tokio::spawn(run(rx, raft, shared, clock, unsafe_ack_before_commit));
        Proposer { tx }
    }

    /// Orders `commands` and returns their outcomes, in order.
    pub async fn propose(&self, commands: Vec<ledger::pb::Command>) -> Result<Vec<pb::CommandResult>, ProposeError> {
        let mut replies = Vec::with_capacity(commands.len());
        for command in commands {
            let (reply, rx) = oneshot::channel();
            self.tx.try_send(Pending { command, reply }).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => ProposeError::Stopped("proposer stopped".into()),
            })?;
            replies.push(rx);
        }
        let mut results = Vec::with_capacity(replies.len());
        for rx in replies {
            results.push(rx.await.map_err(|_| ProposeError::Stopped("proposer dropped the command".into()))??);
        }
        Ok(results)
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, raft: Raft, shared: Arc<Shared>, clock: Arc<Clock>, unsafe_ack: bool) {
    let in_flight = Arc::new(Semaphore::new(limits::ENTRIES_IN_FLIGHT_MAX));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < limits::BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Linger only when the pipeline is busy: an idle cluster answers a lone bid at once.
        if batch.len() < limits::BATCH_COMMANDS_MAX && in_flight.available_permits() < limits::ENTRIES_IN_FLIGHT_MAX {
            let deadline = tokio::time::Instant::now() + Duration::from_micros(limits::BATCH_LINGER_US);
            while batch.len() < limits::BATCH_COMMANDS_MAX {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                }
            }
        }
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
        let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        if unsafe_ack && raft.is_leader() {
            ack_before_commit(&shared, at_ms, &commands, replies);
            tokio::spawn(async move {
                let _ = raft.client_write(pb::Proposal { at_ms, commands }).await;
                drop(permit);
            });
            continue;
        }
        tokio::spawn(async move {
            let result = raft.client_write(pb::Proposal { at_ms, commands }).await;
            drop(permit);
            deliver(result, replies);
        });
    }
}

/// UNSAFE: answers every command from a copy of the applied ledger, before replication. A
/// leader crash loses these acknowledged writes, and concurrent batches see stale state.
fn ack_before_commit(
    shared: &Shared,
    at_ms: i64,
    commands: &[ledger::pb::Command],
    replies: Vec<oneshot::Sender<Result<pb::CommandResult, ProposeError>>>,
) {
    let mut scratch = match shared.ledger() {
        Ok(ledger) => ledger.clone(),
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Stopped(e.to_string())));
            }
            return;
        }
    };
    for (command, reply) in commands.iter().zip(replies) {
        let mut command = command.clone();
        command.at_ms = at_ms;
        let outcome = scratch.apply(&command).outcome;
        let _ = reply.send(Ok(pb::CommandResult { log_index: 0, outcome: Some(outcome) }));
    }
}

type WriteResult =
    Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

fn deliver(result: WriteResult, replies: Vec<oneshot::Sender<Result<pb::CommandResult, ProposeError>>>) {
    match result {
        Ok(response) => {
            let index = response.log_id.index;
            let mut outcomes = response.data.outcomes.into_iter();
            for reply in replies {
                let result = match outcomes.next() {
                    Some(outcome) => Ok(pb::CommandResult { log_index: index, outcome: Some(outcome) }),
                    None => Err(ProposeError::Stopped("an entry returned fewer outcomes than commands".into())),
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
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
