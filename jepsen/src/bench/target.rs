//! What the load driver talks to: a Gavel cluster through the node client library, or an etcd
//! cluster doing proxy bidding the way a team would build it on etcd (read the lot's state,
//! apply the same rules, compare-and-swap on the key's revision, retry on conflict).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use ledger::bidding::{Book, Leader};
use ledger::ladder::Ladder;
use ledger::pb::{self as lp, command::Body, outcome::Result as Res};
use ledger::{Currency, Rejection};

/// One operation of a workload.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Bid { lot: usize, bidder: usize, max: i64 },
    Read { lot: usize },
}

/// How an operation ended when the system answered.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The bid was accepted and is committed.
    Accepted,
    /// Refused by the auction rules (still an answer; the code says why).
    Rejected(String),
    Read,
}

/// No answer: the error class (for "errors by code").
pub type Failure = String;

pub const START_PRICE: i64 = 10_000;

pub fn lot_id(lot: usize) -> String {
    format!("lot-{lot}")
}

pub fn bidder_id(bidder: usize) -> String {
    format!("bidder{bidder}")
}

pub enum Target {
    Gavel(Gavel),
    Http(Http),
    Etcd(Etcd),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Gavel(_) => "gavel",
            Target::Http(_) => "http",
            Target::Etcd(_) => "etcd",
        }
    }

    pub async fn perform(&self, op: Op) -> Result<Outcome, Failure> {
        match self {
            Target::Gavel(g) => g.perform(op).await,
            Target::Http(h) => h.perform(op).await,
            Target::Etcd(e) => e.perform(op).await,
        }
    }
}

/// Gavel through `node::Client`: one bid per request, as a bidder's client would send it;
/// or, with `batch > 1`, bids from many clients gathered into one request the way a gateway
/// in front of the cluster would (each bid still has its own outcome and latency).
pub struct Gavel {
    client: Arc<node::Client>,
    seq: AtomicU64,
    batcher: Option<mpsc::Sender<Pending>>,
}

type Pending = (lp::Command, oneshot::Sender<Result<Outcome, Failure>>);

/// Requests a batching gateway keeps in flight at once.
const BATCH_SENDERS: usize = 16;

impl Gavel {
    pub fn new(addrs: Vec<String>, deadline: Duration, batch: usize) -> Gavel {
        let client = Arc::new(node::Client::new(addrs).with_deadline(deadline));
        let batcher = (batch > 1).then(|| {
            let (tx, rx) = mpsc::channel::<Pending>(batch * BATCH_SENDERS * 4);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            for _ in 0..BATCH_SENDERS {
                tokio::spawn(send_batches(client.clone(), rx.clone(), batch));
            }
            tx
        });
        Gavel { client, seq: AtomicU64::new(0), batcher }
    }

    async fn perform(&self, op: Op) -> Result<Outcome, Failure> {
        match op {
            Op::Read { lot } => match self.client.read_lot(&lot_id(lot), false, false).await {
                Ok(_) => Ok(Outcome::Read),
                Err(e) => Err(failure(&e)),
            },
            Op::Bid { lot, bidder, max } => {
                let bid_id = format!("b{}", self.seq.fetch_add(1, Ordering::Relaxed));
                let command = lp::Command {
                    at_ms: 0,
                    log_index: 0,
                    actor: bidder_id(bidder),
                    body: Some(Body::PlaceBid(lp::PlaceBid { lot_id: lot_id(lot), bid_id, max_amount: max })),
                };
                if let Some(batcher) = &self.batcher {
                    let (tx, rx) = oneshot::channel();
                    batcher.send((command, tx)).await.map_err(|_| "batcher_gone")?;
                    return rx.await.map_err(|_| "batcher_gone")?;
                }
                match self.client.propose(vec![command]).await {
                    Ok(results) => outcome(results.first()),
                    Err(e) => Err(failure(&e)),
                }
            }
        }
    }
}

fn outcome(result: Option<&node::pb::CommandResult>) -> Result<Outcome, Failure> {
    match result.and_then(|r| r.outcome.as_ref()).and_then(|o| o.result.as_ref()) {
        Some(Res::Bid(_)) => Ok(Outcome::Accepted),
        Some(Res::Rejected(r)) => Ok(Outcome::Rejected(r.code.clone())),
        _ => Err("no_outcome".into()),
    }
}

/// One gateway sender: waits for a bid, takes whatever else is queued (up to `batch`), sends
/// them as one request and answers each bid.
async fn send_batches(client: Arc<node::Client>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>, batch: usize) {
    let mut pending: Vec<Pending> = Vec::with_capacity(batch);
    loop {
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut pending, batch).await == 0 {
                return;
            }
        }
        let (commands, answers): (Vec<_>, Vec<_>) = pending.drain(..).unzip();
        match client.propose(commands).await {
            Ok(results) => {
                for (i, answer) in answers.into_iter().enumerate() {
                    let _ = answer.send(outcome(results.get(i)));
                }
            }
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(failure(&e)));
                }
            }
        }
    }
}

