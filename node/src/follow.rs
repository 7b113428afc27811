//! A resumable follower of the committed-event feed: it reads the feed after a checkpoint
//! through any reachable node, moves to another node when one fails, and checks that every
//! item is exactly the next index (a gap or a repeat is an error, never skipped).

use std::time::Duration;

use futures::FutureExt;
use tonic::Streaming;
use tracing::debug;

use crate::client::Client;
use crate::pb;

/// Why following stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no node addresses given")]
    NoNodes,
    #[error("feed gap: expected index {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
}

const BACKOFF_MIN_MS: u64 = 20;
const BACKOFF_MAX_MS: u64 = 1_000;

/// Follows the feed from a checkpoint. `next` never returns an item out of order.
pub struct Follower {
    addrs: Vec<String>,
    /// Which address to try next (rotates on failure).
    turn: usize,
    /// The last index handed out: the checkpoint.
    index: u64,
    stream: Option<Streaming<pb::FeedItem>>,
    backoff: Duration,
}

impl Follower {
    /// A follower that hands out items after `index_after`.
    pub fn new(addrs: Vec<String>, index_after: u64) -> Follower {
        Follower { addrs, turn: 0, index: index_after, stream: None, backoff: Duration::from_millis(BACKOFF_MIN_MS) }
    }

    /// The last index handed out.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The next feed item, waiting as long as it takes: node failures are retried on the
    /// other nodes with capped backoff. Errors only when the feed itself is inconsistent.
    pub async fn next(&mut self) -> Result<pb::FeedItem, FollowError> {
        if self.addrs.is_empty() {
            return Err(FollowError::NoNodes);
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                let addr = self.addrs[self.turn % self.addrs.len()].clone();
                match Client::subscribe(&addr, self.index).await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        debug!(%addr, error = %e, "feed subscribe failed; trying another node");
                        self.fail().await;
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(item)) => {
                    self.accept(&item)?;
                    self.backoff = Duration::from_millis(BACKOFF_MIN_MS);
                    return Ok(item);
                }
                Ok(None) => self.fail().await,
                Err(status) => {
                    debug!(error = %status, "feed stream failed; resuming on another node");
                    self.fail().await;
                }
            }
        }
    }

    /// The next item, waiting as [`Follower::next`] does, followed by as many more (up to
    /// `max` in all) as have already arrived: a subscriber applies them in one write.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<pb::FeedItem>, FollowError> {
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            // Only what is already buffered: `message()` is cancel-safe, so polling it once
            // and dropping it when nothing is ready loses nothing.
            let Some(stream) = self.stream.as_mut() else { break };
            match stream.message().now_or_never() {
                Some(Ok(Some(item))) => {
                    self.accept(&item)?;
                    batch.push(item);
                }
                // Not ready, or the stream ended or failed: `next` deals with that next time.
                Some(Ok(None)) | Some(Err(_)) => {
                    self.stream = None;
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    /// Takes `item` as the checkpoint if it is exactly the next index.
    fn accept(&mut self, item: &pb::FeedItem) -> Result<(), FollowError> {
        let expected = self.index + 1;
        if item.index != expected {
            self.stream = None;
            return Err(FollowError::Gap { expected, got: item.index });
        }
        self.index = item.index;
        Ok(())
    }

    async fn fail(&mut self) {
        self.stream = None;
        self.turn = self.turn.wrapping_add(1);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
    }
}
