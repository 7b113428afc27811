//! Node write benchmark: committed bids per second and latency on a real 3-node cluster.
//!
//! ```sh
//! cargo build --release -p gavel-node --bins --examples
//! target/release/examples/bench --clients 1 --seconds 10
//! target/release/examples/bench --clients 256 --seconds 10
//! ```
//! Starts three `gavel-node` processes on loopback (fsync on, as shipped), creates bidders
//! and `--lots` open lots, then runs `--clients` closed-loop clients, each placing one bid
//! per request through the node client library. Prints committed bids/s and the latency
//! distribution. Every process it starts is killed when it finishes.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark whose setup fails should stop loudly")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use ledger::pb::{self as lp, command::Body, outcome::Result as Res};
use node::Client;

struct Args {
    clients: usize,
    seconds: u64,
    lots: usize,
}

fn args() -> Args {
    let mut a = Args { clients: 256, seconds: 10, lots: 1000 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} needs a number", pair[0]));
        match pair[0].as_str() {
            "--clients" => a.clients = value as usize,
            "--seconds" => a.seconds = value,
            "--lots" => a.lots = value as usize,
            other => panic!("unknown flag {other} (--clients N --seconds S --lots L)"),
        }
    }
    a
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cmd(actor: &str, body: Body) -> lp::Command {
    lp::Command { at_ms: 0, actor: actor.into(), body: Some(body), log_index: 0 }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::main]
async fn main() {
    let args = args();
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|p| p.parent()).unwrap().join("gavel-node");
    assert!(bin.exists(), "{} not found: cargo build --release -p gavel-node --bins --examples", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()))
        .collect();
    let members = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut nodes = Nodes(Vec::new());
    for (i, addr) in addrs.iter().enumerate() {
        let child = Command::new(&bin)
            .args(["--id", &(i + 1).to_string(), "--listen", addr, "--members", &members])
            .arg("--data-dir")
            .arg(dir.path().join(format!("n{i}")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        nodes.0.push(child);
    }
    let client = Arc::new(Client::new(addrs.clone()).with_deadline(Duration::from_secs(30)));

    // Setup: a curator, a seller, one bidder per client, and the lots.
    let mut setup = vec![cmd(
        "",
        Body::CreateUser(lp::CreateUser {
            user_id: "cur".into(),
            username: "cur".into(),
            role: 2,
            password_hash: vec![],
        }),
    )];
    setup.push(cmd(
        "",
        Body::CreateUser(lp::CreateUser {
            user_id: "sam".into(),
            username: "sam".into(),
            role: 1,
            password_hash: vec![],
        }),
    ));
    for c in 0..args.clients {
        let id = format!("bidder{c}");
        setup.push(cmd(
            "",
            Body::CreateUser(lp::CreateUser { user_id: id.clone(), username: id, role: 1, password_hash: vec![] }),
        ));
    }
    for l in 0..args.lots {
        let lot_id = format!("lot-{l}");
        setup.push(cmd(
            "cur",
            Body::CreateLot(lp::CreateLot {
                lot_id: lot_id.clone(),
                title: "Bench lot".into(),
                currency: "USD".into(),
                start_price: 10_000,
                starts_at_ms: now_ms() - 1_000,
                ends_at_ms: now_ms() + 3_600_000,
                seller_id: "sam".into(),
                ..Default::default()
            }),
        ));
        for s in [
            lp::LotStatus::UnderReview,
            lp::LotStatus::Authenticated,
            lp::LotStatus::ReadyForAuction,
            lp::LotStatus::InAuction,
        ] {
            setup.push(cmd("cur", Body::SetLotStatus(lp::SetLotStatus { lot_id: lot_id.clone(), status: s as i32 })));
        }
    }
    for chunk in setup.chunks(1000) {
        client.propose(chunk.to_vec()).await.expect("setup");
    }

    // Closed loop: every client keeps one bid in flight. Maxima rise on a global counter on
    // the $100 grid above $10,000, so most bids are accepted.
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, counter) = (client.clone(), counter.clone());
        let lots = args.lots;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut accepted, mut rejected, mut failed) = (0u64, 0u64, 0u64);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let k = counter.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                let lot_id = format!("lot-{}", (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % lots);
                let max = 1_000_000 + k as i64 * 10_000;
                let bid = cmd(
                    &format!("bidder{c}"),
                    Body::PlaceBid(lp::PlaceBid { lot_id, bid_id: format!("c{c}-{seq}"), max_amount: max }),
                );
                let t = Instant::now();
                match client.propose(vec![bid]).await {
                    Ok(r) => {
                        hist.record(t.elapsed().as_micros() as u64).unwrap();
                        match r[0].outcome.as_ref().and_then(|o| o.result.as_ref()) {
                            Some(Res::Rejected(_)) => rejected += 1,
                            _ => accepted += 1,
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (hist, accepted, rejected, failed)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut accepted, mut rejected, mut failed) = (0, 0, 0);
    for t in tasks {
        let (h, a, r, f) = t.await.unwrap();
        hist.add(h).unwrap();
        accepted += a;
        rejected += r;
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    let committed = accepted + rejected;
    println!("clients={} lots={} seconds={:.1}", args.clients, args.lots, secs);
    println!(
        "committed bids/s: {:.0} (accepted {accepted}, rejected by the rules {rejected}, failed {failed})",
        committed as f64 / secs
    );
    println!(
        "latency ms: p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
}
