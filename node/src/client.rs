//! The node client library: bootstrap from any node list, find the leader, follow
//! `not the leader` answers, retry with the same command ids and backoff, within a deadline.
//!
//! Retrying is always safe: bids are exactly-once by `(bidder, bid_id)` and every other
//! command is idempotent in the ledger.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::limits;
use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::client_service_client::ClientServiceClient;
use crate::server::LEADER_ADDR_HEADER;

/// Why a request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node answered within {0:?} (last error: {1})")]
    Deadline(Duration, String),
    #[error("request refused: {0}")]
    Refused(Status),
    #[error("bad node address {0}: {1}")]
    Address(String, String),
    #[error("the state export from {0} is unusable: {1}")]
    Export(String, String),
}

/// The whole ledger as of one applied log index ([`Client::export_state`]).
#[derive(Clone, Debug)]
pub struct StateExport {
    /// The state includes every entry up to this index and nothing after it.
    pub index: u64,
    /// The ledger's time at that index.
    pub at_ms: i64,
    pub ledger: ledger::Ledger,
}

/// A cluster client. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct Client {
    addrs: Vec<String>,
    /// One HTTP/2 channel per node, reused by every call (a channel multiplexes requests).
    channels: Mutex<HashMap<String, Channel>>,
    /// The node believed to lead, tried first.
    preferred: Mutex<Option<String>>,
    deadline: Duration,
}

const BACKOFF_MIN_MS: u64 = 10;
// Short: during a leader election every node answers "no leader" until one wins (a few
// hundred ms); a long backoff would add its own wait on top of the election.
const BACKOFF_MAX_MS: u64 = 100;

fn connect(addr: &str) -> Result<Channel, ClientError> {
    crate::network::channel(addr, None).map_err(|e| ClientError::Address(addr.to_owned(), e.to_string()))
}

/// Whether a failed call may succeed on another node or later.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled | Code::Unknown
    )
}

impl Client {
    /// A client for a cluster reachable at any of `addrs` (`host:port`).
    pub fn new(addrs: Vec<String>) -> Client {
        Client {
            addrs,
            channels: Mutex::new(HashMap::new()),
            preferred: Mutex::new(None),
            deadline: Duration::from_millis(limits::REQUEST_TIMEOUT_MS * 2),
        }
    }

    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels =
            self.channels.lock().map_err(|_| ClientError::Address(addr.to_owned(), "poisoned".into()))?;
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = connect(addr)?;
        channels.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    fn preferred(&self) -> Option<String> {
        self.preferred.lock().ok().and_then(|p| p.clone())
    }

    fn prefer(&self, addr: Option<String>) {
        if let Ok(mut p) = self.preferred.lock() {
            *p = addr;
        }
    }

