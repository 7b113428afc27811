//! The catalog benchmark: projection throughput and page latency on the embedded store.
//!
//! ```sh
//! taskset -c 0 cargo bench -p gavel-catalog --bench catalog            # 100,000 lots
//! GAVEL_BENCH_LOTS=10000 cargo bench -p gavel-catalog --bench catalog  # a quick look
//! ```
//! Plays a day through the real ledger (lots, sales, bids, closes), projects its feed into a
//! fresh RocksDB store in the subscriber's batch size, then times pages of 20 filter/sort
//! combinations (first pages and pages deep behind a cursor), one at a time on one thread.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::Instant;

use catalog::{Catalog, Embedded, Query, Sort};
use hdrhistogram::Histogram;
use ledger::pb::LotStatus;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn combos(now_ms: i64) -> Vec<(&'static str, Query)> {
    let base = Query { limit: 50, ..Query::default() };
    let with = |f: &dyn Fn(&mut Query)| {
        let mut q = base.clone();
        f(&mut q);
        q
    };
    let day = 86_400_000;
    vec![
        ("all by ends_at", with(&|_| {})),
        ("all by price", with(&|q| q.sort = Sort::Price)),
        ("all by newest", with(&|q| q.sort = Sort::Newest)),
        ("status by ends_at", with(&|q| q.status = Some(LotStatus::InAuction))),
        ("status by price", with(&|q| (q.status, q.sort) = (Some(LotStatus::InAuction), Sort::Price))),
        ("status by newest", with(&|q| (q.status, q.sort) = (Some(LotStatus::InAuction), Sort::Newest))),
        ("category by ends_at", with(&|q| q.category = Some("painting".into()))),
        ("category by price", with(&|q| (q.category, q.sort) = (Some("sculpture".into()), Sort::Price))),
        ("artist by newest", with(&|q| (q.artist, q.sort) = (Some(sim::ARTISTS[2].into()), Sort::Newest))),
        ("artist by price", with(&|q| (q.artist, q.sort) = (Some(sim::ARTISTS[3].into()), Sort::Price))),
        ("auction by ends_at", with(&|q| q.auction = Some("sale-a".into()))),
        ("auction by price", with(&|q| (q.auction, q.sort) = (Some("sale-a".into()), Sort::Price))),
        (
            "price range by price",
            with(&|q| (q.min_price, q.max_price, q.sort) = (Some(50_000), Some(80_000), Sort::Price)),
        ),
        ("price range by ends_at", with(&|q| (q.min_price, q.max_price) = (Some(50_000), Some(80_000)))),
        ("ending soon by ends_at", with(&|q| q.ending = Some((now_ms, now_ms + 3 * day)))),
        ("ending soon by price", with(&|q| (q.ending, q.sort) = (Some((now_ms, now_ms + 3 * day)), Sort::Price))),
        (
            "status+category by ends_at",
            with(&|q| (q.status, q.category) = (Some(LotStatus::InAuction), Some("prints".into()))),
        ),
        (
            "artist+status by price",
            with(&|q| {
                q.artist = Some(sim::ARTISTS[5].into());
                q.status = Some(LotStatus::InAuction);
                q.sort = Sort::Price;
            }),
        ),
        (
            "category+price by newest",
            with(&|q| {
                q.category = Some("textiles".into());
                (q.min_price, q.max_price, q.sort) = (Some(10_000), Some(150_000), Sort::Newest);
            }),
        ),
        ("status sold by newest", with(&|q| (q.status, q.sort) = (Some(LotStatus::SoldPendingPayment), Sort::Newest))),
    ]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lots = env_usize("GAVEL_BENCH_LOTS", 100_000);
    let bids = env_usize("GAVEL_BENCH_BIDS", lots * 3);
    let pages = env_usize("GAVEL_BENCH_PAGES", 500);
    println!("[catalog] playing a day through the ledger: {lots} lots, {bids} bid attempts");
    let day = sim::play(42, lots, bids);
    let events: usize = day.feed.iter().map(|i| i.events.len()).sum();
    println!("[catalog] feed: {} items, {} events", day.feed.len(), events);

    let dir = tempfile::tempdir()?;
    let catalog = Catalog::new(Embedded::open(dir.path())?)?;
    let started = Instant::now();
    for chunk in day.feed.chunks(node::subscribe::BATCH_MAX) {
        catalog.apply(chunk)?;
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "[catalog] projection: {:.0} events/s ({:.0} items/s), {:.2} s for {} events in batches of {}",
        events as f64 / took,
        day.feed.len() as f64 / took,
        took,
        events,
        node::subscribe::BATCH_MAX
    );

    // "Now" for the ending-soon filters: ten days into the sale.
    let now_ms = 1_800_000_000_000 + 10 * 86_400_000;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    println!("{:<28} {:>8} {:>10} {:>10} {:>10}", "query", "pages", "p50 µs", "p99 µs", "max µs");
    for (name, query) in combos(now_ms) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut q = query.clone();
        for _ in 0..pages {
            let t = Instant::now();
            let page = catalog.query(&q)?;
            let us = t.elapsed().as_micros() as u64;
            h.record(us.max(1))?;
            all.record(us.max(1))?;
            // Walk up to 20 pages deep, then start over: first pages and deep ones both count.
            q.cursor = match page.next_cursor {
                Some(c) if h.len() % 20 != 0 => Some(c),
                _ => None,
            };
        }
        println!(
            "{:<28} {:>8} {:>10} {:>10} {:>10}",
            name,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
    println!(
        "[catalog] all pages: {} pages, p50 {} µs, p99 {} µs, p999 {} µs, max {} µs",
        all.len(),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max()
    );
    Ok(())
}
