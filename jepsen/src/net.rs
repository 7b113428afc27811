//! Network partitions on loopback with nftables: every node listens on and sends from its own
//! 127.0.0.x address, so dropping packets by (source, destination) on input cuts one link.
//! Clients (the harness) use 127.0.0.1 and are never cut. Needs root and `nft`.

use std::process::Command;

use crate::cluster::node_ip;

#[derive(Debug, thiserror::Error)]
#[error("nft {args}: {message} (partition faults need root and nftables)")]
pub struct NetError {
    args: String,
    message: String,
}

fn nft(args: &[&str]) -> Result<(), NetError> {
    let shown = args.join(" ");
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| NetError { args: shown.clone(), message: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError { args: shown, message: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// This run's own nftables table (`inet gavel_jepsen_<pid>`); removed when dropped.
pub struct Net {
    table: String,
    prefix: String,
}

impl Net {
    /// Links between nodes of the loopback /24 `prefix` (see `cluster::run_prefix`).
    pub fn new(prefix: &str) -> Result<Net, NetError> {
        let table = format!("gavel_jepsen_{}", std::process::id());
        // A table left by a crashed run with this pid would keep links cut: start clean.
        let _ = nft(&["delete", "table", "inet", &table]);
        nft(&["add", "table", "inet", &table])?;
        nft(&["add", "chain", "inet", &table, "cuts", "{ type filter hook input priority 0 ; policy accept ; }"])?;
        Ok(Net { table, prefix: prefix.to_owned() })
    }

    /// Drops traffic both ways between every node of `a` and every node of `b`.
    pub fn cut(&self, a: &[u64], b: &[u64]) -> Result<(), NetError> {
        for x in a {
            for y in b {
                let (ip_x, ip_y) = (node_ip(&self.prefix, *x), node_ip(&self.prefix, *y));
                for (from, to) in [(&ip_x, &ip_y), (&ip_y, &ip_x)] {
                    nft(&["add", "rule", "inet", &self.table, "cuts", "ip", "saddr", from, "ip", "daddr", to, "drop"])?;
                }
            }
        }
        Ok(())
    }

    pub fn heal(&self) -> Result<(), NetError> {
        nft(&["flush", "chain", "inet", &self.table, "cuts"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = nft(&["delete", "table", "inet", &self.table]);
    }
}
