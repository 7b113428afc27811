//! A resumable feed subscriber: follows the committed-event feed from a handler's checkpoint,
//! hands it items in gap-checked batches, retries transient failures with capped backoff and
//! parks an item its handler refuses for good in the handler's dead-letter store, then goes on.
//! Every read model (catalog, search, the gateway's fan-out) runs on this one loop. When the
//! items after its checkpoint are gone from every node (feed retention), a handler that can
//! start from a [`StateExport`] is handed one and the loop goes on after its index.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::client::{Client, StateExport};
use crate::follow::{FollowError, Follower};
use crate::pb::FeedItem;

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Worth retrying as is (a store briefly unavailable): the same items are offered again.
    #[error("transient: {0}")]
    Transient(String),
    /// Retrying cannot help (the item contradicts what the handler holds): it is parked.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A read model fed by a [`Subscriber`]. Handlers must be idempotent by log index: an item at
/// or below their checkpoint changes nothing.
pub trait Handler: Send {
    /// The index of the last item applied or parked (0: nothing yet).
    fn checkpoint(&mut self) -> impl Future<Output = Result<u64, HandleError>> + Send;

    /// Applies consecutive items and moves the checkpoint to the last of them, all or nothing.
    fn apply(&mut self, items: &[FeedItem]) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Stores `item` as a dead letter with `error` and moves the checkpoint to it, atomically.
    fn park(&mut self, item: &FeedItem, error: &str) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Replaces the whole model with `state` and moves the checkpoint to `state.index`, all
    /// or nothing: how the subscriber goes on when the items after the checkpoint are gone
    /// from every node. By default a handler cannot, and the subscriber stops.
    fn bootstrap(&mut self, state: Arc<StateExport>) -> impl Future<Output = Result<(), HandleError>> + Send {
        let _ = state;
        async { Err(HandleError::Permanent(NO_BOOTSTRAP.to_owned())) }
    }

    /// Whether `bootstrap` is implemented: a subscriber fetches no state for a handler that
    /// would refuse it.
    fn can_bootstrap(&self) -> bool {
        false
    }
}

const NO_BOOTSTRAP: &str = "this read model cannot start from a state export";

/// A handler whose calls block (a store's disk I/O, a model's inference). Wrapped in
/// [`OnBlockingPool`] it is a [`Handler`] whose calls run on tokio's blocking pool.
pub trait BlockingHandler: Send + Sync + 'static {
    fn checkpoint(&self) -> Result<u64, HandleError>;
    fn apply(&self, items: &[FeedItem]) -> Result<(), HandleError>;
    fn park(&self, item: &FeedItem, error: &str) -> Result<(), HandleError>;
    /// [`Handler::bootstrap`]; by default a handler cannot.
    fn bootstrap(&self, state: &StateExport) -> Result<(), HandleError> {
        let _ = state;
        Err(HandleError::Permanent(NO_BOOTSTRAP.to_owned()))
    }
    /// [`Handler::can_bootstrap`].
    fn can_bootstrap(&self) -> bool {
        false
    }
}

/// Runs a shared [`BlockingHandler`] on tokio's blocking pool. A panic while applying is a
/// bug the items trigger: they are parked rather than retried forever.
pub struct OnBlockingPool<T>(pub Arc<T>);

fn join_error(e: tokio::task::JoinError) -> HandleError {
    HandleError::Transient(e.to_string())
}

impl<T: BlockingHandler> Handler for OnBlockingPool<T> {
    async fn checkpoint(&mut self) -> Result<u64, HandleError> {
        let handler = self.0.clone();
        tokio::task::spawn_blocking(move || handler.checkpoint()).await.map_err(join_error)?
    }

    async fn apply(&mut self, items: &[FeedItem]) -> Result<(), HandleError> {
        let handler = self.0.clone();
        let items = items.to_vec();
        match tokio::task::spawn_blocking(move || handler.apply(&items)).await {
            Ok(result) => result,
            Err(e) => Err(HandleError::Permanent(format!("the handler panicked: {e}"))),
        }
    }

    async fn park(&mut self, item: &FeedItem, error: &str) -> Result<(), HandleError> {
        let handler = self.0.clone();
        let (item, error) = (item.clone(), error.to_owned());
        tokio::task::spawn_blocking(move || handler.park(&item, &error)).await.map_err(join_error)?
    }

    async fn bootstrap(&mut self, state: Arc<StateExport>) -> Result<(), HandleError> {
        let handler = self.0.clone();
        tokio::task::spawn_blocking(move || handler.bootstrap(&state)).await.map_err(join_error)?
    }

    fn can_bootstrap(&self) -> bool {
        self.0.can_bootstrap()
    }
}

/// A feed item a handler could not apply, kept with the reason, as read models store it.
/// Its id is its log index. Stored as protobuf: tags are never renumbered or reused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeadLetter {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    #[prost(string, tag = "3")]
    pub error: String,
    /// How many times it was tried (1 when first parked).
    #[prost(uint32, tag = "4")]
    pub attempts: u32,
    /// The `node::pb::FeedItem`, encoded, so a retry applies exactly what was refused.
    #[prost(bytes = "vec", tag = "5")]
    pub item: Vec<u8>,
}