    /// Runs `call` against nodes until one answers, following leader hints, until the deadline.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if self.addrs.is_empty() {
            return Err(ClientError::Deadline(Duration::ZERO, "no node addresses given".into()));
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(BACKOFF_MIN_MS);
        let mut next = 0usize;
        loop {
            let addr = self.preferred().unwrap_or_else(|| {
                next += 1;
                self.addrs[next % self.addrs.len()].clone()
            });
            let result = match self.channel(&addr) {
                Ok(channel) => call(channel).await,
                Err(e) => Err(Status::unavailable(e.to_string())),
            };
            match result {
                Ok(response) => {
                    // A follower that forwarded the call names the leader: go there next time
                    // and save the extra hop.
                    let leader =
                        response.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    self.prefer(Some(leader.unwrap_or(addr)));
                    return Ok(response.into_inner());
                }
                Err(status) if retryable(&status) => {
                    let hint =
                        status.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let last_error = format!("{addr}: {}", status.message());
                    let followed = hint.is_some() && hint.as_deref() != Some(addr.as_str());
                    self.prefer(hint.filter(|h| h != &addr));
                    if started.elapsed() >= self.deadline {
                        return Err(ClientError::Deadline(self.deadline, last_error));
                    }
                    if !followed {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
                    }
                }
                Err(status) => return Err(ClientError::Refused(status)),
            }
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_millis(limits::REQUEST_TIMEOUT_MS));
        request
    }

    fn client(channel: Channel) -> ClientServiceClient<Channel> {
        ClientServiceClient::new(channel)
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
    }

    /// Orders commands and returns each one's log index and outcome.
    pub async fn propose(&self, commands: Vec<ledger::pb::Command>) -> Result<Vec<pb::CommandResult>, ClientError> {
        self.with_retries(|ch| {
            let request = self.request(pb::ProposeRequest { commands: commands.clone() });
            async move { Self::client(ch).propose(request).await }
        })
        .await
        .map(|r| r.results)
    }

    /// Reads a lot (linearizable unless `stale`).
    pub async fn read_lot(
        &self,
        lot_id: &str,
        stale: bool,
        include_bids: bool,
    ) -> Result<pb::ReadLotResponse, ClientError> {
        self.read_lot_with(pb::ReadLotRequest {
            lot_id: lot_id.to_owned(),
            stale,
            include_bids,
            include_content: false,
        })
        .await
    }

    /// Reads a lot with the parts the request asks for.
    pub async fn read_lot_with(&self, req: pb::ReadLotRequest) -> Result<pb::ReadLotResponse, ClientError> {
        self.with_retries(|ch| {
            let request = self.request(req.clone());
            async move { Self::client(ch).read_lot(request).await }
        })
        .await
    }

    /// Reads the category tree (linearizable unless `stale`).
    pub async fn read_categories(&self, stale: bool) -> Result<pb::ReadCategoriesResponse, ClientError> {
        self.with_retries(|ch| {
            let request = self.request(pb::ReadCategoriesRequest { stale });
            async move { Self::client(ch).read_categories(request).await }
        })
        .await
    }

    /// Reads a committed image by id, or whether committed images hold `content_hash`.
    pub async fn read_image(&self, req: pb::ReadImageRequest) -> Result<pb::ReadImageResponse, ClientError> {
        self.with_retries(|ch| {
            let request = self.request(req.clone());
            async move { Self::client(ch).read_image(request).await }
        })
        .await
    }

    /// Reads a user by id or, when `user_id` is empty, by username.
    pub async fn read_user(
        &self,
        user_id: &str,
        username: &str,
        stale: bool,
    ) -> Result<pb::ReadUserResponse, ClientError> {
        self.with_retries(|ch| {
            let request =
                self.request(pb::ReadUserRequest { user_id: user_id.to_owned(), username: username.to_owned(), stale });
            async move { Self::client(ch).read_user(request).await }
        })
        .await
    }

    /// Reads an auction (linearizable unless `stale`).
    pub async fn read_auction(&self, auction_id: &str, stale: bool) -> Result<pb::ReadAuctionResponse, ClientError> {
        self.with_retries(|ch| {
            let request = self.request(pb::ReadAuctionRequest { auction_id: auction_id.to_owned(), stale });
            async move { Self::client(ch).read_auction(request).await }
        })
        .await
    }

    /// Subscribes to one node's committed-event feed after `from_index`.
    pub async fn subscribe(addr: &str, from_index: u64) -> Result<tonic::Streaming<pb::FeedItem>, ClientError> {
        let channel = connect(addr)?;
        Self::client(channel)
            .subscribe(pb::SubscribeRequest { from_index })
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Refused)
    }

    /// The whole ledger at one node's applied index ([`StateExport`]): where a subscriber
    /// whose position is below every node's feed start starts again.
    pub async fn export_state(addr: &str) -> Result<StateExport, ClientError> {
        let channel = connect(addr)?;
        let mut stream = Self::client(channel)
            .export_state(pb::ExportStateRequest {})
            .await
            .map_err(ClientError::Refused)?
            .into_inner();
        let mut head: Option<(u64, i64, u64)> = None;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(ClientError::Refused)? {
            let this = (chunk.index, chunk.at_ms, chunk.total_bytes);
            let (_, _, total) = *head.get_or_insert(this);
            let grows_past = bytes.len() as u64 + chunk.data.len() as u64 > total;
            if head != Some(this) || grows_past {
                return Err(ClientError::Export(addr.to_owned(), "its chunks disagree".into()));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let Some((index, at_ms, total)) = head else {
            return Err(ClientError::Export(addr.to_owned(), "it sent nothing".into()));
        };
        if bytes.len() as u64 != total {
            return Err(ClientError::Export(addr.to_owned(), format!("{} of {total} bytes arrived", bytes.len())));
        }
        let ledger =
            ledger::Ledger::decode_snapshot(&bytes).map_err(|e| ClientError::Export(addr.to_owned(), e.to_string()))?;
        Ok(StateExport { index, at_ms, ledger })
    }

    /// A state export at or above `floor` from the first of `addrs` that gives one (one pass;
    /// each node that fails or is below the floor is logged and skipped).
    pub async fn export_state_from_any(addrs: &[String], floor: u64) -> Option<StateExport> {
        for addr in addrs {
            match Self::export_state(addr).await {
                Ok(state) if state.index >= floor => return Some(state),
                Ok(state) => {
                    tracing::warn!(%addr, index = state.index, floor, "a state export below the feed's floor; skipped")
                }
                Err(e) => tracing::warn!(%addr, error = %e, "no state export from this node"),
            }
        }
        None
    }

    /// One node's metrics without the state digest (no retries: it is about that node).
    /// Cheap enough to poll; [`Client::metrics_with_digest`] hashes the node's whole ledger.
    pub async fn metrics(addr: &str) -> Result<pb::MetricsResponse, ClientError> {
        Self::admin_metrics(addr, true).await
    }

    /// One node's metrics with `state_digest`, to compare replicas. It hashes the node's whole
    /// ledger, holding up its apply meanwhile: not for polling under load.
    pub async fn metrics_with_digest(addr: &str) -> Result<pb::MetricsResponse, ClientError> {
        Self::admin_metrics(addr, false).await
    }

    async fn admin_metrics(addr: &str, skip_digest: bool) -> Result<pb::MetricsResponse, ClientError> {
        let channel = connect(addr)?;
        let mut request = tonic::Request::new(pb::MetricsRequest { skip_digest });
        request.set_timeout(Duration::from_millis(limits::REQUEST_TIMEOUT_MS));
        AdminServiceClient::new(channel).metrics(request).await.map(|r| r.into_inner()).map_err(ClientError::Refused)
    }

    /// Initialises a pristine cluster through `addr`.
    pub async fn init(addr: &str, members: Vec<pb::Node>) -> Result<bool, ClientError> {
        let channel = connect(addr)?;
        AdminServiceClient::new(channel)
            .init(pb::InitRequest { members })
            .await
            .map(|r| r.into_inner().initialized)
            .map_err(ClientError::Refused)
    }

    /// Adds a learner through the leader.
    pub async fn add_learner(&self, node: pb::Node) -> Result<pb::MembershipResponse, ClientError> {
        self.with_retries(|ch| {
            let request = pb::AddLearnerRequest { node: Some(node.clone()) };
            async move { AdminServiceClient::new(ch).add_learner(request).await }
        })
        .await
    }

    /// Replaces the voter set through the leader.
    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
        retain: bool,
    ) -> Result<pb::MembershipResponse, ClientError> {
        self.with_retries(|ch| {
            let request = pb::ChangeMembershipRequest { voters: voters.clone(), retain };
            async move { AdminServiceClient::new(ch).change_membership(request).await }
        })
        .await
    }
}
