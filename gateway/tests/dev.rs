//! `gavel dev` as a newcomer runs it: start it, wait for the URL, sign in with a printed
//! login, bid over HTTP, stop it with SIGINT; start it again and find the bid.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::free_port;
use serde_json::{Value, json};

struct Dev {
    child: Child,
    url: String,
    /// username -> password, as printed.
    logins: Vec<(String, String)>,
}

impl Drop for Dev {
    /// A failed test does not leave `gavel dev` running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `gavel dev` and reads its banner until the URL line (at most 120 s).
#[allow(clippy::zombie_processes, reason = "Dev owns the child: stop() waits for it, Drop reaps it on failure")]
fn start(dir: &Path, http_port: u16, grpc_base: u16) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .arg("dev")
        .arg("--data-dir")
        .arg(dir)
        .args(["--grpc-port-base", &grpc_base.to_string()])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env_remove("GAVEL_ADMIN_PASSWORD")
        .env_remove("GAVEL_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gavel dev");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut logins = Vec::new();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("gavel dev printed no URL in 120 s");
        if let Some(rest) = line.strip_prefix("Gavel is running at ") {
            let url = rest.split_whitespace().next().unwrap().to_owned();
            return Dev { child, url, logins };
        }
        let parts: Vec<&str> = line.trim().split(" / ").collect();
        if parts.len() == 3 {
            logins.push((parts[0].to_owned(), parts[1].to_owned()));
        }
    }
}

fn stop(mut dev: Dev) {
    // (Dev's Drop then finds the child already reaped.)
    let pid = dev.child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    for _ in 0..300 {
        if let Some(status) = dev.child.try_wait().unwrap() {
            assert!(status.success(), "gavel dev exited with {status} after SIGINT");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = dev.child.kill();
    panic!("gavel dev did not stop within 30 s of SIGINT");
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gavel_dev_runs_takes_a_bid_stops_on_sigint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev-data");
    let (http_port, grpc_base) = (free_port(), free_port_run());
    let http = reqwest::Client::new();

    let dev = start(&data, http_port, grpc_base);
    let names: Vec<&str> = dev.logins.iter().map(|(u, _)| u.as_str()).collect();
    assert!(names.contains(&"admin") && names.contains(&"alice"), "printed logins: {names:?}");
    let password = dev.logins.iter().find(|(u, _)| u == "alice").unwrap().1.clone();
    let (status, session) =
        post(&http, format!("{}/v1/sessions", dev.url), None, json!({"username": "alice", "password": password})).await;
    assert_eq!(status, 200, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();

    let sale: Value =
        http.get(format!("{}/v1/auctions/demo-evening-sale", dev.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(sale["status"], "Live", "{sale}");
    let lot: Value = http.get(format!("{}/v1/lots/demo-lot-2", dev.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(lot["status"], "InAuction", "{lot}");
    let amount = lot["start_price"].as_i64().unwrap();
    let (status, bid) = post(
        &http,
        format!("{}/v1/lots/demo-lot-2/bids", dev.url),
        Some(&token),
        json!({"bid_id": "dev-1", "max_amount": amount}),
    )
    .await;
    assert_eq!(status, 200, "{bid}");
    assert_eq!(bid["outcome"], "leading");
    let url = dev.url.clone();
    stop(dev);
    assert!(http.get(format!("{url}/healthz")).send().await.is_err(), "still serving after SIGINT");

    // Again, on the same data: the same logins, the bid is there, the token still works.
    let dev = start(&data, http_port, grpc_base);
    assert_eq!(dev.logins.iter().find(|(u, _)| u == "alice").unwrap().1, password);
    let lot: Value = http.get(format!("{}/v1/lots/demo-lot-2", dev.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(lot["bid_count"], 1, "{lot}");
    assert_eq!(lot["leading_bidder"], "u-alice");
    let (status, again) = post(
        &http,
        format!("{}/v1/lots/demo-lot-2/bids", dev.url),
        Some(&token),
        json!({"bid_id": "dev-1", "max_amount": amount}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again, bid, "the retried bid gets its first answer");
    stop(dev);
}

/// A base port with the two after it free too.
fn free_port_run() -> u16 {
    loop {
        let base = free_port();
        if base < u16::MAX - 2 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}