/// Where a subscriber stands, published after every batch (for lag metrics and reads that
/// wait for their own write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last index applied or parked.
    pub index: u64,
    /// The leader's timestamp of that entry (after a start from a state: the ledger's time
    /// then, the latest command's).
    pub at_ms: i64,
    /// Items parked as dead letters since start.
    pub parked: u64,
    /// Transient failures retried since start.
    pub retries: u64,
    /// True once the subscriber stopped on an inconsistent feed: it will not move again.
    pub broken: bool,
    /// The index of the last state export the handler started from, if any.
    pub bootstrapped_at: Option<u64>,
}

/// Why a subscriber stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Feed(#[from] FollowError),
    /// The feed after the checkpoint is gone and the handler could not start from a state.
    #[error("{gone}; and the handler cannot start from a state export: {reason}")]
    Bootstrap { gone: FollowError, reason: String },
}

/// Items handed to a handler at most at once.
pub const BATCH_MAX: usize = 1_024;
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Drives one handler from the feed.
pub struct Subscriber<H> {
    addrs: Vec<String>,
    handler: H,
    progress: watch::Sender<Progress>,
    /// Stop after this index (a rebuild up to a known point); `None` follows forever.
    until: Option<u64>,
    /// Items handed to the handler at most at once.
    batch_max: usize,
}

impl<H: Handler> Subscriber<H> {
    pub fn new(addrs: Vec<String>, handler: H) -> Subscriber<H> {
        Subscriber {
            addrs,
            handler,
            progress: watch::Sender::new(Progress::default()),
            until: None,
            batch_max: BATCH_MAX,
        }
    }

    /// Hands the handler at most `items` at once (default [`BATCH_MAX`]): a handler whose
    /// items are expensive (search embeds each lot) commits, and shows progress, more often.
    pub fn batch_max(mut self, items: usize) -> Subscriber<H> {
        self.batch_max = items.max(1);
        self
    }

    /// Stops once the item at `index` is applied.
    pub fn until(mut self, index: u64) -> Subscriber<H> {
        self.until = Some(index);
        self
    }

