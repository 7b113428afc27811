//! API.md's WebSocket section against a real gateway on a real 3-node cluster, with a real
//! client (tokio-tungstenite).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use common::TestCluster;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a socket received: an event, an error frame, or a close.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Event { topic: String, index: u64, event: Value },
    Error(Value),
    Pong,
    Closed(Option<u16>),
}

async fn connect(c: &TestCluster, token: Option<&str>) -> Socket {
    tokio_tungstenite::connect_async(c.ws_url(token)).await.unwrap().0
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next message within `wait`, if any.
async fn next(ws: &mut Socket, wait: Duration) -> Option<Got> {
    loop {
        let msg = match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(None) => return Some(Got::Closed(None)),
            Ok(Some(Err(_))) => return Some(Got::Closed(None)),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "pong" {
                    return Some(Got::Pong);
                }
                if v.get("error").is_some() {
                    return Some(Got::Error(v["error"].clone()));
                }
                return Some(Got::Event {
                    topic: v["topic"].as_str().unwrap().to_owned(),
                    index: v["index"].as_u64().unwrap(),
                    event: v["event"].clone(),
                });
            }
            Message::Close(frame) => return Some(Got::Closed(frame.map(|f| u16::from(f.code)))),
            _ => continue,
        }
    }
}

/// Events until `done` says enough (or 10 s pass, which fails the test).
async fn events_until(
    ws: &mut Socket,
    mut done: impl FnMut(&[(String, u64, Value)]) -> bool,
) -> Vec<(String, u64, Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&out) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next(ws, left).await {
            Some(Got::Event { topic, index, event }) => out.push((topic, index, event)),
            Some(Got::Pong) => {}
            other => panic!("expected events, got {other:?} after {out:?}"),
        }
    }
    out
}

/// Everything that arrives until the socket is quiet for `quiet`.
async fn drain(ws: &mut Socket, quiet: Duration) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(got) = next(ws, quiet).await {
        let closed = matches!(got, Got::Closed(_));
        out.push(got);
        if closed {
            break;
        }
    }
    out
}