fn failure(e: &node::ClientError) -> Failure {
    match e {
        node::ClientError::Deadline(..) => "deadline".into(),
        node::ClientError::Refused(status) => format!("grpc_{:?}", status.code()).to_lowercase(),
        node::ClientError::Address(..) => "address".into(),
        node::ClientError::Export(..) => "export".into(),
    }
}

/// Gavel through its HTTP gateway (`gavel gateway`), as bidders' browsers and apps reach it:
/// JSON over keep-alive HTTP/1.1 connections, each bidder with a real JWT. The gateway gathers
/// concurrent bids into `Propose` batches itself.
pub struct Http {
    http: reqwest::Client,
    url: String,
    /// A bearer token per bidder index.
    tokens: Vec<String>,
    seq: AtomicU64,
}

impl Http {
    pub fn new(url: String, tokens: Vec<String>, deadline: Duration) -> Result<Http, reqwest::Error> {
        // No redirects and no retries: every attempt is one measured request.
        let http = reqwest::Client::builder()
            .timeout(deadline)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .build()?;
        Ok(Http { http, url, tokens, seq: AtomicU64::new(0) })
    }

    /// Opens `connections` keep-alive connections to the gateway (as many requests at once),
    /// so the measurement starts with the pool a live sale's bidders would already have rather
    /// than with hundreds of TCP and HTTP handshakes in its first second.
    pub async fn warm(&self, connections: usize) -> Result<(), reqwest::Error> {
        let url = format!("{}/healthz", self.url);
        let requests = (0..connections).map(|_| self.http.get(&url).send());
        for answer in futures::future::join_all(requests).await {
            answer?.error_for_status()?;
        }
        Ok(())
    }

    async fn perform(&self, op: Op) -> Result<Outcome, Failure> {
        let request = match op {
            Op::Read { lot } => self.http.get(format!("{}/v1/lots/{}", self.url, lot_id(lot))),
            Op::Bid { lot, bidder, max } => {
                let token = self.tokens.get(bidder).ok_or("no_token")?;
                let bid_id = format!("b{}", self.seq.fetch_add(1, Ordering::Relaxed));
                // The body written directly: the ids are plain ASCII, the amount a number.
                self.http
                    .post(format!("{}/v1/lots/{}/bids", self.url, lot_id(lot)))
                    .bearer_auth(token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(format!(r#"{{"bid_id":"{bid_id}","max_amount":{max}}}"#))
            }
        };
        let response = request
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "timeout".to_owned() } else { "http_send".to_owned() })?;
        let status = response.status();
        // Read whole either way (the connection goes back to the pool only then); parsed only
        // for the error code a refusal carries.
        let bytes = response.bytes().await.map_err(|_| "http_body".to_owned())?;
        match (op, status.as_u16()) {
            (Op::Read { .. }, 200) => return Ok(Outcome::Read),
            (Op::Bid { .. }, 200) => return Ok(Outcome::Accepted),
            _ => {}
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| "http_body".to_owned())?;
        match (op, status.as_u16()) {
            (Op::Bid { .. }, 400 | 403 | 404 | 409) => {
                Ok(Outcome::Rejected(body["error"]["code"].as_str().unwrap_or("unknown").to_owned()))
            }
            (_, code) => Err(format!("http_{code}_{}", body["error"]["code"].as_str().unwrap_or(""))),
        }
    }
}

/// etcd: each lot is a key holding its book; a bid is `get` + the ledger's own rules + one
/// transaction comparing the key's `mod_revision`, retried on conflict with the state the
/// failed transaction returned. Bidders and bid ids are not deduplicated (that would cost etcd
/// more; Gavel does it).
///
/// Built as a team would: the first read is serializable (served by the member it reaches,
/// without a round of consensus) because the compare-and-swap rejects a stale read anyway, and
/// requests spread over `ETCD_CONNECTIONS` HTTP/2 connections rather than one per member.
pub struct Etcd {
    clients: Vec<etcd_client::Client>,
    next: AtomicU64,
    ladder: Ladder,
}

/// Attempts per bid before giving up on a hot key.
const CAS_ATTEMPTS: usize = 64;
/// Client connections, spread over the members: one HTTP/2 connection per member caps what
/// 256 concurrent clients get through.
const ETCD_CONNECTIONS: usize = 8;

impl Etcd {
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Etcd, etcd_client::Error> {
        // Each connection to one member: the crate does not fail over between endpoints by
        // itself, so requests rotate over them and a dead one only fails its share, retried.
        let mut clients = Vec::new();
        for endpoint in endpoints.iter().cycle().take(ETCD_CONNECTIONS.max(endpoints.len())) {
            let options = etcd_client::ConnectOptions::new().with_timeout(timeout).with_connect_timeout(timeout);
            clients.push(etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?);
        }
        let ladder =
            Ladder::default_for(Currency::USD).ok_or_else(|| etcd_client::Error::InvalidArgs("ladder".into()))?;
        Ok(Etcd { clients, next: AtomicU64::new(0), ladder })
    }

