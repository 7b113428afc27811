//! A resumable follower of the committed-event feed: it reads the feed after a checkpoint
//! through any reachable node, moves to another node when one fails, and checks that every
//! item is exactly the next index (a gap or a repeat is an error, never skipped).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::FutureExt;
use tonic::Streaming;
use tracing::debug;

use crate::client::{Client, ClientError};
use crate::pb;
use crate::server::FEED_START_HEADER;

/// Why following stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no node addresses given")]
    NoNodes,
    #[error("feed gap: expected index {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    /// Every node's feed starts after the checkpoint: the items between are gone (replaced
    /// by snapshots). Following on would skip them; the caller must start again from a state.
    #[error("history gone: the items after index {after} are on no node (the nearest feed starts after {start})")]
    HistoryGone { after: u64, start: u64 },
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
    /// Nodes that answered "history gone" for the current checkpoint, with where their feed
    /// starts. When every node has, following cannot go on.
    gone: BTreeMap<String, u64>,
}

/// Where the refusing node's feed starts, if `status` is a "history gone" refusal.
fn feed_start(status: &tonic::Status) -> Option<u64> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    status.metadata().get(FEED_START_HEADER)?.to_str().ok()?.parse().ok()
}

impl Follower {
    /// A follower that hands out items after `index_after`.
    pub fn new(addrs: Vec<String>, index_after: u64) -> Follower {
        let backoff = Duration::from_millis(BACKOFF_MIN_MS);
        Follower { addrs, turn: 0, index: index_after, stream: None, backoff, gone: BTreeMap::new() }
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
                        if let ClientError::Refused(status) = &e {
                            self.note_gone(&addr, status)?;
                        }
                        self.fail().await;
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(item)) => {
                    self.accept(&item)?;
                    self.backoff = Duration::from_millis(BACKOFF_MIN_MS);
                    self.gone.clear();
                    return Ok(item);
                }
                Ok(None) => self.fail().await,
                Err(status) => {
                    debug!(error = %status, "feed stream failed; resuming on another node");
                    let addr = self.addrs[self.turn % self.addrs.len()].clone();
                    self.note_gone(&addr, &status)?;
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

    /// Records a "history gone" refusal; an error once every node has refused.
    fn note_gone(&mut self, addr: &str, status: &tonic::Status) -> Result<(), FollowError> {
        let Some(start) = feed_start(status) else { return Ok(()) };
        self.gone.insert(addr.to_owned(), start);
        if self.addrs.iter().all(|a| self.gone.contains_key(a)) {
            let start = self.gone.values().copied().min().unwrap_or(start);
            return Err(FollowError::HistoryGone { after: self.index, start });
        }
        Ok(())
    }

    async fn fail(&mut self) {
        self.stream = None;
        self.turn = self.turn.wrapping_add(1);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    fn gone(start: u64) -> tonic::Status {
        let mut status = tonic::Status::failed_precondition("history_gone");
        status.metadata_mut().insert(FEED_START_HEADER, start.to_string().parse().unwrap());
        status
    }

    #[test]
    fn a_follower_stops_only_when_every_node_has_refused_its_position() {
        let mut f = Follower::new(vec!["a:1".into(), "b:1".into()], 7);
        // Other failures, or a refusal without the header, are only reasons to move on.
        f.note_gone("a:1", &tonic::Status::unavailable("down")).unwrap();
        f.note_gone("b:1", &tonic::Status::failed_precondition("no header")).unwrap();
        f.note_gone("a:1", &gone(40)).unwrap();
        match f.note_gone("b:1", &gone(25)) {
            Err(FollowError::HistoryGone { after: 7, start: 25 }) => {}
            other => panic!("both nodes refused: {other:?}"),
        }
        // An item accepted in between starts the count again.
        let mut f = Follower::new(vec!["a:1".into(), "b:1".into()], 7);
        f.note_gone("a:1", &gone(40)).unwrap();
        f.accept(&pb::FeedItem { index: 8, at_ms: 0, events: vec![] }).unwrap();
        f.gone.clear();
        f.note_gone("b:1", &gone(40)).unwrap();
    }
}