    /// Progress updates, current from the moment the subscriber runs.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs until `stop` turns true, the `until` index is reached, or the feed is inconsistent.
    /// Returns the handler, so a caller can read or close its store.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<H, SubscribeError> {
        let mut delay = RETRY_MIN;
        let start = loop {
            match self.handler.checkpoint().await {
                Ok(index) => break index,
                Err(e) => {
                    if !self.backoff(&e, &mut delay, &mut stop).await {
                        return Ok(self.handler);
                    }
                }
            }
        };
        self.progress.send_modify(|p| p.index = start);
        let mut follower = Follower::new(self.addrs.clone(), start);
        // Starts from a state export since the last item delivered, and the pause before the
        // next one.
        let (mut starts_in_a_row, mut starts_delay) = (0u32, RETRY_MIN);
        loop {
            if self.until.is_some_and(|u| follower.index() >= u) {
                return Ok(self.handler);
            }
            let max = self.batch_max;
            let room = self.until.map_or(max, |u| (u - follower.index()).min(max as u64) as usize);
            let batch = tokio::select! {
                batch = follower.next_batch(room) => batch,
                _ = stop.wait_for(|&s| s) => return Ok(self.handler),
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(gone @ FollowError::HistoryGone { start, .. }) => {
                    // Started from a state and lost the feed again before a single item: the
                    // feed's retention is shorter than a start from a state takes. Not at
                    // full speed, and said loudly.
                    if starts_in_a_row > 0 {
                        if starts_in_a_row >= 3 {
                            error!(
                                starts_in_a_row,
                                "the feed is dropped faster than this read model can start from a state; raise the nodes' feed retention"
                            );
                        }
                        if !pause(starts_delay, &mut stop).await {
                            return Ok(self.handler);
                        }
                        starts_delay = (starts_delay * 2).min(RETRY_MAX);
                    }
                    match self.bootstrap(&gone, start, &mut stop).await {
                        Some(Ok(index)) => {
                            starts_in_a_row += 1;
                            follower = Follower::new(self.addrs.clone(), index);
                            continue;
                        }
                        Some(Err(reason)) => {
                            error!(error = %gone, %reason, "feed subscriber stopped: no state to start from");
                            self.progress.send_modify(|p| p.broken = true);
                            return Err(SubscribeError::Bootstrap { gone, reason });
                        }
                        None => return Ok(self.handler),
                    }
                }
                Err(e) => {
                    error!(error = %e, "feed subscriber stopped: the feed is inconsistent");
                    self.progress.send_modify(|p| p.broken = true);
                    return Err(e.into());
                }
            };
            if !batch.is_empty() {
                starts_in_a_row = 0;
                starts_delay = RETRY_MIN;
            }
            if !self.deliver(&batch, &mut stop).await {
                return Ok(self.handler);
            }
        }
    }

    /// Fetches a state export from the first node that serves one and hands it to the handler.
    /// `Some(Ok(index))` once the handler holds it; `Some(Err)` when the handler refuses it for
    /// good; `None` when stopped. Unreachable nodes and transient failures are retried.
    /// A state below `floor` (the lowest feed start the nodes named) is skipped: the feed after
    /// it is gone too. `handler.bootstrap` itself is not cut short by `stop`: all or nothing.
    async fn bootstrap(
        &mut self,
        gone: &FollowError,
        floor: u64,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<u64, String>> {
        if !self.handler.can_bootstrap() {
            return Some(Err(NO_BOOTSTRAP.to_owned()));
        }
        if self.until.is_some() {
            return Some(Err("a subscriber that stops at an index does not start from a state export".to_owned()));
        }
        warn!(error = %gone, "the feed after this subscriber's position is gone; starting from a state export");
        let mut delay = RETRY_MIN;
        loop {
            let export = tokio::select! {
                export = Client::export_state_from_any(&self.addrs, floor) => export,
                _ = stop.wait_for(|&s| s) => return None,
            };
            if let Some(state) = export {
                let (index, at_ms) = (state.index, state.at_ms);
                match self.handler.bootstrap(Arc::new(state)).await {
                    Ok(()) => {
                        info!(index, "feed subscriber started from a state export");
                        self.progress.send_modify(|p| {
                            p.index = index;
                            p.at_ms = at_ms;
                            p.bootstrapped_at = Some(index);
                        });
                        return Some(Ok(index));
                    }
                    Err(HandleError::Permanent(reason)) => return Some(Err(reason)),
                    Err(HandleError::Transient(reason)) => {
                        warn!(%reason, "starting from a state export failed; retrying")
                    }
                }
            }
            self.progress.send_modify(|p| p.retries += 1);
            if !pause(delay, stop).await {
                return None;
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    /// Applies a batch; a permanent failure is narrowed down to the items that cause it, which
    /// are parked while the rest are applied. False when stopped meanwhile.
    async fn deliver(&mut self, batch: &[FeedItem], stop: &mut watch::Receiver<bool>) -> bool {
        let Some(outcome) = self.retry_apply(batch, stop).await else { return false };
        match outcome {
            Ok(()) => self.advanced(batch, 0),
            Err(_) if batch.len() > 1 => {
                for item in batch {
                    let Some(outcome) = self.retry_apply(std::slice::from_ref(item), stop).await else { return false };
                    match outcome {
                        Ok(()) => self.advanced(std::slice::from_ref(item), 0),
                        Err(reason) => {
                            if !self.park(item, &reason, stop).await {
                                return false;
                            }
                        }
                    }
                }
            }
            Err(reason) => return self.park(&batch[0], &reason, stop).await,
        }
        true
    }

    async fn park(&mut self, item: &FeedItem, reason: &str, stop: &mut watch::Receiver<bool>) -> bool {
        warn!(index = item.index, error = %reason, "feed item parked as a dead letter");
        let mut delay = RETRY_MIN;
        while let Err(e) = self.handler.park(item, reason).await {
            if !self.backoff(&e, &mut delay, stop).await {
                return false;
            }
        }
        self.advanced(std::slice::from_ref(item), 1);
        true
    }

    fn advanced(&self, items: &[FeedItem], parked: u64) {
        if let Some(last) = items.last() {
            self.progress.send_modify(|p| {
                p.index = last.index;
                p.at_ms = last.at_ms;
                p.parked += parked;
            });
        }
    }

    /// `apply`, retried while it fails transiently. `None` when stopped; `Some(Err)` carries
    /// a permanent refusal.
    async fn retry_apply(
        &mut self,
        items: &[FeedItem],
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Result<(), String>> {
        let mut delay = RETRY_MIN;
        loop {
            match self.handler.apply(items).await {
                Ok(()) => return Some(Ok(())),
                Err(HandleError::Permanent(reason)) => return Some(Err(reason)),
                Err(HandleError::Transient(reason)) => {
                    warn!(error = %reason, retry_in_ms = delay.as_millis() as u64, "feed handler failed; retrying");
                    self.progress.send_modify(|p| p.retries += 1);
                    if !pause(delay, stop).await {
                        return None;
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Logs a failure of the handler's own store (checkpoint, dead letters) and waits before
    /// the next attempt: there is nowhere else to put such an error. False when stopped.
    async fn backoff(&self, e: &HandleError, delay: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
        error!(error = %e, retry_in_ms = delay.as_millis() as u64, "feed handler's store failed; retrying");
        self.progress.send_modify(|p| p.retries += 1);
        let go_on = pause(*delay, stop).await;
        *delay = (*delay * 2).min(RETRY_MAX);
        go_on
    }
}

/// Sleeps `delay` unless `stop` turns true first (then false).
async fn pause(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.wait_for(|&s| s) => false,
    }
}