    fn client(&self) -> etcd_client::Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.clients.len();
        self.clients[i].clone()
    }

    /// Creates the lots (an empty book each).
    pub async fn setup(&self, lots: usize) -> Result<(), etcd_client::Error> {
        let mut client = self.client();
        for chunk in (0..lots).collect::<Vec<_>>().chunks(100) {
            let puts: Vec<TxnOp> =
                chunk.iter().map(|l| TxnOp::put(lot_id(*l), encode(&Book::new(START_PRICE, None)), None)).collect();
            client.txn(Txn::new().and_then(puts)).await?;
        }
        Ok(())
    }

    async fn perform(&self, op: Op) -> Result<Outcome, Failure> {
        let mut client = self.client();
        match op {
            Op::Read { lot } => client.get(lot_id(lot), None).await.map(|_| Outcome::Read).map_err(etcd_failure),
            Op::Bid { lot, bidder, max } => {
                let key = lot_id(lot);
                let bidder: Arc<str> = bidder_id(bidder).into();
                let bid_id: Arc<str> = format!("b{}", self.next.fetch_add(1, Ordering::Relaxed)).into();
                let serializable = etcd_client::GetOptions::new().with_serializable();
                let got = client.get(key.as_str(), Some(serializable)).await.map_err(etcd_failure)?;
                let Some(kv) = got.kvs().first() else { return Err("no_lot".into()) };
                let (mut value, mut revision) = (kv.value().to_vec(), kv.mod_revision());
                for _ in 0..CAS_ATTEMPTS {
                    let mut book = decode(&value).ok_or("bad_value")?;
                    if let Err(rejection) = book.place(&self.ladder, &bidder, &bid_id, max) {
                        return Ok(Outcome::Rejected(code(&rejection)));
                    }
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)])
                        .and_then([TxnOp::put(key.as_str(), encode(&book), None)])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    let answer = client.txn(txn).await.map_err(etcd_failure)?;
                    if answer.succeeded() {
                        return Ok(Outcome::Accepted);
                    }
                    // Lost the race: the failed transaction carries the current state.
                    let current = answer.op_responses().into_iter().find_map(|r| match r {
                        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                        _ => None,
                    });
                    (value, revision) = current.ok_or("no_lot")?;
                }
                Err("cas_exhausted".into())
            }
        }
    }

    /// The member id of the current leader and each member's client URL.
    pub async fn leader(&self) -> Result<(u64, Vec<(u64, String)>), etcd_client::Error> {
        let mut last = None;
        for c in &self.clients {
            let mut c = c.clone();
            match (c.status().await, c.member_list().await) {
                (Ok(status), Ok(members)) => {
                    let urls = members
                        .members()
                        .iter()
                        .map(|m| (m.id(), m.client_urls().first().cloned().unwrap_or_default()))
                        .collect();
                    return Ok((status.leader(), urls));
                }
                (Err(e), _) | (_, Err(e)) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no endpoints".into())))
    }
}

fn etcd_failure(e: etcd_client::Error) -> Failure {
    match e {
        etcd_client::Error::GRpcStatus(status) => format!("grpc_{:?}", status.code()).to_lowercase(),
        etcd_client::Error::TransportError(_) => "transport".into(),
        _ => "etcd_other".into(),
    }
}

fn code(rejection: &Rejection) -> String {
    rejection.code.as_str().to_owned()
}

/// `price;reserve;start;bidder;bid_id;max` (empty leader fields when there is none).
fn encode(book: &Book) -> String {
    let reserve = book.reserve.map(|r| r.to_string()).unwrap_or_default();
    match &book.leader {
        Some(l) => format!("{};{reserve};{};{};{};{}", book.price, book.start_price, l.bidder, l.bid_id, l.max),
        None => format!("{};{reserve};{};;;", book.price, book.start_price),
    }
}

fn decode(bytes: &[u8]) -> Option<Book> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(';');
    let price = parts.next()?.parse().ok()?;
    let reserve = match parts.next()? {
        "" => None,
        r => Some(r.parse().ok()?),
    };
    let start_price = parts.next()?.parse().ok()?;
    let (bidder, bid_id, max) = (parts.next()?, parts.next()?, parts.next()?);
    let leader = if bidder.is_empty() {
        None
    } else {
        Some(Leader { bidder: bidder.into(), bid_id: bid_id.into(), max: max.parse().ok()? })
    };
    Some(Book { start_price, reserve, price, leader })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_book_survives_the_etcd_encoding() {
        let ladder = Ladder::default_for(Currency::USD).unwrap();
        let mut book = Book::new(START_PRICE, Some(50_000));
        assert_eq!(decode(encode(&book).as_bytes()), Some(book.clone()));
        book.place(&ladder, &"bidder1".into(), &"b1".into(), 60_000).unwrap();
        assert_eq!(decode(encode(&book).as_bytes()), Some(book));
        assert_eq!(decode(b"garbage"), None);
    }
}
