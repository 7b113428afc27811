//! `gavel-bench`: the load driver. Closed loop (N clients, one operation in flight each, as
//! fast as answers come) or open loop (a fixed arrival rate; latency is measured from each
//! operation's intended send time, so a stall delays every operation behind it and cannot be
//! hidden by coordinated omission). Latencies go to HdrHistograms; a progress line prints
//! every second; the result is JSON and SVG.

pub mod catalog;
pub mod etcd;
pub mod fanout;
pub mod plot;
pub mod search;
mod stamped;
pub mod suite;
pub mod target;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

use target::{Op, Outcome, START_PRICE, Target};

/// What the operations look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Every operation a bid, on a few lots picked uniformly.
    Hot,
    /// Every operation a bid, on many lots with Zipf(1.0) popularity.
    Zipf,
    /// Every operation a bid, on many lots picked uniformly (little contention per lot).
    Uniform,
    /// 90% linearizable lot reads, 10% bids, Zipf popularity.
    ReadHeavy,
}

impl Workload {
    pub fn parse(s: &str) -> Result<Workload, String> {
        match s {
            "hot" => Ok(Workload::Hot),
            "zipf" => Ok(Workload::Zipf),
            "uniform" => Ok(Workload::Uniform),
            "read-heavy" => Ok(Workload::ReadHeavy),
            other => Err(format!("unknown workload {other:?} (hot, zipf, uniform, read-heavy)")),
        }
    }
}

/// How operations arrive.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    Closed { clients: usize },
    Open { rate: u64 },
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub workload: Workload,
    pub lots: usize,
    pub bidders: usize,
    pub load: Load,
    pub duration: Duration,
    pub seed: u64,
}

/// Picks operations. Maxima rise on a counter shared by all clients, on the $100 grid above
/// $10,000 (where the USD ladder's step is $100), so bids mostly outbid the leader and do real
/// work rather than bounce off the minimum.
struct Generator {
    spec: Spec,
    zipf: Option<Zipf<f64>>,
}

/// Shared by every run of this process, so a later run on the same cluster (a sweep) keeps
/// outbidding the prices an earlier run left.
static MAXIMA: AtomicU64 = AtomicU64::new(0);

impl Generator {
    fn new(spec: &Spec) -> Generator {
        let zipf = match spec.workload {
            Workload::Hot | Workload::Uniform => None,
            Workload::Zipf | Workload::ReadHeavy => Zipf::new(spec.lots as u64, 1.0).ok(),
        };
        Generator { spec: spec.clone(), zipf }
    }

    fn next(&self, rng: &mut StdRng) -> Op {
        let lot = match &self.zipf {
            Some(z) => (z.sample(rng) as usize).saturating_sub(1).min(self.spec.lots - 1),
            None => rng.gen_range(0..self.spec.lots),
        };
        if self.spec.workload == Workload::ReadHeavy && rng.gen_bool(0.9) {
            return Op::Read { lot };
        }
        let k = MAXIMA.fetch_add(1, Ordering::Relaxed) as i64;
        Op::Bid { lot, bidder: rng.gen_range(0..self.spec.bidders), max: 100 * START_PRICE + k * 10_000 }
    }
}

#[allow(clippy::expect_used, reason = "constant bounds, checked by a test")]
fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Counts and latencies, shared by every in-flight operation.
struct Recorder {
    total: Mutex<Histogram<u64>>,
    /// Open loop: from the actual send (the system's own time, without the driver's lag).
    service: Mutex<Histogram<u64>>,
    /// Open loop: the most an operation was sent after its intended time (the driver's lag).
    send_lag_max_us: AtomicU64,
    interval: Mutex<Histogram<u64>>,
    /// Open loop: how late each operation was sent, from its intended time.
    lag: Mutex<Histogram<u64>>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
    codes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            total: Mutex::new(histogram()),
            service: Mutex::new(histogram()),
            send_lag_max_us: AtomicU64::new(0),
            interval: Mutex::new(histogram()),
            lag: Mutex::new(histogram()),
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            codes: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    fn record(&self, latency: Duration, result: Result<Outcome, String>) {
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        let bump = |map: &Mutex<BTreeMap<String, u64>>, key: String| {
            if let Ok(mut m) = map.lock() {
                *m.entry(key).or_default() += 1;
            }
        };
        match result {
            Ok(outcome) => {
                match outcome {
                    Outcome::Accepted => self.accepted.fetch_add(1, Ordering::Relaxed),
                    Outcome::Read => self.reads.fetch_add(1, Ordering::Relaxed),
                    Outcome::Rejected(code) => {
                        bump(&self.codes, code);
                        self.rejected.fetch_add(1, Ordering::Relaxed)
                    }
                };
                // Only answered operations have a latency; failures are counted by code.
                for h in [&self.total, &self.interval] {
                    if let Ok(mut h) = h.lock() {
                        let _ = h.record(us);
                    }
                }
            }
            Err(code) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                bump(&self.errors, code);
            }
        }
    }

    /// Open loop: how late the driver sent and how long the system took from the real send.
    fn record_service(&self, lag: Duration, service: Duration) {
        self.send_lag_max_us.fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        if let Ok(mut h) = self.lag.lock() {
            let _ = h.record((lag.as_micros() as u64).clamp(1, 600_000_000));
        }
        if let Ok(mut h) = self.service.lock() {
            let _ = h.record((service.as_micros() as u64).clamp(1, 600_000_000));
        }
    }

    fn answered(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
            + self.reads.load(Ordering::Relaxed)
    }
}

