//! The HTTP API of shared/API.md against a real gateway on a real 3-node cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{SECRET, TestCluster, now_ms, rfc3339};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

/// Asserts an answer is an API error with this status and code, and a message.
fn assert_error(answer: (StatusCode, Value), status: StatusCode, expected: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(code(&body), expected, "{body}");
    assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_of_api_md() {
    let c = TestCluster::start().await;
    let admin = c.admin().await;
    let (carol, curator) = c.curator("carol").await;
    let (alice, alice_token) = c.user("alice").await;
    let (bob, bob_token) = c.user("bob").await;

    // A curator lists a lot and moves it through review; an admin puts it in a live sale.
    let lot = c.ready_lot(&curator, Some(120_000), 30).await;
    let auction = c.live_sale(&admin, &[&lot]).await;
    let (status, sale) = c.get(&format!("/v1/auctions/{auction}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sale["status"], "Live");
    assert_eq!(sale["lot_ids"], json!([lot]));
    let (_, before) = c.get(&format!("/v1/lots/{lot}"), None).await;
    assert_eq!(before["status"], "InAuction");
    assert_eq!(before["seller_id"], carol.as_str());

    // Proxy bidding between two users (USD ladder: steps of $10 = 1,000 cents from $500).
    let bids = format!("/v1/lots/{lot}/bids");
    let (status, first) = c.post(&bids, Some(&alice_token), json!({"bid_id": "a1", "max_amount": 100_000})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!((first["outcome"].as_str(), first["current_price"].as_i64()), (Some("leading"), Some(50_000)));
    assert!(first["log_index"].as_u64().unwrap() > 0);

    let (status, outbid) = c.post(&bids, Some(&bob_token), json!({"bid_id": "b1", "max_amount": 60_000})).await;
    assert_eq!(status, StatusCode::OK, "{outbid}");
    assert_eq!(outbid["outcome"], "outbid");
    assert_eq!(outbid["current_price"], 61_000, "alice's proxy answers one step above bob");
    assert_eq!(outbid["leading_bidder"], alice.as_str());

    let (status, lead) = c.post(&bids, Some(&bob_token), json!({"bid_id": "b2", "max_amount": 150_000})).await;
    assert_eq!(status, StatusCode::OK, "{lead}");
    assert_eq!(lead["outcome"], "leading");
    assert_eq!(lead["current_price"], 120_000, "the reserve (1,200 dollars) is met at once");
    assert_eq!(lead["leading_bidder"], bob.as_str());

    // The same bid_id again: the first answer, unchanged (log index included), and no new bid.
    let (status, again) = c.post(&bids, Some(&bob_token), json!({"bid_id": "b2", "max_amount": 150_000})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, lead);
    // Another user's bid_id space is their own: alice may use "b2" too.
    let (status, own) = c.post(&bids, Some(&alice_token), json!({"bid_id": "b2", "max_amount": 120_000})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{own}");
    assert_eq!(code(&own), "below_minimum");

    // The public lot: price, leader, count, reserve met; never the reserve or any maximum.
    let (status, read) = c.get(&format!("/v1/lots/{lot}"), Some(&alice_token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["current_price"], 120_000);
    assert_eq!(read["leading_bidder"], bob.as_str());
    assert_eq!(read["bid_count"], 4);
    assert_eq!(read["reserve_met"], true);
    for hidden in ["reserve_price", "leading_max"] {
        assert!(read.get(hidden).is_none(), "{hidden} shown to a user: {read}");
    }
    let text = read.to_string();
    assert!(!text.contains("150000") && !text.contains("100000"), "a maximum leaked: {text}");
    // Admins see both.
    let (_, admin_view) = c.get(&format!("/v1/lots/{lot}"), Some(&admin)).await;
    assert_eq!(admin_view["reserve_price"], 120_000);
    assert_eq!(admin_view["leading_max"], 150_000);
    // A stale read says so.
    let response = c.http.get(format!("{}/v1/lots/{lot}?consistency=stale", c.url)).send().await.unwrap();
    assert_eq!(response.headers()["gavel-consistency"], "stale");

    // The bid history in ledger order, visible amounts only.
    let (status, history) = c.get(&bids, None).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<(String, i64, String)> = history["bids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["bidder"].as_str().unwrap().to_owned(),
                b["amount"].as_i64().unwrap(),
                b["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (alice.clone(), 50_000, "placed".into()),
            (bob.clone(), 60_000, "placed".into()),
            (alice.clone(), 61_000, "proxy".into()),
            (bob.clone(), 120_000, "placed".into()),
        ]
    );

    // Soft close: a lot sold on its own, ending in 5 s with a 30 s window; a bid extends it.
    let closing = c.ready_lot_ending(&curator, None, 30, 5_000).await;
    let (status, open) =
        c.post(&format!("/v1/lots/{closing}/status"), Some(&curator), json!({"status": "InAuction"})).await;
    assert_eq!(status, StatusCode::OK, "{open}");
    let ends_before = ledger::time::parse_time("ends_at", open["ends_at"].as_str().unwrap()).unwrap();
    let sent_ms = now_ms();
    let (status, late) = c
        .post(&format!("/v1/lots/{closing}/bids"), Some(&alice_token), json!({"bid_id": "late", "max_amount": 50_000}))
        .await;
    assert_eq!(status, StatusCode::OK, "{late}");
    let ends_after = ledger::time::parse_time("ends_at", late["ends_at"].as_str().unwrap()).unwrap();
    assert!(ends_after > ends_before && ends_after >= sent_ms + 29_000, "{ends_before} -> {ends_after}");

    // The seller cannot bid on their own lot.
    let (status, body) = c.post(&bids, Some(&curator), json!({"bid_id": "c1", "max_amount": 200_000})).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "seller_cannot_bid"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_and_bad_input_changes_nothing() {
    let c = TestCluster::start().await;
    let admin = c.admin().await;
    let (_, curator) = c.curator("carol").await;
    let (alice, alice_token) = c.user("alice").await;
    let lot = c.ready_lot(&curator, None, 0).await;
    let draft = {
        let now = now_ms();
        let (_, body) = c
            .post(
                "/v1/lots",
                Some(&curator),
                json!({"title": "Draft", "description": "", "artist": "", "category": "", "currency": "USD",
                       "start_price": 1000, "starts_at": rfc3339(now), "ends_at": rfc3339(now + 60_000)}),
            )
            .await;
        body["lot_id"].as_str().unwrap().to_owned()
    };
    let auction = c.live_sale(&admin, &[&lot]).await;
    let bids = format!("/v1/lots/{lot}/bids");
    let (_, placed) = c.post(&bids, Some(&alice_token), json!({"bid_id": "a1", "max_amount": 100_000})).await;
    assert_eq!(placed["outcome"], "leading");
    let (_, before) = c.get(&format!("/v1/lots/{lot}"), None).await;

    // ---- 400: malformed JSON, wrong types, unknown fields, bad amounts and ids ----
    let bad = StatusCode::BAD_REQUEST;
    assert_error(
        c.post_raw(&bids, Some(&alice_token), "application/json", b"{\"bid_id\": ".to_vec()).await,
        bad,
        "invalid_input",
    );
    assert_error(c.post_raw(&bids, Some(&alice_token), "text/plain", b"{}".to_vec()).await, bad, "invalid_input");
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": 7, "max_amount": 100})).await,
        bad,
        "invalid_input",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "x", "max_amount": "100"})).await,
        bad,
        "invalid_input",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "x", "max_amount": 200_000, "extra": 1})).await,
        bad,
        "invalid_input",
    );
    assert_error(c.post(&bids, Some(&alice_token), json!({"max_amount": 200_000})).await, bad, "invalid_input");
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "x", "max_amount": -5})).await,
        bad,
        "invalid_amount",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "x", "max_amount": 0})).await,
        bad,
        "invalid_amount",
    );
    assert_error(
        c.post_raw(
            &bids,
            Some(&alice_token),
            "application/json",
            br#"{"bid_id":"x","max_amount":100000000000000000000000}"#.to_vec(),
        )
        .await,
        bad,
        "invalid_amount",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "x", "max_amount": 150_000.5})).await,
        bad,
        "invalid_amount",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "x", "max_amount": 9_000_000_000_000_000_000u64})).await,
        bad,
        "invalid_amount",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "has space", "max_amount": 200_000})).await,
        bad,
        "invalid_input",
    );
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "y".repeat(65), "max_amount": 200_000})).await,
        bad,
        "invalid_input",
    );
    assert_error(
        c.post(&format!("/v1/lots/{lot}/status"), Some(&curator), json!({"status": "Sold"})).await,
        bad,
        "invalid_status",
    );
    assert_error(
        c.post(&format!("/v1/auctions/{auction}/status"), Some(&admin), json!({"status": "Ended"})).await,
        bad,
        "invalid_status",
    );
    assert_error(c.get(&format!("/v1/lots/{lot}?consistency=eventual"), None).await, bad, "invalid_input");
    let now = now_ms();
    let mut lot_body = json!({"title": "T", "description": "", "artist": "", "category": "", "currency": "USD",
        "start_price": 1000, "starts_at": rfc3339(now), "ends_at": rfc3339(now + 60_000)});
    lot_body["currency"] = json!("XYZ");
    assert_error(c.post("/v1/lots", Some(&curator), lot_body.clone()).await, bad, "invalid_currency");
    lot_body["currency"] = json!("USD");
    lot_body["starts_at"] = json!("tomorrow");
    assert_error(c.post("/v1/lots", Some(&curator), lot_body.clone()).await, bad, "invalid_time");
    lot_body["starts_at"] = json!(rfc3339(now + 120_000));
    assert_error(c.post("/v1/lots", Some(&curator), lot_body.clone()).await, bad, "invalid_time");
    lot_body["starts_at"] = json!(rfc3339(now));
    lot_body["start_price"] = json!(-1);
    assert_error(c.post("/v1/lots", Some(&curator), lot_body.clone()).await, bad, "invalid_amount");
    lot_body["start_price"] = json!(1000);
    lot_body["title"] = json!("");
    assert_error(c.post("/v1/lots", Some(&curator), lot_body.clone()).await, bad, "invalid_input");
    assert_error(
        c.post("/v1/users", None, json!({"username": "shorty", "password": "short"})).await,
        bad,
        "invalid_input",
    );
    assert_error(
        c.post("/v1/users", None, json!({"username": "no spaces please", "password": "long enough"})).await,
        bad,
        "invalid_input",
    );
    assert_error(
        c.post(&format!("/v1/users/{alice}/role"), Some(&admin), json!({"role": "king"})).await,
        bad,
        "invalid_input",
    );

    // ---- 401: no token, forged, expired, alg none, wrong password ----
    let unauthorized = StatusCode::UNAUTHORIZED;
    assert_error(
        c.post(&bids, None, json!({"bid_id": "x", "max_amount": 200_000})).await,
        unauthorized,
        "unauthorized",
    );
    let forged = gateway::auth::Jwt::new(b"another-secret-of-at-least-32-bytes!!", Duration::from_secs(60))
        .unwrap()
        .mint(&alice, ledger::pb::Role::Admin)
        .unwrap()
        .0;
    assert_error(
        c.post(&bids, Some(&forged), json!({"bid_id": "x", "max_amount": 200_000})).await,
        unauthorized,
        "unauthorized",
    );
    let past = (now_ms() / 1000 - 3600) as u64;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": alice, "role": "user", "iss": "gavel", "iat": past - 60, "exp": past}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_error(
        c.post(&bids, Some(&expired), json!({"bid_id": "x", "max_amount": 200_000})).await,
        unauthorized,
        "unauthorized",
    );
    let future = (now_ms() / 1000 + 3600) as u64;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD
            .encode(json!({"sub": alice, "role": "admin", "iss": "gavel", "iat": 1, "exp": future}).to_string())
    );
    assert_error(c.post("/v1/auctions", Some(&none), json!({})).await, unauthorized, "unauthorized");
    assert_error(c.get(&format!("/v1/lots/{lot}"), Some("not-a-token")).await, unauthorized, "unauthorized");
    assert_error(
        c.post("/v1/sessions", None, json!({"username": "alice", "password": "wrong password"})).await,
        unauthorized,
        "invalid_credentials",
    );
    assert_error(
        c.post("/v1/sessions", None, json!({"username": "nobody", "password": "whatever1"})).await,
        unauthorized,
        "invalid_credentials",
    );

    // ---- 403: roles and ownership; a user cannot raise their own role ----
    let forbidden = StatusCode::FORBIDDEN;
    assert_error(
        c.post(&format!("/v1/users/{alice}/role"), Some(&alice_token), json!({"role": "admin"})).await,
        forbidden,
        "forbidden",
    );
    assert_error(
        c.post(&format!("/v1/users/{alice}/role"), Some(&curator), json!({"role": "admin"})).await,
        forbidden,
        "forbidden",
    );
    assert_error(c.post("/v1/lots", Some(&alice_token), lot_body.clone()).await, forbidden, "forbidden");
    assert_error(
        c.post(&format!("/v1/lots/{lot}/status"), Some(&alice_token), json!({"status": "AuctionCancelled"})).await,
        forbidden,
        "forbidden",
    );
    assert_error(c.post("/v1/auctions", Some(&curator), json!({})).await, forbidden, "forbidden");
    assert_error(
        c.post(&format!("/v1/auctions/{auction}/status"), Some(&curator), json!({"status": "Cancelled"})).await,
        forbidden,
        "forbidden",
    );
    let (status, session) =
        c.post("/v1/sessions", None, json!({"username": "alice", "password": "alice-password"})).await;
    assert_eq!((status, session["role"].as_str()), (StatusCode::OK, Some("user")), "alice is still a user");

    // ---- 404: unknown ids and routes ----
    let not_found = StatusCode::NOT_FOUND;
    assert_error(c.get("/v1/lots/no-such-lot", None).await, not_found, "lot_not_found");
    assert_error(c.get("/v1/lots/no-such-lot/bids", None).await, not_found, "lot_not_found");
    assert_error(
        c.post("/v1/lots/no-such-lot/bids", Some(&alice_token), json!({"bid_id": "z", "max_amount": 1000})).await,
        not_found,
        "lot_not_found",
    );
    assert_error(c.get("/v1/auctions/no-such-sale", None).await, not_found, "auction_not_found");
    assert_error(
        c.post("/v1/users/u-nobody/role", Some(&admin), json!({"role": "curator"})).await,
        not_found,
        "user_not_found",
    );
    assert_error(c.get("/v1/nothing-here", None).await, not_found, "not_found");
    assert_error(
        c.call(Method::DELETE, &format!("/v1/lots/{lot}"), None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // ---- 409: the rules of the auction ----
    let conflict = StatusCode::CONFLICT;
    assert_error(
        c.post(&bids, Some(&alice_token), json!({"bid_id": "a2", "max_amount": 90_000})).await,
        conflict,
        "not_above_own_max",
    );
    let (_, bob_token) = c.user("bob").await;
    assert_error(
        c.post(&bids, Some(&bob_token), json!({"bid_id": "b1", "max_amount": 50_500})).await,
        conflict,
        "below_minimum",
    );
    assert_error(
        c.post(&bids, Some(&bob_token), json!({"bid_id": "b2", "max_amount": 120_500})).await,
        conflict,
        "not_an_increment",
    );
    assert_error(
        c.post(&format!("/v1/lots/{draft}/bids"), Some(&bob_token), json!({"bid_id": "b3", "max_amount": 120_000}))
            .await,
        conflict,
        "lot_not_open",
    );
    assert_error(
        c.post(&bids, Some(&curator), json!({"bid_id": "c1", "max_amount": 200_000})).await,
        conflict,
        "seller_cannot_bid",
    );
    let (status, body) =
        c.post(&format!("/v1/lots/{draft}/status"), Some(&curator), json!({"status": "InAuction"})).await;
    assert_error((status, body.clone()), conflict, "invalid_transition");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Draft") && message.contains("InAuction"), "names from and to: {message}");
    assert_error(
        c.post(&format!("/v1/lots/{lot}/status"), Some(&curator), json!({"status": "AuctionEnded"})).await,
        conflict,
        "closes_by_rule",
    );
    assert_error(
        c.post("/v1/users", None, json!({"username": "alice", "password": "another password"})).await,
        conflict,
        "username_taken",
    );
    assert_error(
        c.post(&format!("/v1/auctions/{auction}/lots"), Some(&admin), json!({"lot_id": draft})).await,
        conflict,
        "auction_not_scheduled",
    );
    let (_, empty) = c
        .post(
            "/v1/auctions",
            Some(&admin),
            json!({"title": "Empty", "currency": "USD", "starts_at": rfc3339(now), "ends_at": rfc3339(now + 60_000)}),
        )
        .await;
    let empty = empty["auction_id"].as_str().unwrap();
    assert_error(
        c.post(&format!("/v1/auctions/{empty}/lots"), Some(&admin), json!({"lot_id": draft})).await,
        conflict,
        "lot_not_ready",
    );
    assert_error(
        c.post(&format!("/v1/auctions/{empty}/status"), Some(&admin), json!({"status": "Live"})).await,
        conflict,
        "auction_empty",
    );

    // ---- 413: a body over the limit ----
    let huge = json!({"bid_id": "h", "max_amount": 1, "pad": "x".repeat(100 * 1024)});
    assert_error(
        c.post_raw(&bids, Some(&alice_token), "application/json", huge.to_string().into_bytes()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );

    // Nothing above changed the lot: same version, price, leader and bid count.
    let (_, after) = c.get(&format!("/v1/lots/{lot}"), None).await;
    assert_eq!(after, before);
    // Refusals are answered again unchanged (exactly-once covers rejections too).
    assert_error(
        c.post(&bids, Some(&bob_token), json!({"bid_id": "b1", "max_amount": 200_000})).await,
        conflict,
        "below_minimum",
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_bids_go_on_after_the_leader_dies() {
    let mut c = TestCluster::start().await;
    let admin = c.admin().await;
    let (_, curator) = c.curator("carol").await;
    let (_, alice) = c.user("alice").await;
    let (bob_id, bob) = c.user("bob").await;
    let lot = c.ready_lot(&curator, None, 0).await;
    c.live_sale(&admin, &[&lot]).await;
    let bids = format!("/v1/lots/{lot}/bids");
    let (status, first) = c.post(&bids, Some(&alice), json!({"bid_id": "a1", "max_amount": 80_000})).await;
    assert_eq!(status, StatusCode::OK, "{first}");

    let leader = c.leader().await;
    c.stop_node(leader).await;

    // Bob's bid goes through the new leader; the acknowledged bid of alice is still there.
    let (status, answer) = c.post(&bids, Some(&bob), json!({"bid_id": "b1", "max_amount": 100_000})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], "leading");
    let (status, read) = c.get(&format!("/v1/lots/{lot}"), None).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["leading_bidder"], bob_id.as_str());
    assert_eq!(read["current_price"], 81_000);
    assert_eq!(read["bid_count"], 2);
    let (status, history) = c.get(&bids, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["bids"].as_array().unwrap().len(), 2);
    // Sign-in still works (a linearizable user read through the new leader).
    c.login("alice", "alice-password").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_metrics() {
    let c = TestCluster::start().await;
    let (status, health) = c.get("/healthz", None).await;
    assert_eq!((status, health["status"].as_str()), (StatusCode::OK, Some("ok")));
    // Ready once a leader is known and the feed has caught up.
    let mut ready = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    for _ in 0..100 {
        ready = c.get("/readyz", None).await;
        if ready.0 == StatusCode::OK {
            break;
        }
        assert_eq!(code(&ready.1), "not_ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.1);
    // Ready allows a bounded lag, so the feed may still be reaching the admin's creation.
    for _ in 0..100 {
        if ready.1["feed_index"].as_u64().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready = c.get("/readyz", None).await;
    }
    assert!(ready.1["feed_index"].as_u64().unwrap() > 0, "{}", ready.1);

    let admin = c.admin().await;
    let (_, curator) = c.curator("carol").await;
    let (_, alice) = c.user("alice").await;
    let lot = c.ready_lot(&curator, None, 0).await;
    c.live_sale(&admin, &[&lot]).await;
    let bids = format!("/v1/lots/{lot}/bids");
    c.post(&bids, Some(&alice), json!({"bid_id": "a1", "max_amount": 80_000})).await;
    c.post(&bids, Some(&alice), json!({"bid_id": "a2", "max_amount": 70_000})).await;

    let response = c.http.get(format!("{}/metrics", c.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    let text = response.text().await.unwrap();
    assert!(text.contains(r#"gavel_bids_total{result="accepted"} 1"#), "{text}");
    assert!(text.contains(r#"gavel_bids_total{result="not_above_own_max"} 1"#), "{text}");
    assert!(text.contains(r#"route="/v1/lots/{lot_id}/bids""#), "{text}");
    assert!(text.contains("gavel_propose_batch_commands_count"), "{text}");
    assert!(text.contains("gavel_feed_lag_entries"), "{text}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_their_rate_gets_429_and_others_do_not() {
    let c = TestCluster::start_with(|config| {
        config.rate_user = gateway::protect::Rate { per_sec: 1, burst: 3 };
    })
    .await;
    let (_, alice) = c.user("alice").await;
    let (_, bob) = c.user("bob").await;
    let bid = json!({"bid_id": "x", "max_amount": 1000});
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(c.post("/v1/lots/none/bids", Some(&alice), bid.clone()).await);
    }
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!limited.is_empty(), "no 429 among {statuses:?}");
    assert_eq!(code(&limited[0].1), "rate_limited");
    // Bob has his own budget, and reading is limited per address only.
    let (status, body) = c.post("/v1/lots/none/bids", Some(&bob), bid).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "lot_not_found"));
    for _ in 0..6 {
        let (status, body) = c.get("/v1/lots/none", Some(&alice)).await;
        assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "lot_not_found"));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bids_share_propose_batches() {
    let c = TestCluster::start().await;
    let admin = c.admin().await;
    let (_, curator) = c.curator("carol").await;
    let lot = c.ready_lot(&curator, None, 0).await;
    c.live_sale(&admin, &[&lot]).await;
    let mut tokens = Vec::new();
    for i in 0..20 {
        tokens.push(c.user(&format!("bidder{i}")).await.1);
    }
    let bids = format!("/v1/lots/{lot}/bids");
    let text = c.http.get(format!("{}/metrics", c.url)).send().await.unwrap().text().await.unwrap();
    let (calls_before, commands_before) =
        (metric(&text, "gavel_propose_batch_commands_count"), metric(&text, "gavel_propose_batch_commands_sum"));
    // 20 users, 10 bids each, all at once: every one gets an answer, none is lost.
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        for k in 0..10 {
            let (http, url, token) = (c.http.clone(), format!("{}{bids}", c.url), token.clone());
            let max = 50_000 + ((k * 20 + i) as i64) * 1_000;
            tasks.push(tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"bid_id": format!("k{k}"), "max_amount": max}))
                    .send()
                    .await
                    .unwrap();
                response.status()
            }));
        }
    }
    for task in tasks {
        let status = task.await.unwrap();
        assert!(status == StatusCode::OK || status == StatusCode::CONFLICT, "{status}");
    }
    let text = c.http.get(format!("{}/metrics", c.url)).send().await.unwrap().text().await.unwrap();
    let (count, sum) = (
        metric(&text, "gavel_propose_batch_commands_count") - calls_before,
        metric(&text, "gavel_propose_batch_commands_sum") - commands_before,
    );
    assert_eq!(sum, 200.0, "{text}");
    assert!(count < sum, "200 concurrent bids went out in {count} calls: no batching");
    c.shutdown().await;
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
