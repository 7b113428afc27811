//! `gavel-bench`: throughput, latency and failover of Gavel, side by side with etcd.
//!
//! ```sh
//! cargo build --release -p gavel-node -p gavel-gateway -p gavel-jepsen
//! target/release/gavel-bench all                       # everything BENCHMARKS.md reports
//! target/release/gavel-bench run --system both --workload zipf --clients 256
//! target/release/gavel-bench run --system all --batch 256 --clients 1024   # gRPC, HTTP, etcd
//! target/release/gavel-bench sweep --system gavel --rates 1000,5000,10000
//! target/release/gavel-bench failover --system gavel --kills 20
//! target/release/gavel-bench fanout --sockets 10000 --bids 60 --rate 2   # WebSocket fan-out
//! taskset -c 0 target/release/gavel-bench catalog --lots 100000          # catalog read model
//! taskset -c 0 target/release/gavel-bench search --lots 100000           # search, real model
//! ```
//! Every cluster is started fresh on loopback (3 members, fsync on) and killed at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jepsen::bench::fanout::{self, FanoutSpec};
use jepsen::bench::suite::{self, Env, System};
use jepsen::bench::{Failover, Load, RunResult, Spec, Workload, plot};
use jepsen::bench::{catalog, search};
use serde_json::json;