/// One second of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Second {
    pub t: f64,
    /// Answered operations per second (bids accepted or refused by the rules, reads).
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub target: String,
    pub workload: Workload,
    pub load: Load,
    pub lots: usize,
    pub seconds: f64,
    /// Bids accepted and committed, per second.
    pub accepted_bids_per_s: f64,
    /// Every answered operation per second (accepted, refused by the rules, reads).
    pub ops_per_s: f64,
    pub accepted: u64,
    pub rejected: u64,
    pub reads: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Open loop only: p99 from the actual send, and the driver's worst lag behind schedule
    /// (if the lag is small, the latency is the system's, not the driver's).
    #[serde(default)]
    pub service_p99_ms: f64,
    #[serde(default)]
    pub send_lag_max_ms: f64,
    #[serde(default)]
    pub send_lag_p50_ms: f64,
    #[serde(default)]
    pub send_lag_p99_ms: f64,
    pub rejections_by_code: BTreeMap<String, u64>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub series: Vec<Second>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The open loop's send times, each sent on the channel when it is due. Paced by an OS thread
/// sleeping to each time (the kernel's high-resolution timers), not by tokio's timer, which
/// rounds every wake-up up to the next millisecond: at 10,000/s that sent ten bids together
/// each millisecond, up to a millisecond late, and that lateness counted as the system's.
fn pace(started: Instant, period: Duration, deadline: Instant) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for i in 0u32.. {
            let intended = started + period * i;
            if intended >= deadline {
                break;
            }
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
        }
    });
    rx
}

/// Bounded in-flight operations in open loop: beyond this the driver itself would be the
/// bottleneck; operations still count from their intended time while they wait.
const OPEN_LOOP_IN_FLIGHT_MAX: usize = 20_000;

