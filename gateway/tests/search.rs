//! `GET /v1/search` and `/v1/search/artists` on a real cluster with the real model: lots
//! described in three languages found by queries in a fourth; filters, exact-name boosts and
//! bad input; the index surviving a gateway restart; `gavel search reindex` killed part-way
//! and resumed to the same index as the gateway's.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestCluster, now_ms, rfc3339};
use gateway::config::SearchConfig;
use reqwest::StatusCode;
use search::{Embedded, Filter, Kind, VectorStore};
use serde_json::{Value, json};

fn model() -> PathBuf {
    std::env::var_os("GAVEL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/e5-small-q4.bin"))
}

async fn with_search(dir: &Path) -> TestCluster {
    let model = model();
    assert!(model.exists(), "{} is missing: run scripts/setup", model.display());
    let dir = dir.to_owned();
    TestCluster::start_with(move |c| c.search = Some(SearchConfig { model, dir, store: None })).await
}

/// (title, artist, description, category): an Italian Renaissance panel described in English,
/// a Dutch landscape in Spanish, an abstract bronze in German, a Japanese woodblock in French.
const LOTS: [(&str, &str, &str, &str); 4] = [
    (
        "Madonna and Child",
        "Workshop of Giovanni Bellini",
        "Italian Renaissance oil on panel, Venice, around 1480.",
        "painting",
    ),
    (
        "Paisaje con molinos",
        "Jan van Goyen",
        "Pintura al óleo de un paisaje holandés con molinos de viento bajo un cielo nublado.",
        "painting",
    ),
    ("Liegende Form", "Hans Arp", "Moderne abstrakte Skulptur aus Bronze mit dunkler Patina.", "sculpture"),
    (
        "La Grande Vague",
        "Katsushika Hokusai",
        "Estampe japonaise gravée sur bois : une immense vague menace des barques.",
        "print",
    ),
];

