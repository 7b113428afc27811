//! Starting the systems under test and the measurements `gavel-bench` offers: one run on a
//! fresh cluster, an open-loop sweep, and leader failover under load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use node::Client;

use super::etcd::{EtcdCluster, EtcdError};
use super::target::{Etcd, Gavel, Http, Target};
use super::{Failover, Resume, RunResult, Spec, drive, failover_summary, steady_writers};
use crate::cluster::{Cluster, ClusterError};
use crate::net::Mode;

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("etcd client: {0}")]
    EtcdClient(#[from] etcd_client::Error),
    #[error("setup: {0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no {0} leader found")]
    NoLeader(&'static str),
}

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// Gavel through the node client library (gRPC).
    Gavel,
    /// Gavel through `gavel gateway` (HTTP + JSON + JWT).
    Http,
    Etcd,
}

#[derive(Clone)]
pub struct Env {
    pub node_bin: PathBuf,
    pub etcd_bin: PathBuf,
    /// Per-client deadline for one operation (retries included).
    pub op_deadline: Duration,
    /// Extra `gavel-node` flags (none: the shipped defaults).
    pub node_args: Vec<String>,
    /// Bids per Gavel request (1: one bid per request; more: gathered as a gateway would).
    pub batch: usize,
    /// The `gavel` binary (for the HTTP target), if built.
    pub gavel_bin: Option<PathBuf>,
}

/// Keep-alive connections the HTTP target opens before it measures: about what 5,000 bids/s
/// keeps in flight at tens of milliseconds each.
const HTTP_WARM_CONNECTIONS: usize = 256;

/// A `gavel gateway` process, killed when dropped.
pub struct GatewayProcess {
    child: std::process::Child,
    url: String,
}

impl GatewayProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The signing secret the bench gives its gateway and signs its bidders' tokens with.
const BENCH_JWT_SECRET: &str = "gavel-bench-secret-of-at-least-32-bytes";

/// A running system, torn down when dropped.
pub enum Running {
    Gavel { cluster: Box<Cluster>, target: Arc<Target>, _gateway: Option<GatewayProcess>, _dir: tempfile::TempDir },
    Etcd { cluster: EtcdCluster, target: Arc<Target>, _dir: tempfile::TempDir },
}

impl Running {
    pub fn target(&self) -> Arc<Target> {
        match self {
            Running::Gavel { target, .. } | Running::Etcd { target, .. } => target.clone(),
        }
    }
}

/// Starts a fresh 3-node cluster of `system` with `lots` open lots and `bidders` users.
pub async fn start(env: &Env, system: System, lots: usize, bidders: usize) -> Result<Running, SuiteError> {
    let dir = tempfile::tempdir()?;
    match system {
        System::Gavel | System::Http => {
            let cluster = Cluster::start(&env.node_bin, dir.path(), 3, env.node_args.clone(), Mode::Direct).await?;
            cluster.leader(Duration::from_secs(30)).await?;
            let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
            let setup = Client::new(addrs.clone()).with_deadline(Duration::from_secs(60));
            let day_ms = 24 * 3_600_000;
            for chunk in crate::run::setup_commands(bidders, lots, crate::run::now_ms(), day_ms).chunks(1000) {
                setup.propose(chunk.to_vec()).await.map_err(|e| SuiteError::Setup(e.to_string()))?;
            }
            if system == System::Gavel {
                let target = Arc::new(Target::Gavel(Gavel::new(addrs, env.op_deadline, env.batch)));
                return Ok(Running::Gavel { cluster: Box::new(cluster), target, _gateway: None, _dir: dir });
            }
            let (gateway, url) = start_gateway(env, &addrs, dir.path()).await?;
            let tokens = (0..bidders).map(bidder_token).collect::<Result<Vec<_>, _>>()?;
            let http = Http::new(url, tokens, env.op_deadline).map_err(|e| SuiteError::Setup(e.to_string()))?;
            http.warm(HTTP_WARM_CONNECTIONS).await.map_err(|e| SuiteError::Setup(e.to_string()))?;
            Ok(Running::Gavel {
                cluster: Box::new(cluster),
                target: Arc::new(Target::Http(http)),
                _gateway: Some(gateway),
                _dir: dir,
            })
        }
        System::Etcd => {
            let cluster = EtcdCluster::start(&env.etcd_bin, dir.path(), 3)?;
            let etcd = connect_etcd(&cluster.endpoints(), env.op_deadline).await?;
            etcd.setup(lots).await?;
            let target = Arc::new(Target::Etcd(etcd));
            Ok(Running::Etcd { cluster, target, _dir: dir })
        }
    }
}

