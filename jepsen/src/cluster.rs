//! Cluster control: real `gavel-node` processes on loopback ports, each with its own data
//! directory, that the nemesis can kill -9, restart, pause (SIGSTOP) and resume (SIGCONT).
//! Every process is killed when the `Cluster` is dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node::Client;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("replicas did not converge within {0:?}: {1}")]
    NoConvergence(Duration, String),
}

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub addrs: BTreeMap<u64, String>,
    /// The loopback /24 the nodes live in (`127.x.y`).
    pub prefix: String,
    members: String,
    children: BTreeMap<u64, Child>,
    paused: BTreeMap<u64, bool>,
    extra_args: Vec<String>,
}

/// Each node gets its own loopback address, `<prefix>.(10 + id)`, so that a link between two
/// nodes is an address pair the nemesis can cut (nodes send from their listen address).
pub fn node_ip(prefix: &str, id: u64) -> String {
    format!("{prefix}.{}", 10 + id)
}

/// A loopback /24 of this process's own (127.x.y), so concurrent runs never share addresses.
pub fn run_prefix() -> String {
    let pid = std::process::id();
    format!("127.{}.{}", 1 + (pid >> 8) % 250, 1 + pid % 250)
}

fn free_port(ip: &str) -> std::io::Result<u16> {
    Ok(TcpListener::bind(format!("{ip}:0"))?.local_addr()?.port())
}

impl Cluster {
    /// Starts `n` nodes from `bin` with data under `dir`.
    pub fn start(bin: &Path, dir: &Path, n: u64, extra_args: Vec<String>) -> Result<Cluster, ClusterError> {
        let prefix = run_prefix();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let ip = node_ip(&prefix, id);
            addrs.insert(id, format!("{ip}:{}", free_port(&ip)?));
        }
        let members = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        let mut cluster = Cluster {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            addrs,
            prefix,
            members,
            children: BTreeMap::new(),
            paused: BTreeMap::new(),
            extra_args,
        };
        for id in 1..=n {
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

    fn spawn(&mut self, id: u64) -> Result<(), ClusterError> {
        self.spawn_with(id, &[])
    }

    /// Restarts `id` (kill -9 if running) with `extra` flags on top of the usual ones.
    pub fn restart_with(&mut self, id: u64, extra: &[String]) -> Result<(), ClusterError> {
        self.kill(id)?;
        self.spawn_with(id, extra)
    }

    fn spawn_with(&mut self, id: u64, extra: &[String]) -> Result<(), ClusterError> {
        let addr = &self.addrs[&id];
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(&self.bin)
            .args(["--id", &id.to_string(), "--listen", addr, "--members", &self.members])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{id}")))
            .args(&self.extra_args)
            .args(extra)
            .env("RUST_LOG", "warn")
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
                match Client::metrics(addr).await {
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
