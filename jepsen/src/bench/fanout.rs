//! WebSocket fan-out: N sockets subscribed to one hot lot of a real `gavel gateway` while
//! bids arrive at a steady rate. Measures, for every (socket, bid) pair, the time from sending
//! the bid (so it includes the bid's own commit: an upper bound on commit-to-socket) to two
//! moments: the event's bytes reaching the client's socket (the kernel's receive stamp) and
//! the client reading them. Also the CPU each side spent per delivery, the gateway's
//! resident memory per connection, and `lagging` disconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::stamped::Stamped;
use super::suite::{self, Env, Running, SuiteError, System};
use super::target::lot_id;

#[derive(Clone, Debug)]
pub struct FanoutSpec {
    /// Sockets subscribed to the hot lot.
    pub sockets: usize,
    /// Bids placed (each one event on the lot's topic).
    pub bids: usize,
    /// Bids per second.
    pub rate: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FanoutResult {
    pub sockets: usize,
    pub connected: usize,
    pub bids: usize,
    pub rate: u64,
    /// Deliveries expected (sockets connected x bids) and received.
    pub expected: u64,
    pub delivered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The same, up to the event's bytes reaching the client's socket (the kernel's receive
    /// stamp) rather than the client process reading them: what a subscriber on its own
    /// machine would see, without the driver's own queueing on the shared CPUs.
    pub arrival_p50_ms: f64,
    pub arrival_p99_ms: f64,
    pub arrival_p999_ms: f64,
    pub arrival_max_ms: f64,
    /// Deliveries the kernel gave no stamp for (their read time stands in).
    pub unstamped: u64,
    /// The bid requests' own round trip (send to answer), for reference.
    pub bid_p50_ms: f64,
    pub bid_p99_ms: f64,
    pub gateway_rss_before_kib: u64,
    pub gateway_rss_connected_kib: u64,
    pub bytes_per_connection: u64,
    /// CPU time (user + system) per delivery while the bids ran: the gateway process, and
    /// this process (the clients' thread, plus the bids sent). Steadier than latency on a
    /// shared machine, where a neighbour's load moves the percentiles between runs.
    pub gateway_cpu_us_per_delivery: f64,
    pub clients_cpu_us_per_delivery: f64,
    pub lagging: u64,
    pub connect_seconds: f64,
}

#[derive(Deserialize)]
struct Frame {
    index: Option<u64>,
    error: Option<serde_json::Value>,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process (`self` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// Microseconds of CPU per delivery, from clock ticks (USER_HZ, 100 a second on Linux).
fn per_delivery(ticks: u64, delivered: u64) -> f64 {
    ticks as f64 * 10_000.0 / delivered.max(1) as f64
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs the fan-out measurement on a fresh cluster and gateway.
pub async fn run(env: &Env, spec: &FanoutSpec) -> Result<FanoutResult, SuiteError> {
    let running = suite::start(env, System::Http, 1, 2).await?;
    let Running::Gavel { _gateway: Some(gateway), .. } = &running else {
        return Err(SuiteError::Setup("the fan-out bench needs the HTTP gateway".into()));
    };
    let pid = gateway.pid();
    let url = gateway.url().to_owned();
    let ws_url = format!("{}/v1/ws", url.replacen("http://", "ws://", 1));
    let topic = format!("lot:{}", lot_id(0));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(setup)?;
    let tokens = [suite::bidder_token(0)?, suite::bidder_token(1)?];
    // Warm the gateway (first requests, the feed caught up) before the memory baseline.
    for _ in 0..20 {
        let _ = http.get(format!("{url}/v1/lots/{}", lot_id(0))).send().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);

    // The sockets live on their own single-threaded runtime: ten thousand clients on one
    // thread, as a load generator would run them, instead of tokio's workers waking each
    // other for every frame on the two cores the gateway needs.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let lagging = Arc::new(AtomicU64::new(0));
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let clients = Clients { addr, ws_url, topic, sockets: spec.sockets, bids: spec.bids, lagging: lagging.clone() };
    let readers = clients.spawn(ready_tx, stop_rx)?;
    let (connected, connect_seconds) =
        ready_rx.await.map_err(|_| SuiteError::Setup("the fan-out clients' thread stopped while connecting".into()))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib(pid);
    let cpu_before = (cpu_ticks(&pid.to_string()), cpu_ticks("self"));

    // Bids at a steady rate, alternating two bidders with ever higher maxima.
    let mut sent: HashMap<u64, (Instant, SystemTime)> = HashMap::new();
    let mut bid_hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| SuiteError::Setup(e.to_string()))?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / spec.rate.max(1)));
    for k in 0..spec.bids {
        tick.tick().await;
        let body = serde_json::json!({"bid_id": format!("fanout-{k}"), "max_amount": 1_000_000 + (k as i64) * 100_000});
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let answer = http
            .post(format!("{url}/v1/lots/{}/bids", lot_id(0)))
            .bearer_auth(&tokens[k % 2])
            .json(&body)
            .send()
            .await
            .map_err(setup)?;
        let value: serde_json::Value = answer.json().await.map_err(setup)?;
        let _ = bid_hist.record(started.elapsed().as_micros() as u64);
        let Some(index) = value["log_index"].as_u64() else {
            return Err(SuiteError::Setup(format!("bid {k} was not accepted: {value}")));
        };
        sent.insert(index, (started, started_wall));
        if (k + 1) % 50 == 0 {
            println!("[fanout] {} bids sent", k + 1);
        }
    }
    // Let the last events arrive, then stop the readers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_used =
        (cpu_ticks(&pid.to_string()).saturating_sub(cpu_before.0), cpu_ticks("self").saturating_sub(cpu_before.1));
    let _ = stop_tx.send(true);

    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| SuiteError::Setup(e.to_string()))?;
    let mut delivered = 0u64;
    let received = tokio::task::spawn_blocking(move || readers.join())
        .await
        .map_err(setup)?
        .map_err(|_| SuiteError::Setup("the fan-out clients' thread panicked".into()))?;
    let mut arrival_hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| SuiteError::Setup(e.to_string()))?;
    let mut unstamped = 0u64;
    for got in received {
        let mut seen = std::collections::HashSet::new();
        for a in got {
            let Some((start, start_wall)) = sent.get(&a.index) else { continue };
            if seen.insert(a.index) {
                delivered += 1;
                let read = a.read.saturating_duration_since(*start);
                let _ = hist.record(read.as_micros().max(1) as u64);
                // Without a stamp, the read time is the best bound there is.
                let arrived = match a.arrived.map(|t| t.duration_since(*start_wall)) {
                    Some(Ok(d)) => d,
                    _ => {
                        unstamped += 1;
                        read
                    }
                };
                let _ = arrival_hist.record(arrived.as_micros().max(1) as u64);
            }
        }
    }
    drop(running);
    let per_conn = (rss_connected.saturating_sub(rss_before) * 1024) / (connected.max(1) as u64);
    Ok(FanoutResult {
        sockets: spec.sockets,
        connected,
        bids: spec.bids,
        rate: spec.rate,
        expected: (connected * spec.bids) as u64,
        delivered,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        p999_ms: ms(&hist, 0.999),
        max_ms: hist.max() as f64 / 1000.0,
        arrival_p50_ms: ms(&arrival_hist, 0.5),
        arrival_p99_ms: ms(&arrival_hist, 0.99),
        arrival_p999_ms: ms(&arrival_hist, 0.999),
        arrival_max_ms: arrival_hist.max() as f64 / 1000.0,
        unstamped,
        bid_p50_ms: ms(&bid_hist, 0.5),
        bid_p99_ms: ms(&bid_hist, 0.99),
        gateway_rss_before_kib: rss_before,
        gateway_rss_connected_kib: rss_connected,
        bytes_per_connection: per_conn,
        gateway_cpu_us_per_delivery: per_delivery(cpu_used.0, delivered),
        clients_cpu_us_per_delivery: per_delivery(cpu_used.1, delivered),
        lagging: lagging.load(Ordering::Relaxed),
        connect_seconds,
    })
}