/// Starts `gavel gateway` in front of `addrs` with rate limits and search off (the bench is one
/// client address sending far more than a person would) and waits until it is ready.
async fn start_gateway(env: &Env, addrs: &[String], dir: &Path) -> Result<(GatewayProcess, String), SuiteError> {
    let bin = env.gavel_bin.as_ref().ok_or_else(|| {
        SuiteError::Setup("the gavel binary was not found; build it (cargo build --release -p gavel-gateway)".into())
    })?;
    let port = crate::net::free_loopback_addr()?.port();
    let child = std::process::Command::new(bin)
        .arg("gateway")
        .args(["--nodes", &addrs.join(",")])
        .args(["--http-listen", &format!("127.0.0.1:{port}")])
        .args(["--rate-ip-per-sec", "0", "--rate-user-per-sec", "0"])
        .arg("--catalog-dir")
        .arg(dir.join("catalog"))
        // Search off (no model file): the bench creates its 10,000 lots just before it measures,
        // and embedding them all would run during the measurement, which is of bids (a bid
        // changes no lot's text). Its directory is the run's own either way.
        .arg("--search-dir")
        .arg(dir.join("search"))
        .arg("--model")
        .arg(dir.join("no-model.bin"))
        .env("GAVEL_JWT_SECRET", BENCH_JWT_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let gateway = GatewayProcess { child, url: url.clone() };
    // Ready, not just up: its feed and catalog have caught up with the lots just created, as a
    // load balancer would wait for, so that catch-up is not part of the measurement.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = reqwest::get(format!("{url}/readyz")).await.is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok((gateway, url));
        }
        if Instant::now() > until {
            return Err(SuiteError::Setup("gavel gateway was not ready within 120 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real HS256 token for bench bidder `n`, as the gateway issues them.
pub fn bidder_token(n: usize) -> Result<String, SuiteError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": super::target::bidder_id(n), "role": "user", "iss": "gavel", "iat": now, "exp": now + 24 * 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(BENCH_JWT_SECRET.as_bytes()),
    )
    .map_err(|e| SuiteError::Setup(format!("token: {e}")))
}

/// etcd takes a moment to form its cluster: retry the first connection and setup.
async fn connect_etcd(endpoints: &[String], deadline: Duration) -> Result<Etcd, SuiteError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let etcd = Etcd::connect(endpoints, deadline).await?;
            etcd.leader().await?;
            Ok::<_, etcd_client::Error>(etcd)
        };
        match attempt.await {
            Ok(etcd) => return Ok(etcd),
            Err(e) if Instant::now() > until => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One run on a fresh cluster.
pub async fn run_once(env: &Env, system: System, spec: &Spec) -> Result<RunResult, SuiteError> {
    let running = start(env, system, spec.lots, spec.bidders).await?;
    Ok(drive(running.target(), spec).await)
}

/// Open-loop runs at each rate, on one fresh cluster.
pub async fn sweep(env: &Env, system: System, spec: &Spec, rates: &[u64]) -> Result<Vec<RunResult>, SuiteError> {
    let running = start(env, system, spec.lots, spec.bidders).await?;
    let mut results = Vec::new();
    for rate in rates {
        let spec = Spec { load: super::Load::Open { rate: *rate }, ..spec.clone() };
        results.push(drive(running.target(), &spec).await);
    }
    Ok(results)
}

/// Under `clients` closed-loop bidders, kills the leader `kills` times (kill -9); each time
/// measures until a bid sent after the kill is acknowledged, then restarts the old leader and
/// lets it catch up before the next kill.
pub async fn failover(
    env: &Env,
    system: System,
    spec: &Spec,
    clients: usize,
    kills: usize,
) -> Result<Failover, SuiteError> {
    let mut running = start(env, system, spec.lots, spec.bidders).await?;
    let resume = Arc::new(Resume::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = steady_writers(running.target(), spec, clients, resume.clone(), stop.clone());
    let mut recovery = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = match &mut running {
            Running::Gavel { cluster, .. } => {
                let leader = cluster.leader(Duration::from_secs(10)).await?;
                resume.arm(Instant::now());
                cluster.kill(leader)?;
                Killed::Gavel(leader)
            }
            Running::Etcd { cluster, target, .. } => {
                let Target::Etcd(etcd) = target.as_ref() else { return Err(SuiteError::NoLeader("etcd")) };
                let (leader, urls) = etcd.leader().await?;
                let url = urls.iter().find(|(id, _)| *id == leader).map(|(_, u)| u.clone());
                let name = url.and_then(|u| cluster.name_of(&u)).ok_or(SuiteError::NoLeader("etcd"))?;
                resume.arm(Instant::now());
                cluster.kill(&name)?;
                Killed::Etcd(name)
            }
        };
        let until = Instant::now() + Duration::from_secs(30);
        let took = loop {
            if let Some(d) = resume.resumed() {
                break d;
            }
            if Instant::now() > until {
                break Duration::from_secs(30);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!("[{system:?} failover] kill {}: writes resumed after {:.0} ms", k + 1, took.as_secs_f64() * 1000.0);
        recovery.push(took);
        match (&mut running, killed) {
            (Running::Gavel { cluster, .. }, Killed::Gavel(id)) => {
                cluster.restart(id)?;
                caught_up(cluster, id).await?;
            }
            (Running::Etcd { cluster, .. }, Killed::Etcd(name)) => {
                cluster.restart(&name)?;
                // Give the member time to rejoin before the next kill (a kill while it is
                // still catching up would cost the quorum).
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            _ => {}
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    Ok(failover_summary(recovery))
}

/// Waits until node `id` has applied what the leader had applied when it was restarted
/// (under load the replicas are never all equal at one instant).
async fn caught_up(cluster: &Cluster, id: u64) -> Result<(), SuiteError> {
    let leader = cluster.leader(Duration::from_secs(10)).await?;
    let target = Client::metrics(&cluster.addrs[&leader]).await.map(|m| m.last_applied_index).unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = Client::metrics(&cluster.addrs[&id]).await
            && m.last_applied_index >= target
        {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(SuiteError::Setup(format!("node {id} did not catch up")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum Killed {
    Gavel(u64),
    Etcd(String),
}
