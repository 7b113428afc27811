//! `cargo bench -p gavel-ledger`: bid applications per second through `Ledger::apply`.
//!
//! - `hot_lot`: one lot, 8 bidders answering each other with proxy maxima (every bid accepted,
//!   about half of them defended by a proxy bid).
//! - `10k_lots`: 10,000 open lots, bids spread over them by a fixed pseudo-random sequence.
//!
//! `snapshot/copy` and `snapshot/encode` time what a replica's snapshot costs after the
//! `10k_lots` bids: the copy taken while applying waits, and the canonical encoding after it.
//!
//! Commands are built up front (by a dry run on a copy of the ledger), so only applying is
//! timed. `apply` times what a replica does per command: `Ledger::apply_compact`, then the
//! events encoded to bytes (the feed item's) and the answer dropped (a follower has no caller
//! waiting). `apply_pb` times `Ledger::apply`, which builds every answer and event as an owned
//! protobuf message.

#![allow(clippy::expect_used, reason = "a benchmark whose setup is broken should stop loudly")]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ledger::Ledger;
use ledger::pb::{self, command::Body};

const T0: i64 = 1_800_000_000_000;
const BIDDERS: usize = 8;

fn cmd(at_ms: i64, actor: &str, body: Body) -> pb::Command {
    pb::Command { at_ms, actor: actor.to_owned(), body: Some(body), log_index: 0 }
}

/// A ledger with bidders and `lots` open lots (start $100, reserve $500, 60 s soft close).
fn world(lots: usize) -> Ledger {
    let mut l = Ledger::new();
    let mut setup = vec![cmd(T0, "", Body::CreateUser(user("seller")))];
    setup.extend((0..BIDDERS).map(|b| cmd(T0, "", Body::CreateUser(user(&format!("bidder{b}"))))));
    for i in 0..lots {
        let lot_id = format!("lot-{i}");
        setup.push(cmd(
            T0,
            "",
            Body::CreateLot(pb::CreateLot {
                lot_id: lot_id.clone(),
                title: "Untitled".into(),
                currency: "USD".into(),
                start_price: 10_000,
                reserve_price: Some(50_000),
                starts_at_ms: T0,
                ends_at_ms: T0 + 30 * 86_400_000,
                soft_close_secs: 60,
                seller_id: "seller".into(),
                ..pb::CreateLot::default()
            }),
        ));
        for s in [
            pb::LotStatus::UnderReview,
            pb::LotStatus::Authenticated,
            pb::LotStatus::ReadyForAuction,
            pb::LotStatus::InAuction,
        ] {
            setup.push(cmd(T0, "", Body::SetLotStatus(pb::SetLotStatus { lot_id: lot_id.clone(), status: s as i32 })));
        }
    }
    for c in &setup {
        assert!(l.apply(c).rejection().is_none());
    }
    l
}

fn user(id: &str) -> pb::CreateUser {
    pb::CreateUser { user_id: id.into(), username: id.into(), role: pb::Role::User as i32, password_hash: Vec::new() }
}

/// xorshift: a fixed, dependency-free sequence so every run times the same commands.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `n` accepted bids over `lots` lots, produced by a dry run on a copy of `base`.
fn bids(base: &Ledger, lots: usize, n: usize) -> Vec<pb::Command> {
    let mut dry = base.clone();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        i += 1;
        let lot_id = format!("lot-{}", next(&mut rng) as usize % lots);
        let lot = dry.lot(&lot_id).expect("lot exists");
        let leader = lot.book.leader.as_ref().map(|l| l.bidder.to_string());
        let mut bidder = format!("bidder{}", next(&mut rng) as usize % BIDDERS);
        if Some(&bidder) == leader.as_ref() {
            bidder = format!("bidder{}", (next(&mut rng) as usize) % BIDDERS);
        }
        let min = lot.book.minimum_bid(&lot.ladder);
        let step = lot.ladder.step_at(min);
        // Up to three steps above the minimum, rounded down to the grid (or the minimum itself).
        let raw = min + (next(&mut rng) % 4) as i64 * step;
        let max = if lot.ladder.is_on_grid(raw) { raw } else { min };
        let max = if Some(&bidder) == leader.as_ref() {
            lot.book.leader.as_ref().map_or(max, |l| l.max + step * 10)
        } else {
            max
        };
        let c = cmd(
            T0 + i as i64,
            &bidder,
            Body::PlaceBid(pb::PlaceBid { lot_id, bid_id: format!("b{i}"), max_amount: max }),
        );
        if dry.apply(&c).rejection().is_none() {
            out.push(c);
        }
    }
    out
}

fn bench_apply(c: &mut Criterion) {
    for (name, lots, n) in [("hot_lot", 1usize, 20_000usize), ("10k_lots", 10_000, 100_000)] {
        let base = world(lots);
        let cmds = bids(&base, lots, n);
        let mut group = c.benchmark_group("apply");
        group.throughput(Throughput::Elements(cmds.len() as u64));
        group.sample_size(20);
        group.bench_function(name, |b| {
            let (mut events, mut bytes) = (Vec::new(), Vec::new());
            b.iter_batched(
                || base.clone(),
                |mut ledger| {
                    for cmd in &cmds {
                        black_box(ledger.apply_compact(cmd, cmd.at_ms, cmd.log_index, &mut events));
                        for event in events.drain(..) {
                            event.encode(&mut bytes);
                        }
                        black_box(&bytes);
                        bytes.clear();
                    }
                    ledger
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
        let mut group = c.benchmark_group("apply_pb");
        group.throughput(Throughput::Elements(cmds.len() as u64));
        group.sample_size(20);
        group.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut ledger| {
                    for cmd in &cmds {
                        black_box(ledger.apply(cmd));
                    }
                    ledger
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

fn bench_snapshot(c: &mut Criterion) {
    let mut ledger = world(10_000);
    for cmd in bids(&ledger, 10_000, 100_000) {
        ledger.apply(&cmd);
    }
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(20);
    group.bench_function("copy", |b| b.iter(|| black_box(ledger.clone())));
    group.bench_function("encode", |b| b.iter(|| black_box(ledger.encode_snapshot())));
    group.finish();
}

criterion_group!(benches, bench_apply, bench_snapshot);
criterion_main!(benches);
