//! WebSocket fan-out: N sockets subscribed to one hot lot of a real `gavel gateway` while
//! bids arrive at a steady rate. Measures, for every (socket, bid) pair, the time from sending
//! the bid to the socket receiving its event (so it includes the bid's own commit: an upper
//! bound on commit-to-socket), the gateway's resident memory per connection, and `lagging`
//! disconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

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
    /// The bid requests' own round trip (send to answer), for reference.
    pub bid_p50_ms: f64,
    pub bid_p99_ms: f64,
    pub gateway_rss_before_kib: u64,
    pub gateway_rss_connected_kib: u64,
    pub bytes_per_connection: u64,
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

    // Connect and subscribe every socket; a pong proves its subscription is in place.
    let connect_started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let lagging = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::with_capacity(spec.sockets);
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let progress = Arc::new(AtomicU64::new(0));
    let mut pending = futures::stream::iter(0..spec.sockets)
        .map(|_| {
            let ws_url = ws_url.clone();
            let topic = topic.clone();
            let progress = progress.clone();
            async move {
                let (mut ws, _) =
                    tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true).await.ok()?;
                let subscribe = serde_json::json!({"action": "subscribe", "topics": [topic]}).to_string();
                ws.send(Message::text(subscribe)).await.ok()?;
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
            }
        })
        .buffer_unordered(128);
    while let Some(ws) = pending.next().await {
        if let Some(ws) = ws {
            sockets.push(ws);
        }
    }
    drop(pending);
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let connected = sockets.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib(pid);

    // Each socket records when each index arrived.
    let mut readers = Vec::with_capacity(connected);
    for mut ws in sockets {
        let mut stop = stop_rx.clone();
        let lagging = lagging.clone();
        readers.push(tokio::spawn(async move {
            let mut got: Vec<(u64, Instant)> = Vec::new();
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let now = Instant::now();
                            let Ok(frame) = serde_json::from_str::<Frame>(t.as_str()) else { continue };
                            if let Some(index) = frame.index {
                                got.push((index, now));
                            } else if frame.error.is_some_and(|e| e["code"] == "lagging") {
                                lagging.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = stop.wait_for(|&s| s) => break,
                }
            }
            got
        }));
    }

    // Bids at a steady rate, alternating two bidders with ever higher maxima.
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut bid_hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| SuiteError::Setup(e.to_string()))?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / spec.rate.max(1)));
    for k in 0..spec.bids {
        tick.tick().await;
        let body = serde_json::json!({"bid_id": format!("fanout-{k}"), "max_amount": 1_000_000 + (k as i64) * 100_000});
        let started = Instant::now();
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
        sent.insert(index, started);
        if (k + 1) % 50 == 0 {
            println!("[fanout] {} bids sent", k + 1);
        }
    }
    // Let the last events arrive, then stop the readers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);

    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| SuiteError::Setup(e.to_string()))?;
    let mut delivered = 0u64;
    for reader in readers {
        let got = reader.await.unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for (index, at) in got {
            let Some(start) = sent.get(&index) else { continue };
            if seen.insert(index) {
                delivered += 1;
                let _ = hist.record(at.saturating_duration_since(*start).as_micros().max(1) as u64);
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
        bid_p50_ms: ms(&bid_hist, 0.5),
        bid_p99_ms: ms(&bid_hist, 0.99),
        gateway_rss_before_kib: rss_before,
        gateway_rss_connected_kib: rss_connected,
        bytes_per_connection: per_conn,
        lagging: lagging.load(Ordering::Relaxed),
        connect_seconds,
    })
}

fn setup(e: impl std::fmt::Display) -> SuiteError {
    SuiteError::Setup(e.to_string())
}