/// mimalloc, as the gateway uses: the driver shares the machine's two CPUs with the system it
/// measures, and glibc's malloc was an eighth of its samples under HTTP load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "gavel-bench", version, about = "Throughput, latency and failover: Gavel and etcd")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// The gavel-node binary (default: next to this one).
    #[arg(long, global = true)]
    node_bin: Option<PathBuf>,
    /// The gavel binary, for the HTTP target (default: next to this one).
    #[arg(long, global = true)]
    gavel_bin: Option<PathBuf>,
    /// The etcd server binary (Debian's etcd-server).
    #[arg(long, global = true, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Extra gavel-node flags, space separated (default: none, the shipped defaults).
    #[arg(long, global = true, default_value = "", allow_hyphen_values = true)]
    node_args: String,
    /// Gavel only: gather up to this many bids from concurrent clients into one request, as a
    /// gateway in front of the cluster does (1: one bid per request).
    #[arg(long, global = true, default_value_t = 1)]
    batch: usize,
    /// Where results (JSON, SVG, summary.md) go.
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct WorkloadArgs {
    /// hot (a few lots), zipf (many lots, Zipf popularity), read-heavy (90% reads).
    #[arg(long, default_value = "zipf", value_parser = Workload::parse)]
    workload: Workload,
    /// Lots (default: 4 for hot, 10,000 otherwise).
    #[arg(long)]
    lots: Option<usize>,
    /// Distinct bidders.
    #[arg(long, default_value_t = 1000)]
    bidders: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl WorkloadArgs {
    fn spec(&self, load: Load) -> Spec {
        let lots = self.lots.unwrap_or(if self.workload == Workload::Hot { 4 } else { 10_000 }).max(1);
        Spec {
            workload: self.workload,
            lots,
            bidders: self.bidders.max(1),
            load,
            duration: Duration::from_secs(self.seconds),
            seed: self.seed,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// One measurement per system, closed loop (--clients) or open loop (--rate).
    Run {
        /// gavel (gRPC), http (through `gavel gateway`), etcd, both (gavel and etcd, with the
        /// ratio) or all three, back to back.
        #[arg(long, default_value = "both")]
        system: String,
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Closed loop: concurrent clients.
        #[arg(long, default_value_t = 256, conflicts_with = "rate")]
        clients: usize,
        /// Open loop: operations per second, latency from intended send time.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Open loop at each rate: latency against offered load.
    Sweep {
        #[arg(long, default_value = "both")]
        system: String,
        #[command(flatten)]
        workload: WorkloadArgs,
        #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000,20000")]
        rates: Vec<u64>,
    },
    /// Kill the leader repeatedly under load; time until writes succeed again.
    Failover {
        #[arg(long, default_value = "gavel")]
        system: String,
        #[command(flatten)]
        workload: WorkloadArgs,
        #[arg(long, default_value_t = 20)]
        kills: usize,
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// WebSocket fan-out: sockets on one hot lot of `gavel gateway` while bids arrive.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 60)]
        bids: usize,
        /// Bids per second (a hot lot in a live sale sees one every second or two).
        #[arg(long, default_value_t = 2)]
        rate: u64,
    },
    /// The catalog read model in-process: projection events/s and page latency of 20
    /// filter/sort combinations on the embedded store (run under `taskset -c 0`).
    Catalog {
        #[arg(long, default_value_t = 100_000)]
        lots: usize,
        /// Bid attempts (default: three per lot).
        #[arg(long)]
        bids: Option<usize>,
        /// Bids of the live sale that follows the load.
        #[arg(long, default_value_t = 200_000)]
        sale_bids: usize,
        /// Pages timed per combination.
        #[arg(long, default_value_t = 500)]
        pages: u64,
    },
    /// Search with the real model, in-process: indexing lots/s through the indexer, and query
    /// latency (embedding included) over `--lots` points (run under `taskset -c 0`).
    Search {
        #[arg(long, default_value_t = 100_000)]
        lots: usize,
        /// Lots embedded by the model (the rest are mixtures of their vectors).
        #[arg(long, default_value_t = 2_000)]
        embed: usize,
        #[arg(long, default_value_t = 1_000)]
        queries: u64,
        /// The model file (`scripts/setup` installs it).
        #[arg(long, env = "GAVEL_MODEL", default_value = "models/e5-small-q4.bin")]
        model: PathBuf,
        /// The encoder's kernel: `int8` (AVX-512 VNNI) or `f32` (default: the fastest this CPU
        /// has, as the gateway picks).
        #[arg(long)]
        kernel: Option<KernelArg>,
    },
    /// Redraw the plots of a results directory from its JSON files.
    Replot,
    /// Everything BENCHMARKS.md reports, with plots and summary.md.
    All {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 256)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        kills: usize,
    },
}

/// `gavel-bench search --kernel`.
#[derive(Clone, Copy, ValueEnum)]
enum KernelArg {
    F32,
    Int8,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Suite(#[from] suite::SuiteError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogBenchError),
    #[error(transparent)]
    Search(#[from] search::SearchBenchError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

fn systems(s: &str) -> Result<Vec<System>, BenchError> {
    match s {
        "gavel" => Ok(vec![System::Gavel]),
        "http" => Ok(vec![System::Http]),
        "etcd" => Ok(vec![System::Etcd]),
        "both" => Ok(vec![System::Gavel, System::Etcd]),
        "all" => Ok(vec![System::Gavel, System::Http, System::Etcd]),
        other => Err(BenchError::Usage(format!("unknown --system {other:?} (gavel, http, etcd, both, all)"))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let node_bin = cli
        .node_bin
        .clone()
        .or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("gavel-node"))));
    let Some(node_bin) = node_bin.filter(|p| p.exists()) else {
        eprintln!(
            "gavel-bench: gavel-node not found; build it (cargo build --release -p gavel-node) or pass --node-bin"
        );
        return ExitCode::from(2);
    };
    let gavel_bin = cli
        .gavel_bin
        .clone()
        .or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("gavel"))))
        .filter(|p| p.exists());
    let env = Env {
        gavel_bin,
        node_bin,
        etcd_bin: cli.etcd_bin.clone(),
        op_deadline: Duration::from_secs(10),
        node_args: cli.node_args.split_whitespace().map(str::to_owned).collect(),
        batch: cli.batch.clamp(1, 1024),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gavel-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(&env, cli.command, &cli.out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(BenchError::Usage(e)) => {
            eprintln!("gavel-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("gavel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(env: &Env, command: Cmd, out: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(out)?;
    match command {
        Cmd::Run { system, workload, clients, rate } => {
            let load = rate.map_or(Load::Closed { clients }, |rate| Load::Open { rate });
            let spec = workload.spec(load);
            let results = compare(env, &systems(&system)?, &spec, out, "run").await?;
            if let [g, h, _] = results.as_slice() {
                println!(
                    "ratio http/gavel (accepted bids/s): {:.2}x",
                    ratio(h.accepted_bids_per_s, g.accepted_bids_per_s)
                );
            }
            if let [g, .., e] = results.as_slice() {
                println!(
                    "ratio gavel/etcd (accepted bids/s): {:.1}x",
                    ratio(g.accepted_bids_per_s, e.accepted_bids_per_s)
                );
            }
        }
        Cmd::Sweep { system, workload, rates } => {
            let spec = workload.spec(Load::Open { rate: 0 });
            let mut sweeps = Vec::new();
            for s in systems(&system)? {
                let results = suite::sweep(env, s, &spec, &rates).await?;
                print_sweep(&results);
                sweeps.push((name(s).to_owned(), results));
            }
            write_json(&out.join("sweep.json"), &json!(sweeps))?;
            plot::latency_vs_load(&out.join("latency-vs-load.svg"), &sweeps)?;
        }
        Cmd::Failover { system, workload, kills, clients } => {
            let spec = workload.spec(Load::Closed { clients });
            let mut all = Vec::new();
            for s in systems(&system)? {
                let f = suite::failover(env, s, &spec, clients, kills).await?;
                print_failover(s, &f);
                all.push((name(s).to_owned(), f));
            }
            write_json(&out.join("failover.json"), &json!(all))?;
            let refs: Vec<(String, &Failover)> = all.iter().map(|(n, f)| (n.clone(), f)).collect();
            plot::failover(&out.join("failover.svg"), &refs)?;
        }
        Cmd::Fanout { sockets, bids, rate } => {
            let r = fanout::run(env, &FanoutSpec { sockets, bids, rate }).await?;
            println!(
                "fanout {} sockets ({} connected in {:.1} s), {} bids at {}/s: delivered {}/{}\n  read by the clients: p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  (bid round trip p50 {:.2} ms p99 {:.2} ms)",
                r.sockets,
                r.connected,
                r.connect_seconds,
                r.bids,
                r.rate,
                r.delivered,
                r.expected,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.max_ms,
                r.bid_p50_ms,
                r.bid_p99_ms
            );
            println!(
                "  arrived at the sockets (kernel stamp): p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({} unstamped)",
                r.arrival_p50_ms, r.arrival_p99_ms, r.arrival_p999_ms, r.arrival_max_ms, r.unstamped
            );
            println!(
                "gateway memory: {} KiB before, {} KiB with the sockets: {} bytes per connection; lagging disconnects {}",
                r.gateway_rss_before_kib, r.gateway_rss_connected_kib, r.bytes_per_connection, r.lagging
            );
            println!(
                "CPU per delivery: gateway {:.1} µs, clients {:.1} µs",
                r.gateway_cpu_us_per_delivery, r.clients_cpu_us_per_delivery
            );
            write_json(&out.join(format!("fanout-{sockets}.json")), &json!(r))?;
        }
        Cmd::Catalog { lots, bids, sale_bids, pages } => {
            let r = catalog::run(lots, bids.unwrap_or(lots * 3), sale_bids, pages)?;
            println!(
                "catalog {} lots: projection {:.0} events/s (load), {:.0} events/s (live sale); {} pages p50 {} µs p99 {} µs p999 {} µs max {} µs; worst combination p99 {} µs",
                r.lots,
                r.projection_events_per_s,
                r.sale_events_per_s,
                r.pages,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.worst_combo_p99_us
            );
            write_json(&out.join(format!("catalog-{lots}.json")), &json!(r))?;
        }
        Cmd::Search { lots, embed, queries, model, kernel } => {
            let kernel = match kernel {
                None => search::Kernel::best(),
                Some(KernelArg::F32) => search::Kernel::F32,
                Some(KernelArg::Int8) => search::Kernel::Int8,
            };
            let r = search::run(&model, kernel, lots, embed, queries)?;
            println!(
                "search {} lots ({} embedded, {} kernel): indexing {:.1} lots/s; {} queries p50 {} µs p99 {} µs p999 {} µs max {} µs (query embedding p50 {} µs p99 {} µs); best embedded hit on subject {}/{}",
                r.lots,
                r.embedded,
                r.kernel,
                r.index_lots_per_s,
                r.queries,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.embed_p50_us,
                r.embed_p99_us,
                r.on_subject,
                r.queries
            );
            write_json(&out.join(format!("search-{lots}.json")), &json!(r))?;
        }
        Cmd::All { seconds, clients, kills } => all(env, out, seconds, clients, kills).await?,
        Cmd::Replot => replot(out)?,
    }
    println!("results in {}", out.display());
    Ok(())
}

fn name(s: System) -> &'static str {
    match s {
        System::Gavel => "gavel",
        System::Http => "http",
        System::Etcd => "etcd",
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::INFINITY }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), BenchError> {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap_or_default())?;
    Ok(())
}

fn print_run(r: &RunResult) {
    println!(
        "{:<6} {:<10} {:<24} {:>10.0} accepted bids/s {:>10.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  max {:>8.2} ms  rejected {:?}  errors {:?}",
        r.target,
        format!("{:?}", r.workload),
        format!("{:?}", r.load),
        r.accepted_bids_per_s,
        r.ops_per_s,
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.rejections_by_code,
        r.errors_by_code
    );
    if let Load::Open { .. } = r.load {
        println!(
            "       open loop: p99 from the actual send {:.2} ms; the driver sent late by p50 {:.3} ms, p99 {:.3} ms, at most {:.2} ms",
            r.service_p99_ms, r.send_lag_p50_ms, r.send_lag_p99_ms, r.send_lag_max_ms
        );
    }
}

fn print_sweep(results: &[RunResult]) {
    for r in results {
        print_run(r);
    }
}

fn print_failover(s: System, f: &Failover) {
    println!(
        "{:<6} failover over {} leader kills: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        name(s),
        f.kills,
        f.p50_ms,
        f.p99_ms,
        f.max_ms
    );
}

/// Each system on a fresh cluster, back to back; JSON and a time-series plot under `out`.
async fn compare(
    env: &Env,
    systems: &[System],
    spec: &Spec,
    out: &Path,
    tag: &str,
) -> Result<Vec<RunResult>, BenchError> {
    let mut results = Vec::new();
    for s in systems {
        let r = suite::run_once(env, *s, spec).await?;
        print_run(&r);
        results.push(r);
    }
    let file = format!("{tag}-{:?}-{}", spec.workload, load_tag(spec.load)).to_lowercase();
    write_json(&out.join(format!("{file}.json")), &json!(results))?;
    let refs: Vec<&RunResult> = results.iter().collect();
    plot::timeseries(
        &out.join(format!("{file}.svg")),
        &format!("{:?} workload, {:?}", spec.workload, spec.load),
        &refs,
    )?;
    Ok(results)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BenchError> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| BenchError::Usage(format!("{}: {e}", path.display())))
}

fn replot(out: &Path) -> Result<(), BenchError> {
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match stem.as_str() {
            "sweep" => {
                let sweeps: Vec<(String, Vec<RunResult>)> = read_json(&path)?;
                plot::latency_vs_load(&out.join("latency-vs-load.svg"), &sweeps)?;
            }
            "failover" => {
                let all: Vec<(String, Failover)> = read_json(&path)?;
                let refs: Vec<(String, &Failover)> = all.iter().map(|(n, f)| (n.clone(), f)).collect();
                plot::failover(&out.join("failover.svg"), &refs)?;
            }
            _ => {
                let results: Vec<RunResult> = read_json(&path)?;
                if let Some(first) = results.first() {
                    let refs: Vec<&RunResult> = results.iter().collect();
                    let title = format!("{:?} workload, {:?}", first.workload, first.load);
                    plot::timeseries(&out.join(format!("{stem}.svg")), &title, &refs)?;
                }
            }
        }
    }
    Ok(())
}

fn load_tag(load: Load) -> String {
    match load {
        Load::Closed { clients } => format!("closed{clients}"),
        Load::Open { rate } => format!("open{rate}"),
    }
}

/// The whole suite, and `summary.md` with one line per goal.
async fn all(env: &Env, out: &Path, seconds: u64, clients: usize, kills: usize) -> Result<(), BenchError> {
    let both = [System::Gavel, System::Etcd];
    let base = |workload: Workload, lots: usize| Spec {
        workload,
        lots,
        bidders: 1000,
        load: Load::Closed { clients },
        duration: Duration::from_secs(seconds),
        seed: 1,
    };
    let mut summary = String::from(
        "| system | workload | load | accepted bids/s | ops/s | p50 ms | p99 ms | p999 ms | max ms | failed |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut closed = Vec::new();
    for (workload, lots) in [(Workload::Zipf, 10_000), (Workload::Hot, 4), (Workload::ReadHeavy, 10_000)] {
        let results = compare(env, &both, &base(workload, lots), out, "closed").await?;
        closed.push(results);
    }
    // Gavel's write path with bids gathered into requests, as the gateway will send them.
    let batched_env = Env { batch: 256, ..env.clone() };
    let batched_spec = Spec { load: Load::Closed { clients: 1024 }, ..base(Workload::Zipf, 10_000) };
    let batched = compare(&batched_env, &[System::Gavel], &batched_spec, out, "batched256").await?;
    // The same load through the HTTP gateway, which does its own batching.
    let http = compare(env, &[System::Http], &batched_spec, out, "http").await?;
    let http_open = suite::sweep(env, System::Http, &base(Workload::Zipf, 10_000), &[1_000, 5_000]).await?;
    print_sweep(&http_open);
    write_json(&out.join("http-sweep.json"), &json!(http_open))?;
    let rates = [1_000, 2_500, 5_000, 10_000, 20_000];
    let mut sweeps = Vec::new();
    for s in both {
        let results = suite::sweep(env, s, &base(Workload::Zipf, 10_000), &rates).await?;
        print_sweep(&results);
        sweeps.push((name(s).to_owned(), results));
    }
    write_json(&out.join("sweep.json"), &json!(sweeps))?;
    plot::latency_vs_load(&out.join("latency-vs-load.svg"), &sweeps)?;
    let mut failovers = Vec::new();
    for s in both {
        let f = suite::failover(env, s, &base(Workload::Zipf, 10_000), 32, kills).await?;
        print_failover(s, &f);
        failovers.push((name(s).to_owned(), f));
    }
    write_json(&out.join("failover.json"), &json!(failovers))?;
    let refs: Vec<(String, &Failover)> = failovers.iter().map(|(n, f)| (n.clone(), f)).collect();
    plot::failover(&out.join("failover.svg"), &refs)?;

    for r in closed
        .iter()
        .flatten()
        .chain(&batched)
        .chain(&http)
        .chain(sweeps.iter().flat_map(|(_, rs)| rs.iter()))
        .chain(&http_open)
    {
        summary.push_str(&format!(
            "| {} | {:?} | {:?} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.target,
            r.workload,
            r.load,
            r.accepted_bids_per_s,
            r.ops_per_s,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.failed
        ));
    }
    summary.push_str("\n| system | leader kills | recovery p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n");
    for (n, f) in &failovers {
        summary.push_str(&format!("| {n} | {} | {:.0} | {:.0} | {:.0} |\n", f.kills, f.p50_ms, f.p99_ms, f.max_ms));
    }
    let (g, e) = (&closed[0][0], &closed[0][1]);
    let r = ratio(g.accepted_bids_per_s, e.accepted_bids_per_s);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let at_10k = sweeps[0].1.iter().find(|r| matches!(r.load, Load::Open { rate: 10_000 }));
    let p99_10k = at_10k.map_or(f64::INFINITY, |r| r.p99_ms);
    let gavel_failover = &failovers[0].1;
    let batched_rate = batched.first().map_or(0.0, |b| b.accepted_bids_per_s);
    let http_rate = http.first().map_or(0.0, |h| h.accepted_bids_per_s);
    let http_p99_5k =
        http_open.iter().find(|r| matches!(r.load, Load::Open { rate: 5_000 })).map_or(f64::INFINITY, |r| r.p99_ms);
    summary.push_str(&format!(
        "\nGoals:\n\n- Committed bids/s (gRPC, many lots) >= 100,000: {:.0} one bid per request, {:.0} with 256 per request -> {}\n- At least 5x etcd in the same run: {r:.1}x -> {}\n- p99 <= 5 ms at 10,000 bids/s offered (open loop): {p99_10k:.2} ms -> {}\n- Leader failover p99 <= 1 s over {} kills: {:.0} ms -> {}\n- HTTP bids/s >= 0.8x the batched gRPC figure: {http_rate:.0} vs {batched_rate:.0} ({:.2}x) -> {}\n- HTTP p99 <= 10 ms at 5,000 bids/s offered (open loop): {http_p99_5k:.2} ms -> {}\n",
        g.accepted_bids_per_s,
        batched.first().map_or(0.0, |b| b.accepted_bids_per_s),
        met(g.accepted_bids_per_s.max(batched.first().map_or(0.0, |b| b.accepted_bids_per_s)) >= 100_000.0),
        met(r >= 5.0),
        met(p99_10k <= 5.0),
        gavel_failover.kills,
        gavel_failover.p99_ms,
        met(gavel_failover.p99_ms <= 1000.0),
        ratio(http_rate, batched_rate),
        met(http_rate >= 0.8 * batched_rate),
        met(http_p99_5k <= 10.0),
    ));
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("\n{summary}");
    Ok(())
}