async fn error_for(ws: &mut Socket, action: Value) -> Value {
    send(ws, action).await;
    match next(ws, Duration::from_secs(5)).await {
        Some(Got::Error(e)) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

async fn bid(c: &TestCluster, token: &str, lot: &str, bid_id: &str, max: i64) -> Value {
    let (status, body) =
        c.post(&format!("/v1/lots/{lot}/bids"), Some(token), json!({"bid_id": bid_id, "max_amount": max})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A live lot with alice and bob signed in: (lot, alice id, alice token, bob id, bob token).
async fn live_lot(c: &TestCluster, soft_close_secs: u32) -> (String, String, String, String, String) {
    let admin = c.admin().await;
    let (_, curator) = c.curator("carol").await;
    let (alice, alice_token) = c.user("alice").await;
    let (bob, bob_token) = c.user("bob").await;
    let lot = c.ready_lot(&curator, None, soft_close_secs).await;
    c.live_sale(&admin, &[&lot]).await;
    (lot, alice, alice_token, bob, bob_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidders_see_each_price_and_only_the_outbid_user_hears_of_it() {
    let c = TestCluster::start().await;
    let (lot, alice, alice_token, bob, bob_token) = live_lot(&c, 3600).await;
    let mut alice_ws = connect(&c, Some(&alice_token)).await;
    let mut bob_ws = connect(&c, Some(&bob_token)).await;
    let mut viewer = connect(&c, None).await;
    let topic = format!("lot:{lot}");
    for ws in [&mut alice_ws, &mut bob_ws] {
        send(ws, json!({"action": "subscribe", "topics": [topic, "user"]})).await;
    }
    send(&mut viewer, json!({"action": "subscribe", "topics": [topic]})).await;
    // A ping's answer proves each subscription is in place before the first bid.
    for ws in [&mut alice_ws, &mut bob_ws, &mut viewer] {
        send(ws, json!({"action": "ping"})).await;
        assert_eq!(next(ws, Duration::from_secs(5)).await, Some(Got::Pong));
    }

    let first = bid(&c, &alice_token, &lot, "a1", 100_000).await;
    let second = bid(&c, &bob_token, &lot, "b1", 150_000).await;
    assert_eq!(second["outcome"], "leading");

    // Everyone sees both prices; each event is complete enough to render alone.
    for ws in [&mut alice_ws, &mut bob_ws, &mut viewer] {
        let is_bid = |(t, _, e): &(String, u64, Value)| *t == topic && e["type"] == "bid";
        let seen = events_until(ws, |e| e.iter().filter(|x| is_bid(x)).count() >= 2).await;
        let lot_events: Vec<&Value> = seen.iter().filter(|x| is_bid(x)).map(|(_, _, e)| e).collect();
        assert_eq!(lot_events[0]["type"], "bid");
        assert_eq!(lot_events[0]["current_price"], 50_000);
        assert_eq!(lot_events[0]["leading_bidder"], alice.as_str());
        assert_eq!(lot_events[1]["current_price"], 101_000, "bob's bid beats alice's maximum by one step");
        assert_eq!(lot_events[1]["leading_bidder"], bob.as_str());
        for e in &lot_events {
            for field in ["ends_at", "bid_count", "minimum_bid", "status", "currency", "lot_id"] {
                assert!(e.get(field).is_some(), "{field} missing from {e}");
            }
        }
        assert_eq!(lot_events[1]["bid_count"], 2);
        assert_eq!(lot_events[1]["minimum_bid"], 102_000);
        let indices: Vec<u64> = seen.iter().filter(|x| is_bid(x)).map(|(_, i, _)| *i).collect();
        assert_eq!(indices, [first["log_index"].as_u64().unwrap(), second["log_index"].as_u64().unwrap()]);
    }
    // Alice (outbid) hears it on `user`; bob's and the viewer's sockets carry nothing more.
    // (Each socket may still have the second bid's soft-close extension to read.)
    let rest = |got: Vec<Got>| -> Vec<Got> {
        got.into_iter().filter(|g| !matches!(g, Got::Event { event, .. } if event["type"] == "extended")).collect()
    };
    let alerts = rest(drain(&mut alice_ws, Duration::from_millis(700)).await);
    let [Got::Event { topic: alert_topic, event: alert, .. }] = alerts.as_slice() else {
        panic!("alice should hear exactly one alert: {alerts:?}")
    };
    assert_eq!(alert_topic, "user");
    assert_eq!(alert["type"], "outbid");
    assert_eq!(alert["lot_id"], lot.as_str());
    assert_eq!(alert["current_price"], 101_000);
    assert_eq!(rest(drain(&mut bob_ws, Duration::from_millis(700)).await), []);
    assert_eq!(rest(drain(&mut viewer, Duration::from_millis(100)).await), []);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_since_gets_exactly_the_missed_events() {
    let c = TestCluster::start().await;
    let (lot, _, alice_token, _, bob_token) = live_lot(&c, 3600).await;
    let topic = format!("lot:{lot}");
    // The observer never leaves: its stream is the truth the resumed one must match.
    let mut observer = connect(&c, None).await;
    send(&mut observer, json!({"action": "subscribe", "topics": [topic]})).await;
    let mut flaky = connect(&c, None).await;
    send(&mut flaky, json!({"action": "subscribe", "topics": [topic]})).await;
    for ws in [&mut observer, &mut flaky] {
        send(ws, json!({"action": "ping"})).await;
        assert_eq!(next(ws, Duration::from_secs(5)).await, Some(Got::Pong));
    }
    bid(&c, &alice_token, &lot, "a1", 60_000).await;
    let before = events_until(&mut flaky, |e| !e.is_empty()).await;
    let last_seen = before.last().unwrap().1;
    flaky.close(None).await.unwrap();

    // Missed while away: a proxy battle (several lines and an extension each).
    bid(&c, &bob_token, &lot, "b1", 58_000).await;
    bid(&c, &bob_token, &lot, "b2", 90_000).await;
    bid(&c, &alice_token, &lot, "a2", 120_000).await;

    let mut resumed = connect(&c, None).await;
    send(&mut resumed, json!({"action": "subscribe", "topics": [topic], "since": last_seen})).await;
    let b3 = bid(&c, &bob_token, &lot, "b3", 200_000).await["log_index"].as_u64().unwrap();

    // The soft close extends the lot after every bid: the extension ends b3's entry.
    let entry_done =
        |e: &[(String, u64, Value)]| e.last().is_some_and(|(_, i, ev)| *i == b3 && ev["type"] == "extended");
    let truth = events_until(&mut observer, entry_done).await;
    let expected: Vec<_> = truth.into_iter().filter(|(_, index, _)| *index > last_seen).collect();
    let got = events_until(&mut resumed, |e| e.len() >= expected.len()).await;
    assert_eq!(got, expected, "the resumed stream is the missed events, then live ones, exactly once");
    assert!(expected.len() >= 5, "the test exercised several missed events: {expected:?}");
    assert_eq!(drain(&mut resumed, Duration::from_millis(500)).await, []);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_told_it_lags_and_the_others_are_unaffected() {
    let c = TestCluster::start_with(|config| {
        config.hub.outbox_max = 4;
        // A small kernel buffer per connection, so a reader that stops stalls sends soon.
        config.tcp_send_buffer_bytes = Some(16 * 1024);
    })
    .await;
    let (lot, _, alice_token, _, bob_token) = live_lot(&c, 0).await;
    let topic = format!("lot:{lot}");
    let mut fast = connect(&c, None).await;
    // The slow reader's kernel buffers are tiny and it never reads: its sends stall soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(c.url.trim_start_matches("http://").parse().unwrap()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(c.ws_url(None), MaybeTlsStream::Plain(stream)).await.unwrap();
    for ws in [&mut fast, &mut slow] {
        send(ws, json!({"action": "subscribe", "topics": [topic]})).await;
        send(ws, json!({"action": "ping"})).await;
        assert_eq!(next(ws, Duration::from_secs(5)).await, Some(Got::Pong));
    }

    // The slow reader reads one message every 100 ms (far slower than the bids come), on its
    // own task, until it is closed.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(g) = next(&mut slow, Duration::from_secs(30)).await {
            let closed = matches!(g, Got::Closed(_));
            got.push(g);
            if closed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got
    });

    // Alice and bob raise each other, as fast as they can, until the slow socket lags.
    let mut accepted = 0;
    while c.metric("gavel_ws_lagging_total").await < 1.0 {
        assert!(accepted < 3_000, "the slow socket never lagged");
        for _ in 0..25 {
            // The one not leading bids the least it may: every bid is accepted and is an event.
            let (_, now) = c.get(&format!("/v1/lots/{lot}"), None).await;
            let amount = now["minimum_bid"].as_i64().unwrap();
            let token = if accepted % 2 == 0 { &alice_token } else { &bob_token };
            bid(&c, token, &lot, &format!("r{accepted}"), amount).await;
            accepted += 1;
        }
        // Keep the fast socket drained, as a live page would be.
        while let Some(Got::Event { .. }) = next(&mut fast, Duration::from_millis(1)).await {}
    }

    // The slow socket got what was queued, then `lagging` with where to resume, then a close.
    let got = tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap();
    let n = got.len();
    assert!(n >= 2, "{got:?}");
    let Got::Error(error) = &got[n - 2] else { panic!("expected the lagging error, got {:?}", &got[n - 2..]) };
    assert_eq!(error["code"], "lagging");
    assert_eq!(got[n - 1], Got::Closed(Some(4000)));
    let last_index = error["last_index"].as_u64().unwrap();
    let sent: Vec<u64> =
        got.iter().filter_map(|g| if let Got::Event { index, .. } = g { Some(*index) } else { None }).collect();
    assert_eq!(sent.last().copied().unwrap_or(0), last_index, "last_index is the last event it was sent");

    // The fast socket still works, and a resume from last_index misses nothing.
    let (_, now) = c.get(&format!("/v1/lots/{lot}"), None).await;
    let minimum = now["minimum_bid"].as_i64().unwrap();
    let next_bidder = if accepted % 2 == 0 { &alice_token } else { &bob_token };
    let final_bid = bid(&c, next_bidder, &lot, "final", minimum).await;
    let final_index = final_bid["log_index"].as_u64().unwrap();
    let seen = events_until(&mut fast, |e| e.iter().any(|(_, i, _)| *i == final_index)).await;
    assert!(!seen.is_empty());
    let mut resumed = connect(&c, None).await;
    send(&mut resumed, json!({"action": "subscribe", "topics": [topic], "since": last_index})).await;
    let replayed = events_until(&mut resumed, |e| e.iter().any(|(_, i, _)| *i == final_index)).await;
    let lines = replayed.iter().filter(|(_, _, e)| e["type"] == "bid").count();
    let (_, history) = c.get(&format!("/v1/lots/{lot}/bids"), None).await;
    let total = history["bids"].as_array().unwrap().len();
    let before = sent.len();
    assert_eq!(before + lines, total, "what the slow socket got plus the replay is the whole history");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_loses_nothing_asked_for_with_since() {
    let mut c = TestCluster::start().await;
    let (lot, _, alice_token, _, bob_token) = live_lot(&c, 3600).await;
    let topic = format!("lot:{lot}");
    let mut ws = connect(&c, None).await;
    send(&mut ws, json!({"action": "subscribe", "topics": [topic]})).await;
    send(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(next(&mut ws, Duration::from_secs(5)).await, Some(Got::Pong));
    bid(&c, &alice_token, &lot, "a1", 60_000).await;
    let seen = events_until(&mut ws, |e| !e.is_empty()).await;
    let last_seen = seen.last().unwrap().1;
    bid(&c, &bob_token, &lot, "b1", 70_000).await;

    // The gateway goes away: its sockets are told so (1001), not cut silently.
    c.restart_gateway().await;
    let mut closed = drain(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(closed.pop(), Some(Got::Closed(Some(1001))));
    bid(&c, &alice_token, &lot, "a2", 90_000).await;

    let mut resumed = connect(&c, None).await;
    send(&mut resumed, json!({"action": "subscribe", "topics": [topic], "since": last_seen})).await;
    let got =
        events_until(&mut resumed, |e| e.iter().any(|(_, _, ev)| ev["bid_id"] == "a2" && ev["kind"] == "placed")).await;
    let (_, history) = c.get(&format!("/v1/lots/{lot}/bids"), None).await;
    let expected: Vec<String> = history["bids"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|b| format!("{}@{}", b["bid_id"], b["amount"]))
        .collect();
    let lines: Vec<String> = got
        .iter()
        .filter(|(_, _, e)| e["type"] == "bid")
        .map(|(_, _, e)| format!("{}@{}", e["bid_id"], e["amount"]))
        .collect();
    assert_eq!(lines, expected, "every bid line after the last one seen, once, in order");
    let indices: Vec<u64> = got.iter().map(|(_, i, _)| *i).collect();
    assert!(indices.windows(2).all(|w| w[0] <= w[1]) && indices[0] > last_seen, "{indices:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_or_close_never_a_panic() {
    let c = TestCluster::start_with(|config| config.hub.history_max = 4).await;
    let (lot, alice, alice_token, _, bob_token) = live_lot(&c, 3600).await;

    // A bad token is refused before the upgrade, with the API's error body.
    let refused = tokio_tungstenite::connect_async(c.ws_url(Some("not-a-token"))).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED.as_u16());
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // A plain GET is not an upgrade: a 400 in the API's body.
    let (status, body) = c.get("/v1/ws", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_input");

    let mut anon = connect(&c, None).await;
    let e = error_for(&mut anon, json!({"action": "subscribe", "topics": ["user"]})).await;
    assert_eq!(e["code"], "unauthorized");
    anon.send(Message::text("{not json")).await.unwrap();
    let Some(Got::Error(e)) = next(&mut anon, Duration::from_secs(5)).await else { panic!("no error frame") };
    assert_eq!(e["code"], "invalid_input");
    assert_eq!(error_for(&mut anon, json!({"action": "shout"})).await["code"], "unknown_action");
    assert_eq!(
        error_for(&mut anon, json!({"action": "subscribe", "topics": ["weather:today"]})).await["code"],
        "unknown_topic"
    );
    assert_eq!(error_for(&mut anon, json!({"action": "subscribe", "topics": ["lot:"]})).await["code"], "unknown_topic");
    assert_eq!(error_for(&mut anon, json!({"action": "subscribe"})).await["code"], "invalid_input");
    anon.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let Some(Got::Error(e)) = next(&mut anon, Duration::from_secs(5)).await else { panic!("no error frame") };
    assert_eq!(e["code"], "invalid_input");

    // Another user's notifications are not anyone else's to take.
    let mut bob_ws = connect(&c, Some(&bob_token)).await;
    let e = error_for(&mut bob_ws, json!({"action": "subscribe", "topics": [format!("user:{alice}")]})).await;
    assert_eq!(e["code"], "forbidden");

    // A `since` older than the history held is refused with the floor, never a silent gap.
    for (i, amount) in [60_000, 70_000, 80_000, 90_000, 100_000].into_iter().enumerate() {
        let token = if i % 2 == 0 { &alice_token } else { &bob_token };
        bid(&c, token, &lot, &format!("x{i}"), amount).await;
    }
    let e = error_for(&mut anon, json!({"action": "subscribe", "topics": [format!("lot:{lot}")], "since": 1})).await;
    assert_eq!(e["code"], "history_gone");
    assert!(e["floor"].as_u64().unwrap() > 1, "{e}");
    assert_eq!(e["topic"], format!("lot:{lot}"));

    // A frame over the size limit closes the socket with 1009.
    let big = json!({"action": "subscribe", "topics": ["x".repeat(8 * 1024)]});
    let _ = anon.send(Message::text(big.to_string())).await;
    let got = drain(&mut anon, Duration::from_secs(5)).await;
    assert_eq!(got.last(), Some(&Got::Closed(Some(u16::from(CloseCode::Size)))), "{got:?}");

    // A flood is warned once, then closed.
    let mut flood = connect(&c, None).await;
    for _ in 0..200 {
        if flood.send(Message::text(json!({"action": "ping"}).to_string())).await.is_err() {
            break;
        }
    }
    let got = drain(&mut flood, Duration::from_secs(5)).await;
    assert!(got.iter().any(|g| matches!(g, Got::Error(e) if e["code"] == "rate_limited")), "{got:?}");
    assert_eq!(got.last(), Some(&Got::Closed(Some(4001))), "{got:?}");

    // Through all of it the gateway kept serving.
    let (status, _) = c.get(&format!("/v1/lots/{lot}"), None).await;
    assert_eq!(status, StatusCode::OK);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_find_dead_peers_and_keep_live_ones() {
    let c = TestCluster::start_with(|config| config.ws.heartbeat = Duration::from_millis(500)).await;
    // A live client answers pings (tungstenite does, while it reads); a dead one never reads.
    let mut live = connect(&c, None).await;
    let dead = connect(&c, None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.metric("gavel_ws_connections").await, 2.0);
    // The live one keeps reading (and so answering pings) for well past two intervals.
    // (Pings keep arriving, so wait a fixed time rather than for quiet: it must stay open.)
    let closed = tokio::time::timeout(Duration::from_secs(3), drain(&mut live, Duration::from_secs(60))).await;
    assert!(closed.is_err(), "the live socket was closed: {closed:?}");
    assert_eq!(c.metric("gavel_ws_connections").await, 1.0, "the silent peer was dropped, the live one kept");
    drop(dead);
    c.shutdown().await;
}

/// With the nodes' feed retention on, a gateway that has never seen the feed starts from the
/// ledger's state: it becomes ready, its catalog lists every lot as the ledger has it, bids
/// reach sockets live, and a socket asking for messages from before the start is told they
/// are gone instead of sent a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_gateway_behind_the_feed_floor_starts_from_the_state() {
    let retention = node::FeedRetention { max_bytes: 0, max_age_secs: 2 };
    let mut c = TestCluster::start_with_retention(retention, |_| {}).await;
    let (lot, _, alice_token, _, bob_token) = live_lot(&c, 3600).await;
    bid(&c, &alice_token, &lot, "a1", 60_000).await;
    bid(&c, &bob_token, &lot, "b1", 70_000).await;
    let (_, before) = c.get(&format!("/v1/lots/{lot}"), None).await;

    // Every node drops those items; then a gateway with empty stores comes up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bid(&c, &alice_token, &lot, "a2", 90_000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for addr in c.addrs.clone() {
        while node::Client::metrics(&addr).await.unwrap().feed_start < 5 {
            assert!(tokio::time::Instant::now() < deadline, "{addr} did not drop the old items");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.replace_gateway_with_a_fresh_one().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = c.get("/readyz", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, now) = c.get(&format!("/v1/lots/{lot}"), None).await;
    assert!(now["bid_count"].as_u64().unwrap() > before["bid_count"].as_u64().unwrap());
    let (status, page) = c.get("/v1/catalog?min_index=1", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = page["items"].as_array().unwrap().iter().find(|l| l["lot_id"] == lot.as_str()).cloned();
    let listed = listed.unwrap_or_else(|| panic!("{lot} not listed: {page}"));
    assert_eq!(listed["current_price"], now["current_price"]);
    assert_eq!(listed["bid_count"], now["bid_count"]);

    // A socket from before the start is told the history is gone; a new one hears bids live.
    let topic = format!("lot:{lot}");
    let mut old = connect(&c, None).await;
    let gone = error_for(&mut old, json!({"action": "subscribe", "topics": [topic], "since": 1})).await;
    assert_eq!(gone["code"], "history_gone", "{gone}");
    let mut ws = connect(&c, None).await;
    send(&mut ws, json!({"action": "subscribe", "topics": [topic]})).await;
    send(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(next(&mut ws, Duration::from_secs(5)).await, Some(Got::Pong));
    bid(&c, &bob_token, &lot, "b2", 120_000).await;
    let got = events_until(&mut ws, |e| e.iter().any(|(_, _, ev)| ev["bid_id"] == "b2")).await;
    let line = got.iter().find(|(_, _, ev)| ev["bid_id"] == "b2").map(|(_, _, ev)| ev.clone()).unwrap();
    let (_, after) = c.get(&format!("/v1/lots/{lot}"), None).await;
    assert_eq!(line["bid_count"], after["bid_count"], "the fan-out's state carries on from the ledger's");
    c.shutdown().await;
}
