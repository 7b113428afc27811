//! A real 3-node cluster (Raft over loopback gRPC, RocksDB in a temporary directory) and a
//! real gateway on a loopback port, driven over HTTP with reqwest.
#![allow(dead_code, reason = "each test file uses part of the harness")]

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway::batcher::BatchLimits;
use gateway::hub::HubLimits;
use gateway::protect::Rate;
use gateway::routes::ws::WsLimits;
use gateway::{Gateway, GatewayConfig};
use node::{Client, Node, NodeConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

/// A free loopback port below the kernel's ephemeral range (32768 and up), so no outgoing
/// connection of a test running alongside can take it between this pick and the bind. The
/// two ports after it are free too and never handed out by another call (`gavel dev` takes
/// three in a row).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + std::process::id() * 97;
        let port = 10_000 + (n % 7_000) as u16 * 3;
        if (port..port + 3).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return port;
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn rfc3339(ms: i64) -> String {
    ledger::time::format_time(ms)
}

pub struct TestCluster {
    _dir: TempDir,
    pub addrs: Vec<String>,
    pub nodes: Vec<Option<Node>>,
    pub gateway: Option<Gateway>,
    pub gateway_config: GatewayConfig,
    pub url: String,
    pub http: reqwest::Client,
}

pub fn config(addrs: Vec<String>, catalog_dir: std::path::PathBuf) -> GatewayConfig {
    GatewayConfig {
        nodes: addrs,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        jwt_secret: SECRET.to_vec(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        token_ttl: Duration::from_secs(3600),
        body_bytes_max: 64 * 1024,
        request_timeout: Duration::from_secs(20),
        concurrency_max: 1024,
        rate_ip: Rate { per_sec: 0, burst: 0 },
        rate_user: Rate { per_sec: 0, burst: 0 },
        cors_origins: Vec::new(),
        batch: BatchLimits::default(),
        hashes_concurrent_max: 2,
        hub: HubLimits::default(),
        ws: WsLimits::default(),
        tcp_send_buffer_bytes: None,
        catalog_wait: Duration::from_secs(5),
        // Off unless a test turns it on: embedding every test's lots would cost minutes.
        search: None,
        images: catalog_dir.with_file_name("images").to_string_lossy().into_owned(),
        image_sweep: None,
        image_grace: Duration::from_secs(3600),
        catalog_dir,
        catalog_store: None,
        catalog_read_only: false,
    }
}

impl TestCluster {
    /// Three nodes and a gateway configured by `tune`.
    pub async fn start_with(tune: impl FnOnce(&mut GatewayConfig)) -> TestCluster {
        TestCluster::start_with_retention(node::FeedRetention::default(), tune).await
    }

    /// Three nodes that keep only what `retention` says of the feed, and a gateway.
    pub async fn start_with_retention(
        retention: node::FeedRetention,
        tune: impl FnOnce(&mut GatewayConfig),
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let members: Vec<(u64, String)> = addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = NodeConfig {
                id,
                listen: addr.parse().unwrap(),
                advertise: addr.clone(),
                data_dir: dir.path().join(format!("node-{id}")),
                initial_members: members.clone(),
                heartbeat_ms: 50,
                election_timeout_min_ms: 150,
                election_timeout_max_ms: 300,
                snapshot_logs: 10_000,
                logs_kept_after_snapshot: 1_000,
                leader_snapshot_defer: node::limits::LEADER_SNAPSHOT_DEFER_INTERVALS,
                feed_retention: retention,
                clock_offset_ms: 0,
                unsafe_modes: node::UnsafeModes::default(),
            };
            nodes.push(Some(Node::start(config).await.unwrap()));
        }
        let mut config = config(addrs.clone(), dir.path().join("catalog"));
        tune(&mut config);
        let gateway = Gateway::start(config.clone()).await.unwrap();
        let url = format!("http://{}", gateway.addr());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        TestCluster { _dir: dir, addrs, nodes, gateway: Some(gateway), gateway_config: config, url, http }
    }

    pub async fn start() -> TestCluster {
        TestCluster::start_with(|_| {}).await
    }

    /// A request with an optional bearer token and JSON body; the status and JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text:?}"));
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// A raw body with a content type: for malformed input.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(format!("{}{path}", self.url)).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text:?}")))
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self.post("/v1/sessions", None, json!({"username": username, "password": password})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Signs a user up and in; returns (user_id, token).
    pub async fn user(&self, username: &str) -> (String, String) {
        let password = format!("{username}-password");
        let (status, body) = self.post("/v1/users", None, json!({"username": username, "password": password})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let user_id = body["user_id"].as_str().unwrap().to_owned();
        (user_id, self.login(username, &password).await)
    }

    pub async fn admin(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// A curator: signed up, promoted by the admin, signed in again for a curator token.
    pub async fn curator(&self, username: &str) -> (String, String) {
        let (user_id, _) = self.user(username).await;
        let admin = self.admin().await;
        let (status, body) =
            self.post(&format!("/v1/users/{user_id}/role"), Some(&admin), json!({"role": "curator"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (user_id.clone(), self.login(username, &format!("{username}-password")).await)
    }

    /// A lot listed by `curator` and taken to `ReadyForAuction`; returns its id.
    pub async fn ready_lot(&self, curator: &str, reserve: Option<i64>, soft_close_secs: u32) -> String {
        self.ready_lot_ending(curator, reserve, soft_close_secs, 600_000).await
    }

    /// Like `ready_lot`, ending `ends_in_ms` from now.
    pub async fn ready_lot_ending(
        &self,
        curator: &str,
        reserve: Option<i64>,
        soft_close_secs: u32,
        ends_in_ms: i64,
    ) -> String {
        let now = now_ms();
        let mut lot = json!({
            "title": "Harbour at Dusk", "description": "Oil on canvas", "artist": "Mirela Voss",
            "category": "painting", "currency": "USD", "start_price": 50_000,
            "starts_at": rfc3339(now - 1_000), "ends_at": rfc3339(now + ends_in_ms),
            "soft_close_secs": soft_close_secs,
        });
        if let Some(r) = reserve {
            lot["reserve_price"] = json!(r);
        }
        let (status, body) = self.post("/v1/lots", Some(curator), lot).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "Draft");
        let lot_id = body["lot_id"].as_str().unwrap().to_owned();
        for to in ["UnderReview", "Authenticated", "ReadyForAuction"] {
            let (status, body) =
                self.post(&format!("/v1/lots/{lot_id}/status"), Some(curator), json!({"status": to})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["status"], to);
        }
        lot_id
    }

    /// A live sale holding the given ready lots; returns the auction id.
    pub async fn live_sale(&self, admin: &str, lot_ids: &[&str]) -> String {
        let now = now_ms();
        let (status, auction) = self
            .post(
                "/v1/auctions",
                Some(admin),
                json!({"title": "Evening Sale", "currency": "USD", "starts_at": rfc3339(now - 1_000),
                       "ends_at": rfc3339(now + 600_000), "lot_interval_secs": 60}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{auction}");
        assert_eq!(auction["status"], "Scheduled");
        let auction_id = auction["auction_id"].as_str().unwrap().to_owned();
        for lot_id in lot_ids {
            let (status, body) =
                self.post(&format!("/v1/auctions/{auction_id}/lots"), Some(admin), json!({"lot_id": lot_id})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let (status, body) =
            self.post(&format!("/v1/auctions/{auction_id}/status"), Some(admin), json!({"status": "Live"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "Live");
        auction_id
    }

    /// Stops the gateway and starts a fresh one (empty memory) on the same cluster.
    pub async fn restart_gateway(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await.unwrap();
        }
        let gateway = Gateway::start(self.gateway_config.clone()).await.unwrap();
        self.url = format!("http://{}", gateway.addr());
        self.gateway = Some(gateway);
    }

    /// Stops the gateway and starts one with empty stores (a new catalog directory) on the
    /// same cluster: a gateway that has never seen the feed.
    pub async fn replace_gateway_with_a_fresh_one(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await.unwrap();
        }
        let fresh = self.gateway_config.catalog_dir.with_file_name("catalog-fresh");
        self.gateway_config.catalog_dir = fresh;
        let gateway = Gateway::start(self.gateway_config.clone()).await.unwrap();
        self.url = format!("http://{}", gateway.addr());
        self.gateway = Some(gateway);
    }

    /// The WebSocket URL, with a token when given.
    pub fn ws_url(&self, token: Option<&str>) -> String {
        let base = self.url.replacen("http://", "ws://", 1);
        match token {
            Some(t) => format!("{base}/v1/ws?token={t}"),
            None => format!("{base}/v1/ws"),
        }
    }

    /// A metric's value from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The node currently leading, by index into `nodes`.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, addr) in self.addrs.iter().enumerate() {
                if self.nodes[i].is_some()
                    && let Ok(m) = Client::metrics(addr).await
                    && m.state == "Leader"
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops a node (its server and Raft), as a crash looks to the others.
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await.unwrap();
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await.unwrap();
        }
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = node.shutdown().await;
        }
    }
}

/// Runs `command` again and again, SIGKILLing each run (no chance to finish a batch) after a
/// delay, until two kills have landed mid-run (`checkpoint()` moved but is short of
/// `target`) or the target is reached, at most 12 runs. The delay grows while runs make no
/// progress (a slow machine, a model still loading); a run that finished before its kill (an
/// idle machine) is thrown away with `reset` and the delay halves. Returns the kills that
/// landed mid-run and the checkpoint after each run.
pub async fn kill_part_way(
    command: impl Fn() -> std::process::Command,
    checkpoint: impl Fn() -> u64,
    reset: impl Fn(),
    target: u64,
    mut delay_ms: u64,
) -> (u32, Vec<u64>) {
    let (mut killed_mid_run, mut checkpoints, mut prev) = (0, Vec::new(), 0);
    for _ in 0..12 {
        if killed_mid_run >= 2 || prev >= target {
            break;
        }
        let mut child =
            command().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        let at = checkpoint();
        if at >= target && killed_mid_run == 0 {
            // The whole run fit before the kill (an idle machine): start over, kill sooner.
            reset();
            delay_ms = (delay_ms / 2).max(10);
            prev = 0;
            checkpoints.push(at);
            continue;
        }
        if at > prev && at < target {
            killed_mid_run += 1;
        } else if at == prev {
            delay_ms = delay_ms * 3 / 2;
        }
        prev = at;
        checkpoints.push(at);
    }
    (killed_mid_run, checkpoints)
}