async fn create_lots(cluster: &TestCluster, curator: &str) -> Vec<String> {
    let now = now_ms();
    let mut ids = Vec::new();
    for (title, artist, description, category) in LOTS {
        let lot = json!({
            "title": title, "artist": artist, "description": description, "category": category,
            "currency": "EUR", "start_price": 10_000,
            "starts_at": rfc3339(now + 60_000), "ends_at": rfc3339(now + 3_600_000),
        });
        let (status, body) = cluster.post("/v1/lots", Some(curator), lot).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["lot_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Polls `path` until its `as_of_index` reaches `index` (bounded).
async fn search_at(cluster: &TestCluster, path: &str, index: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = cluster.get(path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        if body["as_of_index"].as_u64().unwrap() >= index {
            return body;
        }
        assert!(Instant::now() < deadline, "search stuck at {body} below {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's applied index now: every write so far is at or below it.
async fn applied(cluster: &TestCluster) -> u64 {
    let mut best = 0;
    for addr in &cluster.addrs {
        if let Ok(m) = node::Client::metrics(addr).await {
            best = best.max(m.last_applied_index);
        }
    }
    best
}

fn first(body: &Value) -> &str {
    body["hits"][0]["lot_id"].as_str().unwrap_or_else(|| panic!("no hits: {body}"))
}

fn encode(q: &str) -> String {
    q.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lots_are_found_across_languages() {
    let scratch = tempfile::tempdir().unwrap();
    let mut cluster = with_search(&scratch.path().join("search")).await;
    let (_, curator) = cluster.curator("search-curator").await;
    let ids = create_lots(&cluster, &curator).await;
    let index = applied(&cluster).await;

    // Queries in a fourth phrasing or language: Spanish, English, Italian, Portuguese.
    let queries = [
        ("arte renacentista italiano", 0),
        ("Dutch landscape painting with windmills", 1),
        ("scultura astratta in bronzo", 2),
        ("xilogravura japonesa de uma onda", 3),
    ];
    for (q, expected) in queries {
        let body = search_at(&cluster, &format!("/v1/search?q={}", encode(q)), index).await;
        assert_eq!(first(&body), ids[expected], "{q:?} found {body}");
        let hit = &body["hits"][0];
        assert_eq!(hit["title"], LOTS[expected].0);
        assert_eq!(hit["artist"], LOTS[expected].1);
        assert!(hit["score"].as_f64().unwrap() > 0.0);
        assert_eq!(body["hits"].as_array().unwrap().len(), 4, "all lots ranked: {body}");
    }

    // Filters: by category, and by status (all are Draft; none is ReadyForAuction).
    let body = search_at(&cluster, &format!("/v1/search?q={}&category=print", encode("bronze sculpture")), index).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 1);
    assert_eq!(first(&body), ids[3]);
    let body = search_at(&cluster, "/v1/search?q=painting&status=ReadyForAuction", index).await;
    assert!(body["hits"].as_array().unwrap().is_empty(), "{body}");
    let body = search_at(&cluster, "/v1/search?q=painting&status=Draft&limit=2", index).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 2);

    // A status change reaches the payload; the vector stays.
    for to in ["UnderReview", "Authenticated", "ReadyForAuction"] {
        let (status, body) =
            cluster.post(&format!("/v1/lots/{}/status", ids[3]), Some(&curator), json!({"status": to})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let index = applied(&cluster).await;
    let body = search_at(&cluster, "/v1/search?q=vague&status=ReadyForAuction", index).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(first(&body), ids[3]);

    // The exact artist first, even for a name the model only half knows.
    let body = search_at(&cluster, &format!("/v1/search?q={}", encode("Hans Arp")), index).await;
    assert_eq!(first(&body), ids[2], "{body}");

    // Artists: by name and by what they made.
    let body = search_at(&cluster, &format!("/v1/search/artists?q={}", encode("Katsushika Hokusai")), index).await;
    assert_eq!(body["hits"][0]["artist"], "Katsushika Hokusai", "{body}");
    assert_eq!(body["hits"][0]["lot_count"], 1);
    let body = search_at(&cluster, &format!("/v1/search/artists?q={}", encode("japanischer Holzschnitt")), index).await;
    assert_eq!(body["hits"][0]["artist"], "Katsushika Hokusai", "{body}");
    let body = search_at(&cluster, &format!("/v1/search/artists?q={}&limit=2", encode("paisaje")), index).await;
    assert_eq!(body["hits"].as_array().unwrap().len(), 2);

    // A restarted gateway answers from its stored index at once, at the same position.
    cluster.restart_gateway().await;
    let body = search_at(&cluster, &format!("/v1/search?q={}", encode("arte renacentista italiano")), index).await;
    assert_eq!(first(&body), ids[0]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_refuses_bad_input_and_says_when_it_is_off() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = with_search(&scratch.path().join("search")).await;
    let long = "a".repeat(1_025);
    for path in [
        "/v1/search".to_owned(),
        "/v1/search?q=".to_owned(),
        "/v1/search?q=%20%20".to_owned(),
        "/v1/search?q=vase&limit=0".to_owned(),
        "/v1/search?q=vase&limit=101".to_owned(),
        "/v1/search?q=vase&limit=ten".to_owned(),
        "/v1/search?q=vase&status=Sold".to_owned(),
        "/v1/search?q=vase&colour=blue".to_owned(),
        "/v1/search?q=vase&q=urn".to_owned(),
        format!("/v1/search?q={long}"),
        "/v1/search/artists?q=vase&status=Draft".to_owned(),
        "/v1/search/artists?limit=3".to_owned(),
    ] {
        let (status, body) = cluster.get(&path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_input", "{path}: {body}");
    }
    // Nothing indexed yet is an empty answer, not an error.
    let (status, body) = cluster.get("/v1/search?q=vase", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["as_of_index"].is_u64());
    cluster.shutdown().await;

    // Without a model the gateway serves everything else and says why search is off.
    let missing = scratch.path().join("no-such-model.bin");
    let cluster = TestCluster::start_with(move |c| {
        c.search = Some(SearchConfig { model: missing, dir: scratch.path().join("unused"), store: None })
    })
    .await;
    let (status, body) = cluster.get("/v1/search?q=vase", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "search_unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("no-such-model.bin"), "{body}");
    let (status, _) = cluster.get("/v1/catalog", None).await;
    assert_eq!(status, StatusCode::OK);
    cluster.shutdown().await;
}

/// Opens a store a stopped gateway may still be letting go of (its sockets end on their own).
async fn open_when_free(dir: &Path) -> Embedded {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Embedded::open(dir, 384) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("search store still held: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Runs `gavel search reindex`.
fn reindex(addrs: &[String], dir: &Path, until: u64) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"));
    command
        .args(["search", "reindex", "--nodes", &addrs.join(","), "--until", &until.to_string()])
        .arg("--model")
        .arg(model())
        .arg("--dir")
        .arg(dir)
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_killed_part_way_resumes_to_the_gateways_index() {
    let scratch = tempfile::tempdir().unwrap();
    let search_dir = scratch.path().join("search");
    let mut cluster = with_search(&search_dir).await;
    let (curator_id, _) = cluster.curator("reindex-curator").await;
    // Lots straight through the node client, one per entry, so a reindex (16 entries a batch)
    // has many batches to be killed between.
    let client = node::Client::new(cluster.addrs.clone());
    let now = now_ms();
    let artists = ["Mirela Voss", "Jan van Goyen", "Hans Arp", "Berthe Morisot", "Katsushika Hokusai"];
    let subjects = ["harbour at dusk", "winter landscape", "bronze torso", "garden with parasol", "mountain and wave"];
    for batch in 0..30 {
        for n in 0..4 {
            let k = batch * 4 + n;
            let command = ledger::pb::Command {
                at_ms: 0,
                actor: curator_id.clone(),
                log_index: 0,
                body: Some(ledger::pb::command::Body::CreateLot(ledger::pb::CreateLot {
                    lot_id: format!("lot-{k:03}"),
                    title: format!("Study {k}: {}", subjects[k % subjects.len()]),
                    artist: artists[k % artists.len()].into(),
                    description: format!("Number {k} of a series, {}.", subjects[(k / 5) % subjects.len()]),
                    category: "painting".into(),
                    currency: "EUR".into(),
                    start_price: 1_000,
                    starts_at_ms: now + 60_000,
                    ends_at_ms: now + 3_600_000,
                    ..Default::default()
                })),
            };
            let results = client.propose(vec![command]).await.unwrap();
            assert!(results.iter().all(|r| r.log_index > 0));
        }
    }
    let target = applied(&cluster).await;
    search_at(&cluster, "/v1/search?q=study", target).await;
    cluster.gateway.take().unwrap().shutdown().await.unwrap();
    let incremental = open_when_free(&search_dir).await;

    // Killed again and again (SIGKILL: no batch finishes), each run resuming from the store's
    // checkpoint; the delay grows while runs make no progress (the model takes a moment to load).
    let dir = scratch.path().join("killed");
    let checkpoint = || Embedded::open(&dir, 384).ok().and_then(|s| s.checkpoint().ok()).unwrap_or(0);
    let reset = || {
        let _ = std::fs::remove_dir_all(&dir);
    };
    let (killed_mid_run, checkpoints) =
        common::kill_part_way(|| reindex(&cluster.addrs, &dir, target), checkpoint, reset, target, 1_500).await;
    let output = reindex(&cluster.addrs, &dir, target).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("120 lots, 5 artists, 0 dead letters"), "{stdout}");
    assert!(killed_mid_run > 0, "no reindex was killed part-way ({checkpoints:?}): nothing was tested");
    eprintln!("reindex killed at checkpoints {checkpoints:?} of {target}, then resumed");

    // The same points as the gateway's index: ids and payloads exactly, vectors to rounding
    // (batches of other sizes sum in another order).
    let resumed = Embedded::open(&dir, 384).unwrap();
    assert_eq!(resumed.checkpoint().unwrap(), incremental.checkpoint().unwrap());
    for kind in [Kind::Lot, Kind::Artist] {
        let a = incremental.scroll(kind, &Filter::default()).unwrap();
        let b = resumed.scroll(kind, &Filter::default()).unwrap();
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((&a.id, &a.payload), (&b.id, &b.payload));
            let cosine = search::model::cosine(&a.vector, &b.vector);
            assert!(cosine > 0.9999, "{kind:?} {}: cosine {cosine}", a.id);
        }
    }
    let counts: u64 =
        incremental.scroll(Kind::Artist, &Filter::default()).unwrap().iter().map(|p| p.payload.lot_count).sum();
    assert_eq!(counts, 120, "each lot counted once by its artist");
    cluster.shutdown().await;
}

/// An item search's indexer refuses is parked, listed by the admin API (and `gavel
/// dead-letters list`) as search's, and a retry that is refused again says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_dead_letters_through_the_admin_api() {
    let scratch = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start().await;
    let (_, curator) = cluster.curator("letters-curator").await;
    let ids = create_lots(&cluster, &curator).await;
    // A search store that starts past the lots' creation: it has never seen them, so a later
    // status change for one of them is refused and parked (a feed with a hole, made on purpose).
    let dir = scratch.path().join("search");
    let skipped = applied(&cluster).await;
    {
        let store = Embedded::open(&dir, 384).unwrap();
        let start = search::store::Changes { checkpoint: Some(skipped), ..Default::default() };
        store.commit(start).unwrap();
    }
    cluster.gateway_config.search = Some(SearchConfig { model: model(), dir, store: None });
    cluster.restart_gateway().await;
    let (status, body) =
        cluster.post(&format!("/v1/lots/{}/status", ids[0]), Some(&curator), json!({"status": "UnderReview"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let admin = cluster.admin().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let letter = loop {
        let (status, body) = cluster.get("/v1/admin/dead-letters", Some(&admin)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(letter) = body["dead_letters"].as_array().unwrap().iter().find(|l| l["subscriber"] == "search") {
            break letter.clone();
        }
        assert!(Instant::now() < deadline, "nothing parked: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letter["events"], json!(["lot_status_changed"]));
    assert_eq!(letter["attempts"], 1);
    assert!(letter["error"].as_str().unwrap().contains(&ids[0]), "{letter}");
    let id = letter["id"].as_u64().unwrap();

    let (status, body) =
        cluster.post(&format!("/v1/admin/dead-letters/{id}/retry?subscriber=search"), Some(&admin), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "still_failing");
    let (status, _) = cluster
        .post(&format!("/v1/admin/dead-letters/{}/retry?subscriber=search", id + 1_000), Some(&admin), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) =
        cluster.post(&format!("/v1/admin/dead-letters/{id}/retry?subscriber=ledger"), Some(&admin), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["dead-letters", "list", "--url", &cluster.url, "--token", &admin])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(listed.lines().any(|l| l.contains("search") && l.contains("lot_status_changed")), "{listed}");
    let (_, body) = cluster.get("/v1/admin/dead-letters", Some(&admin)).await;
    let attempts =
        body["dead_letters"].as_array().unwrap().iter().find(|l| l["subscriber"] == "search").unwrap()["attempts"]
            .clone();
    assert_eq!(attempts, 2);
    cluster.shutdown().await;
}

/// A Qdrant store named but not reachable (or malformed) is a start-up error naming it, not a
/// gateway that serves without its vectors.
#[tokio::test(flavor = "multi_thread")]
async fn a_search_store_that_cannot_be_reached_stops_the_gateway_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("127.0.0.1:{}", common::free_port());
    for (target, reason) in
        [("qdrant.example:6334", "not an http"), (&format!("http://{nobody}/gavel") as &str, "qdrant")]
    {
        let mut config = common::config(vec![nobody.clone()], dir.path().join("catalog"));
        config.search =
            Some(SearchConfig { model: model(), dir: dir.path().join("search"), store: Some(target.to_owned()) });
        config.admin_password = None;
        let error = match gateway::Gateway::start(config).await {
            Ok(_) => panic!("{target}: the gateway started"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("search store") && error.contains(reason), "{target}: {error}");
    }
}
