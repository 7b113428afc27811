//! `GET /v1/catalog` against a real cluster: pages agree with a brute-force filter over the
//! ledger's own lots (a property test over random lots and bids), the catalog resumes across
//! gateway restarts and a killed node, a rebuild (even one killed part-way, again and again)
//! is byte-identical, and bad input gets clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use catalog::{Embedded, LotSummary, Query, Sort, Store};
use common::{TestCluster, now_ms, rfc3339};
use ledger::lifecycle;
use ledger::pb::LotStatus;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ARTISTS: [&str; 4] = ["Mirela Voss", "Tomás Ilić", "Aiko Brandt", "Sade Okafor"];
const CATEGORIES: [&str; 3] = ["painting", "sculpture", "prints"];

/// One random lot: where it goes in its lifecycle and the bids it gets.
#[derive(Debug, Clone)]
struct LotPlan {
    artist: usize,
    category: usize,
    start_price: i64,
    ends_in_secs: i64,
    /// 0 Draft .. 3 ReadyForAuction, 4 InAuction.
    steps: usize,
    bids: Vec<(usize, i64)>,
}

fn lot_plan() -> impl Strategy<Value = LotPlan> {
    (
        0..ARTISTS.len(),
        0..CATEGORIES.len(),
        1i64..50,
        60i64..7_200,
        0usize..5,
        prop::collection::vec((0usize..3, 0i64..4), 0..5),
    )
        .prop_map(|(artist, category, price, ends_in_secs, steps, bids)| LotPlan {
            artist,
            category,
            start_price: price * 1_000,
            ends_in_secs,
            steps,
            bids,
        })
}

/// The lots so far, in creation order (which is log order: they are created one by one).
struct World {
    curator: String,
    bidders: Vec<String>,
    lots: Vec<String>,
}

