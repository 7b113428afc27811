//! Cluster control: real `gavel-node` processes, each on its own host (see [`crate::net`]) with
//! its own data directory, that the nemesis can kill -9, restart, pause (SIGSTOP) and resume
//! (SIGCONT), and, on power-loss disks ([`crate::powerfs`]), cut the power of. Every process is
//! killed when the `Cluster` is dropped, then the disks unmounted and the network torn down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node::Client;

use crate::net::{Mode, Net, NetError};
use crate::powerfs::{Loss, PowerFs};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("replicas did not converge within {0:?}: {1}")]
    NoConvergence(Duration, String),
    #[error("node {0} is not on a power-loss disk: start the cluster with Cluster::start_on_power_loss_disks")]
    NoPowerLossDisk(u64),
}

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    /// Where clients and other nodes reach each node.
    pub addrs: BTreeMap<u64, String>,
    members: String,
    children: BTreeMap<u64, Child>,
    paused: BTreeMap<u64, bool>,
    extra_args: Vec<String>,
    /// Each node's data directory, when the cluster runs on power-loss disks. Dropped (so
    /// unmounted) after `Drop::drop` has killed the processes.
    disks: BTreeMap<u64, PowerFs>,
    /// Declared last: dropped after `Drop::drop` has killed the processes.
    pub net: Net,
}

impl Cluster {
    /// Starts `n` nodes from `bin` with data under `dir`.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
        mode: Mode,
    ) -> Result<Cluster, ClusterError> {
        Cluster::launch(bin, dir, n, extra_args, mode, false).await
    }

    /// Like [`Cluster::start`], with each node's data directory on a power-loss filesystem,
    /// so that [`Cluster::power_loss`] can drop what a node did not fsync. Needs root and
    /// `/dev/fuse`.
    pub async fn start_on_power_loss_disks(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
        mode: Mode,
    ) -> Result<Cluster, ClusterError> {
        Cluster::launch(bin, dir, n, extra_args, mode, true).await
    }

    async fn launch(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra_args: Vec<String>,
        mode: Mode,
        power_loss_disks: bool,
    ) -> Result<Cluster, ClusterError> {
        let net = Net::new(mode, n).await?;
        let addrs: BTreeMap<u64, String> = net.hosts().iter().map(|(id, h)| (*id, h.advertise.clone())).collect();
        let members = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        let mut cluster = Cluster {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            addrs,
            members,
            children: BTreeMap::new(),
            paused: BTreeMap::new(),
            extra_args,
            disks: BTreeMap::new(),
            net,
        };
        for id in 1..=n {
            if power_loss_disks {
                cluster.disks.insert(id, PowerFs::mount(&cluster.data_dir(id))?);
            }
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.addrs.keys().copied().collect()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.children.contains_key(&id)
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: u64) -> Result<(), ClusterError> {
        self.spawn_with(id, &[])
    }

    /// Restarts `id` (kill -9 if running) with `extra` flags on top of the usual ones.
    pub fn restart_with(&mut self, id: u64, extra: &[String]) -> Result<(), ClusterError> {
        self.kill(id)?;
        self.spawn_with(id, extra)
    }

    fn spawn_with(&mut self, id: u64, extra: &[String]) -> Result<(), ClusterError> {
        let host = &self.net.hosts()[&id];
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log")))?;
        let child = self
            .net
            .command(id, &self.bin)
            .args(["--id", &id.to_string(), "--listen", &host.listen, "--advertise", &host.advertise])
            .args(["--members", &self.members])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra_args)
            .args(extra)
            .env("RUST_LOG", std::env::var("GAVEL_NODE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ClusterError::Spawn { bin: self.bin.display().to_string(), source })?;
        self.children.insert(id, child);
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) -> Result<(), ClusterError> {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill()?;
            child.wait()?;
        }
        self.paused.remove(&id);
        Ok(())
    }

    /// The power goes out on `ids` at once: each is killed -9, then everything it wrote and
    /// did not fsync is gone. What each lost, by node.
    pub fn power_loss(&mut self, ids: &[u64]) -> Result<BTreeMap<u64, Loss>, ClusterError> {
        if let Some(id) = ids.iter().find(|id| !self.disks.contains_key(id)) {
            return Err(ClusterError::NoPowerLossDisk(*id));
        }
        for id in ids {
            self.kill(*id)?;
        }
        let mut lost = BTreeMap::new();
        for id in ids {
            if let Some(disk) = self.disks.get(id) {
                lost.insert(*id, disk.lose_unsynced()?);
            }
        }
        Ok(lost)
    }

    pub fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        if !self.children.contains_key(&id) {
            self.spawn(id)?;
        }
        Ok(())
    }

    fn signal(&self, id: u64, sig: &str) -> Result<(), ClusterError> {
        if let Some(child) = self.children.get(&id) {
            Command::new("kill").args([sig, &child.id().to_string()]).status()?;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, "-STOP")?;
        self.paused.insert(id, true);
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, "-CONT")?;
        self.paused.remove(&id);
        Ok(())
    }

    /// Every node running and resumed.
    pub fn heal(&mut self) -> Result<(), ClusterError> {
        for id in self.ids() {
            self.resume(id)?;
            self.restart(id)?;
        }
        Ok(())
    }

    /// The node that reports itself leader, among running ones.
    pub async fn leader(&self, within: Duration) -> Result<u64, ClusterError> {
        let deadline = Instant::now() + within;
        loop {
            for (id, addr) in &self.addrs {
                if self.children.contains_key(id)
                    && let Ok(m) = Client::metrics(addr).await
                    && m.state == "Leader"
                {
                    return Ok(*id);
                }
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NoLeader(within));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node has applied the same index and reports the same digest;
    /// returns `(index, digest)`.
    pub async fn converge(&self, within: Duration) -> Result<(u64, String), ClusterError> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            let mut seen = Vec::new();
            for addr in self.addrs.values() {
                match Client::metrics_with_digest(addr).await {
                    Ok(m) => seen.push((m.last_applied_index, m.state_digest)),
                    Err(e) => last = e.to_string(),
                }
            }
            if seen.len() == self.addrs.len() && seen.windows(2).all(|w| w[0] == w[1]) {
                return Ok(seen.swap_remove(0));
            }
            if !seen.is_empty() {
                last = format!("{seen:?}");
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NoConvergence(within, last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            let _ = self.resume(id);
            if let Some(child) = self.children.get_mut(&id) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