/// Each client socket's receive buffer: events are a few hundred bytes.
const RECEIVE_BUFFER: usize = 64 * 1024;

/// The subscribed clients: connected, then read, on one thread of their own.
struct Clients {
    /// The gateway's address (host:port) and its socket URL.
    addr: String,
    ws_url: String,
    topic: String,
    sockets: usize,
    bids: usize,
    lagging: Arc<AtomicU64>,
}

/// Each socket's received event indexes, with when each arrived.
type Arrivals = Vec<Vec<Arrival>>;

/// One event on one socket.
struct Arrival {
    index: u64,
    /// When the client read it.
    read: Instant,
    /// When its bytes reached the client's socket (the kernel's stamp; None if it gave none).
    arrived: Option<SystemTime>,
}

impl Clients {
    /// Starts the thread; `ready` gets (sockets subscribed, seconds taken), and the thread
    /// returns every socket's arrivals once `stop` turns true.
    fn spawn(
        self,
        ready: tokio::sync::oneshot::Sender<(usize, f64)>,
        stop: watch::Receiver<bool>,
    ) -> Result<std::thread::JoinHandle<Arrivals>, SuiteError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(setup)?;
        std::thread::Builder::new()
            .name("fanout-clients".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let started = Instant::now();
                    let sockets = self.connect().await;
                    let _ = ready.send((sockets.len(), started.elapsed().as_secs_f64()));
                    let readers: Vec<_> =
                        sockets.into_iter().map(|ws| tokio::spawn(self.read(ws, stop.clone()))).collect();
                    let mut arrivals = Vec::with_capacity(readers.len());
                    for reader in readers {
                        arrivals.push(reader.await.unwrap_or_default());
                    }
                    arrivals
                })
            })
            .map_err(setup)
    }

    /// Connects and subscribes every socket; a pong proves its subscription is in place.
    async fn connect(&self) -> Vec<Socket> {
        let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
        let progress = AtomicU64::new(0);
        let subscribe = serde_json::json!({"action": "subscribe", "topics": [self.topic]}).to_string();
        let mut pending = futures::stream::iter(0..self.sockets)
            .map(|_| async {
                let tcp = tokio::net::TcpStream::connect(&self.addr).await.ok()?;
                tcp.set_nodelay(true).ok()?;
                // A fixed receive buffer, as load generators with many idle sockets set: it
                // also spares the kernel re-tuning the buffer on every read.
                nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::RcvBuf, &RECEIVE_BUFFER).ok()?;
                let stream = Stamped::new(tcp).ok()?;
                let (mut ws, _) =
                    tokio_tungstenite::client_async_with_config(&self.ws_url, stream, Some(config)).await.ok()?;
                ws.send(Message::text(subscribe.clone())).await.ok()?;
                ws.send(Message::text(r#"{"action":"ping"}"#)).await.ok()?;
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && t.as_str().contains("pong")
                    {
                        let done = progress.fetch_add(1, Ordering::Relaxed) + 1;
                        if done.is_multiple_of(1000) {
                            println!("[fanout] {done} sockets subscribed");
                        }
                        return Some(ws);
                    }
                }
                None
            })
            .buffer_unordered(128);
        let mut sockets = Vec::with_capacity(self.sockets);
        while let Some(ws) = pending.next().await {
            sockets.extend(ws);
        }
        sockets
    }

    /// Records when each event index arrives on `ws`, until `stop`.
    fn read(&self, mut ws: Socket, mut stop: watch::Receiver<bool>) -> impl Future<Output = Vec<Arrival>> + use<> {
        let lagging = self.lagging.clone();
        let capacity = self.bids + 8;
        async move {
            let mut got = Vec::with_capacity(capacity);
            // Made once: a fresh `wait_for` per message would register and unregister a
            // waiter under the channel's lock each time, on the path being measured.
            let stopped = stop.wait_for(|&s| s);
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    biased;
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let read = Instant::now();
                            let Ok(frame) = serde_json::from_str::<Frame>(t.as_str()) else { continue };
                            if let Some(index) = frame.index {
                                got.push(Arrival { index, read, arrived: ws.get_ref().last_arrival() });
                            } else if frame.error.is_some_and(|e| e["code"] == "lagging") {
                                lagging.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = &mut stopped => break,
                }
            }
            got
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<Stamped>;

fn setup(e: impl std::fmt::Display) -> SuiteError {
    SuiteError::Setup(e.to_string())
}