impl World {
    async fn play(&mut self, cluster: &TestCluster, plans: &[LotPlan]) {
        for plan in plans {
            let now = now_ms();
            let lot = json!({
                "title": format!("Study {}", self.lots.len()), "description": "", "artist": ARTISTS[plan.artist],
                "category": CATEGORIES[plan.category], "currency": "USD", "start_price": plan.start_price,
                "starts_at": rfc3339(now - 1_000), "ends_at": rfc3339(now + plan.ends_in_secs * 1_000),
            });
            let (status, body) = cluster.post("/v1/lots", Some(&self.curator), lot).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let lot_id = body["lot_id"].as_str().unwrap().to_owned();
            let path = ["UnderReview", "Authenticated", "ReadyForAuction", "InAuction"];
            for to in path.iter().take(plan.steps) {
                let (status, body) = cluster
                    .post(&format!("/v1/lots/{lot_id}/status"), Some(&self.curator), json!({"status": to}))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            if plan.steps == 4 {
                for (n, (bidder, raise)) in plan.bids.iter().enumerate() {
                    let (_, lot) = cluster.get(&format!("/v1/lots/{lot_id}"), None).await;
                    let amount = lot["minimum_bid"].as_i64().unwrap() + raise * 500;
                    let bid = json!({"bid_id": format!("b{n}"), "max_amount": amount});
                    let (status, body) =
                        cluster.post(&format!("/v1/lots/{lot_id}/bids"), Some(&self.bidders[*bidder]), bid).await;
                    // A leader raising their own maximum by too little is refused: still a bid tried.
                    assert!(
                        status == StatusCode::CREATED || status == StatusCode::OK || status.is_client_error(),
                        "{body}"
                    );
                }
            }
            self.lots.push(lot_id);
        }
    }

    /// Every lot as the ledger itself shows it (linearizable reads), and an index at least as
    /// new as every write so far.
    async fn ledger_lots(&self, cluster: &TestCluster) -> (Vec<LotSummary>, u64) {
        let mut lots = Vec::new();
        let mut index = 0;
        for (created, lot_id) in self.lots.iter().enumerate() {
            let response = cluster.http.get(format!("{}/v1/lots/{lot_id}", cluster.url)).send().await.unwrap();
            let applied: u64 = response.headers()["gavel-applied-index"].to_str().unwrap().parse().unwrap();
            index = index.max(applied);
            let v: Value = response.json().await.unwrap();
            lots.push(summary_of(&v, created as u64 + 1));
        }
        (lots, index)
    }
}

fn time_ms(v: &Value) -> i64 {
    ledger::time::parse_time("t", v.as_str().unwrap()).unwrap()
}

/// A lot as the API shows it, in the catalog's terms (`created` orders `newest`).
fn summary_of(v: &Value, created: u64) -> LotSummary {
    LotSummary {
        lot_id: v["lot_id"].as_str().unwrap().into(),
        title: v["title"].as_str().unwrap().into(),
        artist: v["artist"].as_str().unwrap().into(),
        category: v["category"].as_str().unwrap().into(),
        currency: v["currency"].as_str().unwrap().into(),
        status: lifecycle::parse_name(v["status"].as_str().unwrap()).unwrap() as i32,
        start_price: v["start_price"].as_i64().unwrap(),
        current_price: v["current_price"].as_i64().unwrap(),
        bid_count: v["bid_count"].as_u64().unwrap() as u32,
        reserve_met: v["reserve_met"].as_bool().unwrap(),
        starts_at_ms: time_ms(&v["starts_at"]),
        ends_at_ms: time_ms(&v["ends_at"]),
        leading_bidder: v["leading_bidder"].as_str().unwrap_or("").into(),
        auction_id: v.get("auction_id").and_then(Value::as_str).unwrap_or("").into(),
        minimum_bid: v["minimum_bid"].as_i64().unwrap(),
        created_index: created,
        index: 0,
        categories: v["categories"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect(),
        // Not in the lot object; these lots have none.
        attributes: Vec::new(),
        images: Vec::new(),
    }
}

/// The query parameters for `q` (without cursor), as a client would send them.
fn params(q: &Query, min_index: u64) -> Vec<(&'static str, String)> {
    let sort = match q.sort {
        Sort::EndsAt => "ends_at",
        Sort::Price => "price",
        Sort::Newest => "newest",
    };
    let mut p = vec![("limit", q.limit.to_string()), ("min_index", min_index.to_string()), ("sort", sort.into())];
    if let Some(s) = q.status {
        p.push(("status", lifecycle::name(s).into()));
    }
    if let Some(a) = &q.artist {
        p.push(("artist", a.clone()));
    }
    if let Some(c) = &q.category {
        p.push(("category", c.clone()));
    }
    if let Some(v) = q.min_price {
        p.push(("min_price", v.to_string()));
    }
    if let Some(v) = q.max_price {
        p.push(("max_price", v.to_string()));
    }
    p
}

/// Every page of a catalog query, following `next_cursor`; no lot may come twice.
async fn catalog_all(cluster: &TestCluster, q: &Query, min_index: u64) -> Vec<Value> {
    let mut cursor: Option<String> = None;
    let mut out: Vec<Value> = Vec::new();
    loop {
        let mut query = params(q, min_index);
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let response = cluster.http.get(format!("{}/v1/catalog", cluster.url)).query(&query).send().await.unwrap();
        let status = response.status();
        let page: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{query:?}: {page}");
        assert!(page["as_of_index"].as_u64().unwrap() >= min_index, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= q.limit);
        for item in items {
            assert!(!out.iter().any(|o| o["lot_id"] == item["lot_id"]), "{} twice", item["lot_id"]);
            out.push(item.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// The brute-force answer, written out here rather than borrowed from the catalog crate, so
/// the test does not share the code it checks.
fn oracle<'a>(q: &Query, lots: &'a [LotSummary]) -> Vec<&'a LotSummary> {
    let mut hits: Vec<&LotSummary> = lots
        .iter()
        .filter(|l| q.status.is_none_or(|s| l.status == s as i32))
        .filter(|l| q.artist.as_ref().is_none_or(|a| &l.artist == a))
        .filter(|l| q.category.as_ref().is_none_or(|c| &l.category == c))
        .filter(|l| q.min_price.is_none_or(|p| l.current_price >= p))
        .filter(|l| q.max_price.is_none_or(|p| l.current_price <= p))
        .collect();
    match q.sort {
        Sort::EndsAt => hits.sort_by(|a, b| (a.ends_at_ms, &a.lot_id).cmp(&(b.ends_at_ms, &b.lot_id))),
        Sort::Price => hits.sort_by(|a, b| (a.current_price, &a.lot_id).cmp(&(b.current_price, &b.lot_id))),
        Sort::Newest => hits.sort_by(|a, b| {
            (std::cmp::Reverse(a.created_index), &a.lot_id).cmp(&(std::cmp::Reverse(b.created_index), &b.lot_id))
        }),
    }
    hits
}

/// Checks `q` against the brute-force answer over the ledger's lots, field by field.
async fn check_query(cluster: &TestCluster, q: &Query, lots: &[LotSummary], min_index: u64) {
    let want = oracle(q, lots);
    let got = catalog_all(cluster, q, min_index).await;
    let got_ids: Vec<&str> = got.iter().map(|v| v["lot_id"].as_str().unwrap()).collect();
    let want_ids: Vec<&str> = want.iter().map(|l| l.lot_id.as_str()).collect();
    assert_eq!(got_ids, want_ids, "query {q:?}");
    for (item, lot) in got.iter().zip(want) {
        let as_listed = summary_of(item, lot.created_index);
        assert_eq!(&as_listed, lot, "lot {} as listed", lot.lot_id);
    }
}

fn queries(lots: &[LotSummary]) -> Vec<Query> {
    let mut out = Vec::new();
    let median_price = {
        let mut prices: Vec<i64> = lots.iter().map(|l| l.current_price).collect();
        prices.sort();
        prices.get(prices.len() / 2).copied().unwrap_or(0)
    };
    for sort in [Sort::EndsAt, Sort::Price, Sort::Newest] {
        out.push(Query { sort, limit: 4, ..Query::default() });
        out.push(Query { sort, limit: 3, status: Some(LotStatus::InAuction), ..Query::default() });
        out.push(Query {
            sort,
            limit: 5,
            artist: Some(ARTISTS[1].into()),
            min_price: Some(median_price),
            ..Query::default()
        });
        out.push(Query {
            sort,
            limit: 2,
            category: Some("painting".into()),
            max_price: Some(median_price),
            ..Query::default()
        });
    }
    out
}

#[test]
fn catalog_pages_agree_with_the_ledger() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (cluster, world) = runtime.block_on(async {
        let cluster = TestCluster::start().await;
        let (_, curator) = cluster.curator("cat-curator").await;
        let mut bidders = Vec::new();
        for b in 0..3 {
            bidders.push(cluster.user(&format!("cat-bidder-{b}")).await.1);
        }
        (cluster, tokio::sync::Mutex::new(World { curator, bidders, lots: Vec::new() }))
    });
    let mut runner = TestRunner::new(Config { cases: 6, failure_persistence: None, ..Config::default() });
    let result = runner.run(&prop::collection::vec(lot_plan(), 2..6), |plans| {
        runtime.block_on(async {
            let mut world = world.lock().await;
            world.play(&cluster, &plans).await;
            let (lots, index) = world.ledger_lots(&cluster).await;
            for q in queries(&lots) {
                check_query(&cluster, &q, &lots, index).await;
            }
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    runtime.block_on(cluster.shutdown());
}

/// Runs `gavel catalog rebuild`; its printed digest line.
fn rebuild(addrs: &[String], dir: &std::path::Path, until: u64) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["catalog", "rebuild", "--nodes", &addrs.join(","), "--until", &until.to_string()])
        .arg("--dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn digest_line(output: &std::process::Output) -> String {
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "rebuild failed: {out} {}", String::from_utf8_lossy(&output.stderr));
    out.lines().find(|l| l.contains("digest")).unwrap_or_else(|| panic!("no digest in {out}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_resumes_and_rebuilds_byte_identical() {
    let mut cluster = TestCluster::start().await;
    let (curator_id, curator) = cluster.curator("resume-curator").await;
    // Bulk lots straight through the node client, so the feed is long enough to kill a
    // rebuild part-way: 60 proposals of 100 lots each, every lot created and moved once. (Entries
    // of 500 commands left a follower unable to catch up within a minute in a debug build: see
    // the write-path issue on append deadlines.)
    let client = node::Client::new(cluster.addrs.clone());
    let now = now_ms();
    for batch in 0..60 {
        let mut commands = Vec::new();
        for n in 0..100 {
            let lot_id = format!("bulk-{batch}-{n}");
            commands.push(command(
                &curator_id,
                ledger::pb::command::Body::CreateLot(ledger::pb::CreateLot {
                    lot_id: lot_id.clone(),
                    title: format!("Bulk lot {batch}/{n}"),
                    artist: ARTISTS[n % ARTISTS.len()].into(),
                    category: CATEGORIES[n % CATEGORIES.len()].into(),
                    currency: "USD".into(),
                    start_price: 1_000 + n as i64,
                    starts_at_ms: now - 1_000,
                    ends_at_ms: now + 3_600_000 + n as i64 * 1_000,
                    ..Default::default()
                }),
            ));
            commands.push(command(
                &curator_id,
                ledger::pb::command::Body::SetLotStatus(ledger::pb::SetLotStatus {
                    lot_id,
                    status: LotStatus::UnderReview as i32,
                }),
            ));
        }
        let results = client.propose(commands).await.unwrap();
        assert!(results.iter().all(|r| r.log_index > 0));
    }
    // A few lots through the API, then the gateway restarts: the catalog resumes from its
    // checkpoint (no gap, no duplicate) and still agrees with the ledger.
    let mut world = World { curator, bidders: vec![cluster.user("resume-bidder").await.1], lots: Vec::new() };
    let plan = LotPlan { artist: 0, category: 0, start_price: 5_000, ends_in_secs: 900, steps: 4, bids: vec![(0, 1)] };
    world.play(&cluster, &[plan.clone(), plan.clone()]).await;
    cluster.restart_gateway().await;
    world.play(&cluster, std::slice::from_ref(&plan)).await;
    let (lots, index) = world.ledger_lots(&cluster).await;
    let q =
        Query { artist: Some(ARTISTS[0].into()), status: Some(LotStatus::InAuction), limit: 10, ..Query::default() };
    check_query(&cluster, &q, &lots, index).await;
    // The node the catalog's subscriber streams from (its first choice, node 0) dies under
    // it; writes go on (through a new leader if it led) and the catalog follows them
    // through another node.
    // First let every node catch up with the bulk entries: with one node gone, the other two
    // must both take each write (several clusters share two cores in this suite).
    let head = node::Client::metrics(&cluster.addrs[cluster.leader().await]).await.unwrap().last_applied_index;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    for addr in &cluster.addrs {
        while node::Client::metrics(addr).await.map_or(0, |m| m.last_applied_index) < head {
            assert!(std::time::Instant::now() < until, "{addr} did not catch up to {head}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.stop_node(0).await;
    // If it led, wait out the election.
    cluster.leader().await;
    world.play(&cluster, &[plan.clone(), plan]).await;
    let (lots, index) = world.ledger_lots(&cluster).await;
    check_query(&cluster, &q, &lots, index).await;
    // The gateway's view of the cluster is polled: right after a failover it may not have
    // seen the new leader yet.
    let mut ready = cluster.get("/readyz", None).await;
    for _ in 0..50 {
        if ready.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = cluster.get("/readyz", None).await;
    }
    let (status, ready) = ready;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert!(ready["catalog_index"].as_u64().unwrap() >= index);
    // The gauges are refreshed every half second.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.metric("gavel_catalog_index").await < index as f64 {
        assert!(std::time::Instant::now() < until, "gavel_catalog_index never reached {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop the gateway: its store, built incrementally, is compared with rebuilds.
    let gateway = cluster.gateway.take().unwrap();
    gateway.shutdown().await.unwrap();
    let incremental = Embedded::open(&cluster.gateway_config.catalog_dir).unwrap().digest().unwrap();
    let live: Vec<String> =
        cluster.nodes.iter().enumerate().filter(|(_, n)| n.is_some()).map(|(i, _)| cluster.addrs[i].clone()).collect();
    let scratch = tempfile::tempdir().unwrap();
    let whole = rebuild(&live, &scratch.path().join("whole"), incremental.checkpoint);
    assert!(digest_line(&whole).ends_with(&incremental.hex()), "{}", digest_line(&whole));

    // Killed part-way again and again, each run resuming from the store's checkpoint.
    let dir = scratch.path().join("killed");
    let target = incremental.checkpoint;
    let command = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"));
        command
            .args(["catalog", "rebuild", "--nodes", &live.join(","), "--until", &target.to_string()])
            .arg("--dir")
            .arg(&dir)
            .env("RUST_LOG", "warn");
        command
    };
    // Where a killed run left the store (it may not have opened it yet).
    let checkpoint = || Embedded::open(&dir).ok().and_then(|s| s.checkpoint().ok()).unwrap_or(0);
    let reset = || {
        let _ = std::fs::remove_dir_all(&dir);
    };
    let (killed_mid_run, checkpoints) = common::kill_part_way(command, checkpoint, reset, target, 300).await;
    let resumed = rebuild(&live, &dir, incremental.checkpoint);
    assert!(digest_line(&resumed).ends_with(&incremental.hex()), "{}", digest_line(&resumed));
    assert!(killed_mid_run > 0, "no rebuild was killed part-way ({checkpoints:?}): nothing was tested");
    eprintln!("rebuild killed at checkpoints {checkpoints:?} of {target}, then resumed to the same digest");
    assert!(incremental.lots >= 6_000 + lots.len() as u64);
    cluster.shutdown().await;
}

fn command(actor: &str, body: ledger::pb::command::Body) -> ledger::pb::Command {
    ledger::pb::Command { at_ms: 0, actor: actor.into(), log_index: 0, body: Some(body) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_refuses_bad_input_clearly() {
    let cluster = TestCluster::start_with(|c| c.catalog_wait = Duration::from_millis(300)).await;
    for (path, status, code) in [
        ("/v1/catalog?colour=red", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?status=Sold", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?sort=cheapest", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?limit=0", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?limit=201", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?min_price=-1", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?min_price=10&max_price=5", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?artist=a&artist=b", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?ending_within_secs=0", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?cursor=bm9wZQ", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?attr.Medium=oil", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?attr.=oil", StatusCode::BAD_REQUEST, "invalid_input"),
        ("/v1/catalog?min_index=999999999", StatusCode::SERVICE_UNAVAILABLE, "catalog_behind"),
    ] {
        let (got, body) = cluster.get(path, None).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A cursor from one order is refused under another.
    let (_, curator) = cluster.curator("input-curator").await;
    for _ in 0..3 {
        cluster.ready_lot(&curator, None, 0).await;
    }
    let (status, page) = cluster.get("/v1/catalog?limit=1&sort=newest&min_index=1", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, body) = cluster.get(&format!("/v1/catalog?limit=1&sort=price&cursor={cursor}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Ending soon: only lots that end within the window.
    let soon = cluster.ready_lot_ending(&curator, None, 0, 30_000).await;
    // The write's answer names the log index that applied it: reading the catalog with it as
    // `min_index` sees the write.
    let response = cluster
        .http
        .post(format!("{}/v1/lots/{soon}/status", cluster.url))
        .bearer_auth(&curator)
        .json(&json!({"status": "InAuction"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let index: u64 = response.headers()["gavel-log-index"].to_str().unwrap().parse().unwrap();
    let lot: Value = response.json().await.unwrap();
    assert_eq!(lot["status"], "InAuction");
    let (status, page) = cluster.get(&format!("/v1/catalog?ending_within_secs=120&min_index={index}"), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["items"].as_array().unwrap().iter().map(|i| i["lot_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![soon.as_str()], "{page} (lot {lot})");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_admin_only() {
    let cluster = TestCluster::start().await;
    let (_, user) = cluster.user("dl-user").await;
    let admin = cluster.admin().await;
    let (status, _) = cluster.get("/v1/admin/dead-letters", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = cluster.get("/v1/admin/dead-letters", Some(&user)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = cluster.get("/v1/admin/dead-letters", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dead_letters"], json!([]));
    let (status, body) = cluster.post("/v1/admin/dead-letters/7/retry", Some(&admin), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The operator command talks to the same API.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["dead-letters", "list", "--url", &cluster.url, "--token", &admin])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "no dead letters");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["dead-letters", "retry", "7", "--url", &cluster.url, "--token", &user])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("forbidden"));
    cluster.shutdown().await;
}

/// `--catalog-store`: a URI that is not one, or a ScyllaDB cluster that does not answer, stops
/// the gateway at start with the reason, before it serves anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_store_that_cannot_be_opened_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("127.0.0.1:{}", common::free_port());
    for (uri, reason) in
        [("scylla://127.0.0.1:9042", "no /keyspace"), (&format!("scylla://{nobody}/gavel") as &str, nobody.as_str())]
    {
        let mut config = common::config(vec![nobody.clone()], dir.path().join("catalog"));
        config.catalog_store = Some(uri.to_owned());
        config.admin_password = None;
        let error = match gateway::Gateway::start(config).await {
            Ok(_) => panic!("{uri}: the gateway started"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("catalog store") && error.contains(reason), "{uri}: {error}");
    }
}
