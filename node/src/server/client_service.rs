//! The client API: proposals, reads (linearizable unless `stale`) and the event feed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{FEED_START_HEADER, LEADER_ADDR_HEADER, Services, is_forwarded, propose_status};
use crate::limits;
use crate::pb;
use crate::replica::NodeInner;

type FeedStream = Pin<Box<dyn Stream<Item = Result<pb::FeedItem, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::StateChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::client_service_server::ClientService for Services {
    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let commands = request.into_inner().commands;
        if commands.is_empty() || commands.len() > limits::PROPOSE_COMMANDS_MAX {
            return Err(Status::invalid_argument(format!("send 1 to {} commands", limits::PROPOSE_COMMANDS_MAX)));
        }
        // Writes through a follower are forwarded to the leader, once. Decided before
        // proposing, so the leader's path never copies the commands; leadership lost in
        // between is answered `not_leader` with the new leader, and the client retries there
        // with the same ids.
        if !forwarded && !self.node.raft.is_leader() {
            let (mut leader, addr) = self.leader_client()?;
            let mut response = leader.propose(Self::forward(pb::ProposeRequest { commands })).await?;
            // Tell the client who leads, so its next write skips this hop.
            if let Ok(value) = addr.parse() {
                response.metadata_mut().insert(LEADER_ADDR_HEADER, value);
            }
            return Ok(response);
        }
        match self.node.proposer.propose(commands).await {
            Ok(results) => Ok(Response::new(pb::ProposeResponse { results })),
            Err(e) => Err(propose_status(e)),
        }
    }

    async fn read_lot(&self, request: Request<pb::ReadLotRequest>) -> Result<Response<pb::ReadLotResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_lot(Self::forward(req)).await;
        }
        let (applied_index, ledger) = self.local_read()?;
        let lot = ledger.lot(&req.lot_id);
        Ok(Response::new(pb::ReadLotResponse {
            lot: lot.map(ledger::state::lot_view),
            bids: match lot {
                Some(l) if req.include_bids => l.history.iter().map(ledger::Ledger::history_record).collect(),
                _ => Vec::new(),
            },
            applied_index,
            stale: req.stale,
            reserve_price: lot.and_then(|l| l.book.reserve),
            leading_max: lot.and_then(|l| l.book.leader.as_ref().map(|x| x.max)),
            content: lot.filter(|_| req.include_content).map(|l| l.content.view(&l.lot_id)),
        }))
    }

    async fn read_categories(
        &self,
        request: Request<pb::ReadCategoriesRequest>,
    ) -> Result<Response<pb::ReadCategoriesResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_categories(Self::forward(req)).await;
        }
        let (applied_index, ledger) = self.local_read()?;
        let categories = ledger.category_views();
        Ok(Response::new(pb::ReadCategoriesResponse { categories, applied_index, stale: req.stale }))
    }

    async fn read_image(
        &self,
        request: Request<pb::ReadImageRequest>,
    ) -> Result<Response<pb::ReadImageResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_image(Self::forward(req)).await;
        }
        let (applied_index, ledger) = self.local_read()?;
        Ok(Response::new(pb::ReadImageResponse {
            image: if req.image_id.is_empty() { None } else { ledger.image(&req.image_id) },
            referenced: !req.content_hash.is_empty() && ledger.image_referenced(&req.content_hash),
            applied_index,
            stale: req.stale,
        }))
    }

    async fn read_user(&self, request: Request<pb::ReadUserRequest>) -> Result<Response<pb::ReadUserResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_user(Self::forward(req)).await;
        }
        let (applied_index, ledger) = self.local_read()?;
        let user = if req.user_id.is_empty() { ledger.user_by_name(&req.username) } else { ledger.user(&req.user_id) };
        Ok(Response::new(pb::ReadUserResponse {
            user: user.map(ledger::state::user_view),
            password_hash: user.map(|u| u.password_hash.clone()).unwrap_or_default(),
            applied_index,
            stale: req.stale,
        }))
    }

    async fn read_auction(
        &self,
        request: Request<pb::ReadAuctionRequest>,
    ) -> Result<Response<pb::ReadAuctionResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_auction(Self::forward(req)).await;
        }
        let (applied_index, ledger) = self.local_read()?;
        Ok(Response::new(pb::ReadAuctionResponse {
            auction: ledger.auction(&req.auction_id).map(ledger::state::auction_view),
            applied_index,
            stale: req.stale,
        }))
    }

    type SubscribeStream = FeedStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let from_index = request.into_inner().from_index;
        let start = self.node.shared.feed_start();
        if from_index < start {
            return Err(history_gone(from_index, start));
        }
        let (tx, rx) = mpsc::channel(limits::FEED_BUFFER_ITEMS);
        tokio::spawn(feed(self.node.clone(), from_index, tx, self.stopped.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportStateStream = ExportStream;

    async fn export_state(
        &self,
        _request: Request<pb::ExportStateRequest>,
    ) -> Result<Response<Self::ExportStateStream>, Status> {
        // Each export holds a copy of the ledger, then its encoding, until it is sent: bounded,
        // and the permit goes with the task, so a client that hangs up early does not free it
        // before the work is done.
        let Ok(permit) = self.node.exports.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "a state export is running on this node; retry shortly or elsewhere",
            ));
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(export(self.node.clone(), permit, tx, self.stopped.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the ledger at the applied index in chunks. Ends when the node stops, or when a chunk
/// waits longer than a request's deadline for a reader that stopped reading.
async fn export(
    node: Arc<NodeInner>,
    permit: tokio::sync::OwnedSemaphorePermit,
    tx: mpsc::Sender<Result<pb::StateChunk, Status>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let _permit = permit;
    let (index, at_ms, bytes) = match node.shared.export_state().await {
        Ok(state) => state,
        Err(e) => {
            let _ = tx.send(Err(Status::internal(format!("state export failed: {e}")))).await;
            return;
        }
    };
    let total_bytes = bytes.len() as u64;
    for data in bytes.chunks(limits::EXPORT_CHUNK_BYTES) {
        let chunk = pb::StateChunk { index, at_ms, total_bytes, data: data.to_vec() };
        let deadline = Duration::from_millis(limits::REQUEST_TIMEOUT_MS);
        tokio::select! {
            sent = tokio::time::timeout(deadline, tx.send(Ok(chunk))) => if !matches!(sent, Ok(Ok(()))) { return },
            _ = stopped.wait_for(|&s| s) => {
                let _ = tx.try_send(Err(Status::unavailable("the node is shutting down; export from another node")));
                return;
            }
        }
    }
}

/// A subscription from below this node's feed start: the items it asks for are not here (a
/// snapshot from the leader replaced them, or retention dropped them). Never a silent gap: the caller learns where the
/// feed starts and can resume on another node.
fn history_gone(from: u64, start: u64) -> Status {
    let mut status = Status::failed_precondition(format!(
        "history_gone: this node's feed holds the items after index {start}, not after {from}; \
         resume on another node"
    ));
    if let Ok(value) = start.to_string().parse() {
        status.metadata_mut().insert(FEED_START_HEADER, value);
    }
    status
}

/// Streams committed feed items after `cursor`, gap-free, until the client goes away. Reads
/// from the feed (its ring of recent items, or its files) in bounded steps; the bounded channel makes a slow client slow down its own
/// reader only.
async fn feed(
    node: Arc<NodeInner>,
    mut cursor: u64,
    tx: mpsc::Sender<Result<pb::FeedItem, Status>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = node.shared.watch_applied();
    loop {
        if *stopped.borrow() {
            let _ = tx.try_send(Err(Status::unavailable("the node is shutting down; resume on another node")));
            return;
        }
        let scanned_to = *applied.borrow_and_update();
        // A snapshot installed meanwhile may have replaced the items this stream still needs.
        let start = node.shared.feed_start();
        if cursor < start {
            let _ = tx.send(Err(history_gone(cursor, start))).await;
            return;
        }
        let shared = node.shared.clone();
        let after = cursor;
        let items = tokio::task::spawn_blocking(move || shared.feed_after(after, limits::FEED_READ_ITEMS_MAX)).await;
        let items = match items {
            Ok(Ok(items)) => items,
            Ok(Err(e)) => {
                let _ = tx.send(Err(Status::internal(format!("feed read failed: {e}")))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(format!("feed reader failed: {e}")))).await;
                return;
            }
        };
        let contiguous = items.first().is_none_or(|item| item.index == cursor + 1)
            && items.windows(2).all(|w| w[1].index == w[0].index + 1);
        if !contiguous {
            // Replaced between the check above and the read (an install, and a backfill's
            // items below its new start): say so rather than skip.
            let _ = tx.send(Err(history_gone(cursor, node.shared.feed_start()))).await;
            return;
        }
        let full_step = items.len() == limits::FEED_READ_ITEMS_MAX;
        for item in items {
            debug_assert!(item.index > cursor, "feed must move forward");
            cursor = item.index;
            tokio::select! {
                sent = tx.send(Ok(item)) => if sent.is_err() { return },
                _ = stopped.wait_for(|&s| s) => return,
            }
        }
        if full_step {
            continue;
        }
        // Caught up to what was applied when we looked: wait for more.
        let wait = applied.wait_for(|&index| index > scanned_to);
        tokio::select! {
            changed = wait => if changed.is_err() { return },
            _ = tx.closed() => return,
            _ = stopped.wait_for(|&s| s) => {},
        }
    }
}