/// Runs `spec` against `target` and returns the figures. Prints a progress line every second
/// to stderr.
pub async fn drive(target: Arc<Target>, spec: &Spec) -> RunResult {
    let generator = Arc::new(Generator::new(spec));
    let recorder = Arc::new(Recorder::new());
    let started = Instant::now();
    let deadline = started + spec.duration;
    let label = format!("{} {:?} {:?}", target.name(), spec.workload, spec.load);
    let progress = tokio::spawn(progress(recorder.clone(), started, deadline, label));
    match spec.load {
        Load::Closed { clients } => {
            let mut tasks = Vec::new();
            for c in 0..clients {
                let (target, generator, recorder) = (target.clone(), generator.clone(), recorder.clone());
                let mut rng = crate::run::client_rng(spec.seed, c);
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let op = generator.next(&mut rng);
                        let sent = Instant::now();
                        let result = target.perform(op).await;
                        recorder.record(sent.elapsed(), result);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Load::Open { rate } => {
            let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT_MAX));
            let mut rng = StdRng::seed_from_u64(spec.seed);
            let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let mut tasks = tokio::task::JoinSet::new();
            let mut due = pace(started, period, deadline);
            while let Some(intended) = due.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let op = generator.next(&mut rng);
                let (target, recorder) = (target.clone(), recorder.clone());
                tasks.spawn(async move {
                    let sent = Instant::now();
                    let result = target.perform(op).await;
                    recorder.record(intended.elapsed(), result);
                    recorder.record_service(sent.duration_since(intended), sent.elapsed());
                    drop(permit);
                });
                // Reap finished tasks as we go so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let series = progress.await.unwrap_or_default();
    let seconds = started.elapsed().as_secs_f64();
    let total = recorder.total.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
    let accepted = recorder.accepted.load(Ordering::Relaxed);
    let service = recorder.service.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
    let lag = recorder.lag.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
    RunResult {
        target: target.name().into(),
        workload: spec.workload,
        load: spec.load,
        lots: spec.lots,
        seconds,
        accepted_bids_per_s: accepted as f64 / seconds,
        ops_per_s: recorder.answered() as f64 / seconds,
        accepted,
        rejected: recorder.rejected.load(Ordering::Relaxed),
        reads: recorder.reads.load(Ordering::Relaxed),
        failed: recorder.failed.load(Ordering::Relaxed),
        p50_ms: ms(total.value_at_quantile(0.50)),
        p99_ms: ms(total.value_at_quantile(0.99)),
        p999_ms: ms(total.value_at_quantile(0.999)),
        max_ms: ms(total.max()),
        service_p99_ms: ms(service.value_at_quantile(0.99)),
        send_lag_max_ms: ms(recorder.send_lag_max_us.load(Ordering::Relaxed)),
        send_lag_p50_ms: ms(lag.value_at_quantile(0.5)),
        send_lag_p99_ms: ms(lag.value_at_quantile(0.99)),
        rejections_by_code: recorder.codes.lock().map(|m| m.clone()).unwrap_or_default(),
        errors_by_code: recorder.errors.lock().map(|m| m.clone()).unwrap_or_default(),
        series,
    }
}

/// Every second: a progress line, and the second's throughput and latency for the plots.
async fn progress(recorder: Arc<Recorder>, started: Instant, deadline: Instant, label: String) -> Vec<Second> {
    let mut series = Vec::new();
    let mut last = (0u64, started);
    let mut tick = tokio::time::interval_at((started + Duration::from_secs(1)).into(), Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let answered = recorder.answered();
        let interval = recorder.interval.lock().map(|mut h| std::mem::replace(&mut *h, histogram()));
        let Ok(interval) = interval else { break };
        let rate = (answered - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        let second = Second {
            t: now.duration_since(started).as_secs_f64(),
            ops_per_s: rate,
            p50_ms: ms(interval.value_at_quantile(0.5)),
            p99_ms: ms(interval.value_at_quantile(0.99)),
        };
        eprintln!(
            "[{label}] {:>5.1}s  {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>8.2} ms  failed {}",
            second.t,
            second.ops_per_s,
            second.p50_ms,
            second.p99_ms,
            recorder.failed.load(Ordering::Relaxed)
        );
        series.push(second);
        last = (answered, now);
        if now >= deadline {
            break;
        }
    }
    series
}

/// Leader failover under load: how long after each kill -9 of the leader writes succeed again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failover {
    pub kills: usize,
    /// Per kill: milliseconds from the kill to the first acknowledged bid sent after it.
    pub recovery_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Watches completions for the first acknowledged write sent after a kill.
#[derive(Default)]
pub struct Resume {
    state: Mutex<Option<(Instant, Option<Instant>)>>,
}

impl Resume {
    pub fn arm(&self, killed_at: Instant) {
        if let Ok(mut s) = self.state.lock() {
            *s = Some((killed_at, None));
        }
    }

    fn observe(&self, sent: Instant, done: Instant) {
        if let Ok(mut s) = self.state.lock()
            && let Some((killed_at, resumed @ None)) = s.as_mut()
            && sent >= *killed_at
        {
            *resumed = Some(done);
        }
    }

    /// Time from the kill to the resumption, once it happened.
    pub fn resumed(&self) -> Option<Duration> {
        let s = self.state.lock().ok()?;
        let (killed_at, resumed) = (*s)?;
        resumed.map(|r| r.duration_since(killed_at))
    }
}

/// Closed-loop bidders that report each acknowledged write to `resume`, until `stop`.
pub fn steady_writers(
    target: Arc<Target>,
    spec: &Spec,
    clients: usize,
    resume: Arc<Resume>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let generator = Arc::new(Generator::new(spec));
    (0..clients)
        .map(|c| {
            let (target, generator, resume, stop) = (target.clone(), generator.clone(), resume.clone(), stop.clone());
            let mut rng = crate::run::client_rng(spec.seed, c);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let op = generator.next(&mut rng);
                    let sent = Instant::now();
                    if let Ok(Outcome::Accepted | Outcome::Rejected(_)) = target.perform(op).await {
                        resume.observe(sent, Instant::now());
                    }
                }
            })
        })
        .collect()
}

/// p50/p99/max of recovery times.
pub fn failover_summary(recovery: Vec<Duration>) -> Failover {
    let mut h = histogram();
    for r in &recovery {
        let _ = h.record((r.as_micros() as u64).max(1));
    }
    Failover {
        kills: recovery.len(),
        recovery_ms: recovery.iter().map(|r| r.as_secs_f64() * 1000.0).collect(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}
