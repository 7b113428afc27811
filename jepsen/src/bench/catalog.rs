//! `gavel-bench catalog`: the catalog's projection throughput and page latency on the
//! embedded store, in this process (no cluster: the feed is played through the real ledger
//! by `catalog::sim`, exactly as replicas would publish it).
//!
//! Projects the feed into a fresh RocksDB store in the subscriber's batch size, then times
//! pages of 20 filter/sort combinations, first pages and pages deep behind a cursor, one at a
//! time on one thread (run under `taskset -c 0` for "one core").

use std::time::Instant;

use catalog::{Catalog, Embedded, Query, Sort, sim};
use hdrhistogram::Histogram;
use ledger::pb::LotStatus;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CatalogBenchError {
    #[error("catalog: {0}")]
    Catalog(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn err(e: impl std::fmt::Display) -> CatalogBenchError {
    CatalogBenchError::Catalog(e.to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComboResult {
    pub name: String,
    pub pages: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogResult {
    pub lots: usize,
    pub feed_items: usize,
    pub events: usize,
    pub projection_events_per_s: f64,
    pub projection_seconds: f64,
    /// The live sale after the load: bid events on open lots.
    pub sale_events: usize,
    pub sale_events_per_s: f64,
    pub combos: Vec<ComboResult>,
    pub pages: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The slowest combination's p99.
    pub worst_combo_p99_us: u64,
}

/// "Now" for the ending-soon filters: ten days into the simulated sale.
const NOW_MS: i64 = 1_800_000_000_000 + 10 * 86_400_000;

fn combos() -> Vec<(&'static str, Query)> {
    let base = Query { limit: 50, ..Query::default() };
    let with = |f: &dyn Fn(&mut Query)| {
        let mut q = base.clone();
        f(&mut q);
        q
    };
    let soon = Some((NOW_MS, NOW_MS + 3 * 86_400_000));
    let open = Some(LotStatus::InAuction);
    vec![
        ("all by ends_at", with(&|_| {})),
        ("all by price", with(&|q| q.sort = Sort::Price)),
        ("all by newest", with(&|q| q.sort = Sort::Newest)),
        ("status by ends_at", with(&|q| q.status = open)),
        ("status by price", with(&|q| (q.status, q.sort) = (open, Sort::Price))),
        ("status by newest", with(&|q| (q.status, q.sort) = (open, Sort::Newest))),
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
        ("ending soon by ends_at", with(&|q| q.ending = soon)),
        ("ending soon by price", with(&|q| (q.ending, q.sort) = (soon, Sort::Price))),
        ("status+category by ends_at", with(&|q| (q.status, q.category) = (open, Some("prints".into())))),
        (
            "artist+status by price",
            with(&|q| (q.artist, q.status, q.sort) = (Some(sim::ARTISTS[5].into()), open, Sort::Price)),
        ),
        (
            "category+price by newest",
            with(&|q| {
                q.category = Some("textiles".into());
                (q.min_price, q.max_price, q.sort) = (Some(10_000), Some(150_000), Sort::Newest);
            }),
        ),
        ("sold by newest", with(&|q| (q.status, q.sort) = (Some(LotStatus::SoldPendingPayment), Sort::Newest))),
    ]
}

fn histogram() -> Result<Histogram<u64>, CatalogBenchError> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(err)
}

/// Plays `lots` lots and `bids` bid attempts and projects them (the load), then a live sale
/// of `sale_bids` bids (projected too), then times `pages` pages per combination. Prints a
/// line per phase and per combination.
pub fn run(lots: usize, bids: usize, sale_bids: usize, pages: u64) -> Result<CatalogResult, CatalogBenchError> {
    println!("[catalog] playing a day through the ledger: {lots} lots, {bids} bid attempts");
    let day = sim::play(42, lots, bids);
    let events: usize = day.feed.iter().map(|i| i.events.len()).sum();
    println!("[catalog] feed: {} items, {events} events", day.feed.len());

    let dir = tempfile::tempdir()?;
    let catalog = Catalog::new(Embedded::open(dir.path()).map_err(err)?).map_err(err)?;
    let started = Instant::now();
    for chunk in day.feed.chunks(node::subscribe::BATCH_MAX) {
        catalog.apply(chunk).map_err(err)?;
    }
    let projection_seconds = started.elapsed().as_secs_f64();
    let projection_events_per_s = events as f64 / projection_seconds;
    println!(
        "[catalog] projection: {projection_events_per_s:.0} events/s ({:.0} items/s), {projection_seconds:.2} s, batches of {}",
        day.feed.len() as f64 / projection_seconds,
        node::subscribe::BATCH_MAX
    );

    // A live sale on top: bids on the open lots, most on a few hot ones.
    let mut day = day;
    let first = sim::live_sale(&mut day, 7, sale_bids);
    let sale = &day.feed[first..];
    let sale_events: usize = sale.iter().map(|i| i.events.len()).sum();
    let started = Instant::now();
    for chunk in sale.chunks(node::subscribe::BATCH_MAX) {
        catalog.apply(chunk).map_err(err)?;
    }
    let sale_seconds = started.elapsed().as_secs_f64();
    let sale_events_per_s = sale_events as f64 / sale_seconds;
    println!(
        "[catalog] live sale: {sale_events_per_s:.0} events/s ({:.0} items/s), {sale_seconds:.2} s for {sale_events} events",
        sale.len() as f64 / sale_seconds
    );

    // Queries are timed on a settled store: what a rebuilt catalog (which compacts at the
    // end) or one past its load serves. The compaction's own time is reported.
    let settle = Instant::now();
    catalog.store().compact();
    println!("[catalog] compaction after the load: {:.2} s", settle.elapsed().as_secs_f64());
    let mut all = histogram()?;
    let mut results = Vec::new();
    println!("{:<28} {:>7} {:>9} {:>9} {:>9}", "query", "pages", "p50 µs", "p99 µs", "max µs");
    for (name, query) in combos() {
        let mut h = histogram()?;
        let mut q = query.clone();
        for n in 1..=pages {
            let t = Instant::now();
            let page = catalog.query(&q).map_err(err)?;
            let us = (t.elapsed().as_micros() as u64).max(1);
            h.record(us).map_err(err)?;
            all.record(us).map_err(err)?;
            // Up to 20 pages deep, then from the top again: first and deep pages both count.
            q.cursor = page.next_cursor.filter(|_| n % 20 != 0);
        }
        println!(
            "{:<28} {:>7} {:>9} {:>9} {:>9}",
            name,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
        results.push(ComboResult {
            name: name.into(),
            pages: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        });
    }
    let worst_combo_p99_us = results.iter().map(|c| c.p99_us).max().unwrap_or(0);
    Ok(CatalogResult {
        lots: day.lot_ids.len(),
        feed_items: day.feed.len(),
        events,
        projection_events_per_s,
        projection_seconds,
        sale_events,
        sale_events_per_s,
        combos: results,
        pages: all.len(),
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        worst_combo_p99_us,
    })
}
