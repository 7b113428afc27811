//! Commands from concurrent requests go to the cluster together: one `Propose` call carries
//! many, so HTTP throughput follows the cluster's batched figure rather than its
//! one-command-per-call figure.
//!
//! Requests wait on a bounded queue (full: `503 overloaded`). One task seals batches: when a
//! call slot is free it takes what is queued (up to `batch_commands_max`, and up to the node's
//! entry bound `node::limits::BATCH_BYTES_MAX` of encoded commands); while other batches
//! are still in flight it lingers up to `linger_us_max` for more, since the wait is hidden
//! behind theirs anyway. At most `batches_in_flight_max` calls run at once. Retries inside the
//! node client reuse the same commands, so a bid is still applied exactly once.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use ledger::pb::Command;
use node::Client;
use node::pb::CommandResult;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{AppError, code};
use crate::metrics::Metrics;

/// The batcher's bounds.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub batch_commands_max: usize,
    pub linger_us_max: u64,
    pub batches_in_flight_max: usize,
    pub queue_commands_max: usize,
}

impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits {
            batch_commands_max: 1024,
            linger_us_max: 500,
            batches_in_flight_max: 8,
            queue_commands_max: 16_384,
        }
    }
}

type Reply = oneshot::Sender<Result<CommandResult, AppError>>;

/// Handle for proposing one command; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Batcher {
    pub fn start(client: Arc<Client>, limits: BatchLimits, metrics: Arc<Metrics>) -> Batcher {
        let (tx, rx) = mpsc::channel(limits.queue_commands_max.max(1));
        tokio::spawn(run(rx, client, limits, metrics));
        Batcher { tx }
    }

    /// Orders one command through the cluster and returns its log index and outcome.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, AppError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((command, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code::OVERLOADED,
                "too many requests queued; retry shortly",
            ),
            mpsc::error::TrySendError::Closed(_) => AppError::unavailable("the gateway is shutting down"),
        })?;
        answer.await.map_err(|_| AppError::unavailable("the proposal was dropped; retry with the same ids"))?
    }
}

async fn run(
    mut rx: mpsc::Receiver<(Command, Reply)>,
    client: Arc<Client>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(limits.batches_in_flight_max.max(1)));
    let linger = Duration::from_micros(limits.linger_us_max);
    // A command that would take the batch past its byte bound starts the next one.
    let mut carry: Option<(Command, Reply)> = None;
    loop {
        let first = match carry.take() {
            Some(pending) => pending,
            None => match rx.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        let others_in_flight = slots.available_permits() + 1 < limits.batches_in_flight_max.max(1);
        let deadline = Instant::now() + if others_in_flight { linger } else { Duration::ZERO };
        while batch.len() < limits.batch_commands_max {
            let next = match rx.try_recv() {
                Ok(pending) => pending,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(pending)) => pending,
                    Ok(None) | Err(_) => break,
                },
            };
            let size = next.0.encoded_len();
            if bytes + size > node::limits::BATCH_BYTES_MAX {
                carry = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        metrics.batch_commands.observe(batch.len() as f64);
        let client = client.clone();
        tokio::spawn(async move {
            send(&client, batch).await;
            drop(slot);
        });
    }
}

/// One `Propose` call for the batch; every waiter gets its own result.
async fn send(client: &Client, batch: Vec<(Command, Reply)>) {
    let (commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
    let expected = commands.len();
    match client.propose(commands).await {
        Ok(results) if results.len() == expected => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(results) => {
            let message = format!("the cluster answered {} results for {expected} commands", results.len());
            for reply in replies {
                let _ = reply.send(Err(AppError::internal(message.clone())));
            }
        }
        Err(e) => {
            let error = AppError::from(e);
            for reply in replies {
                let _ = reply.send(Err(AppError::new(error.status, error.code, error.message.clone())));
            }
        }
    }
}
