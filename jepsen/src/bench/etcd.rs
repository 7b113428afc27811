//! A 3-member etcd cluster on loopback, started from Debian's `etcd-server` (`/usr/bin/etcd`)
//! with its shipped defaults (fsync on every commit), each member with its own data directory.
//! Every process is killed when the `EtcdCluster` is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot start {bin}: {source} (install Debian's etcd-server: scripts/setup does)")]
    Spawn { bin: String, source: std::io::Error },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    /// Member name -> (client URL, peer URL).
    members: BTreeMap<String, (String, String)>,
    children: BTreeMap<String, Child>,
}

impl EtcdCluster {
    pub fn start(bin: &Path, dir: &Path, n: usize) -> Result<EtcdCluster, EtcdError> {
        let mut members = BTreeMap::new();
        for i in 1..=n {
            let client = format!("http://{}", crate::net::free_loopback_addr()?);
            let peer = format!("http://{}", crate::net::free_loopback_addr()?);
            members.insert(format!("e{i}"), (client, peer));
        }
        let mut cluster = EtcdCluster { bin: bin.to_owned(), dir: dir.to_owned(), members, children: BTreeMap::new() };
        for name in cluster.names() {
            cluster.spawn(&name, "new")?;
        }
        Ok(cluster)
    }

    pub fn names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.values().map(|(client, _)| client.clone()).collect()
    }

    /// The member whose client URL is `url`.
    pub fn name_of(&self, url: &str) -> Option<String> {
        self.members.iter().find(|(_, (client, _))| client == url).map(|(name, _)| name.clone())
    }

    fn spawn(&mut self, name: &str, state: &str) -> Result<(), EtcdError> {
        let initial = self.members.iter().map(|(n, (_, peer))| format!("{n}={peer}")).collect::<Vec<_>>().join(",");
        let (client, peer) = &self.members[name];
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(&self.bin)
            .args(["--name", name])
            .arg("--data-dir")
            .arg(self.dir.join(name))
            .args(["--listen-client-urls", client, "--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &initial, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "gavel-bench", "--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| EtcdError::Spawn { bin: self.bin.display().to_string(), source })?;
        self.children.insert(name.to_owned(), child);
        Ok(())
    }

    /// kill -9 (a member that lost quorum takes seconds to stop on SIGTERM).
    pub fn kill(&mut self, name: &str) -> Result<(), EtcdError> {
        if let Some(mut child) = self.children.remove(name) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Restarts a killed member from its data directory.
    pub fn restart(&mut self, name: &str) -> Result<(), EtcdError> {
        if !self.children.contains_key(name) {
            self.spawn(name, "existing")?;
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
