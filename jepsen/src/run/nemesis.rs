//! The nemesis: faults injected at random times while the clients run, each healed before
//! the next, and logged (`nemesis.jsonl`, and the timeline's red bands).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use node::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::error::RunError;
use crate::cluster::Cluster;

/// Faults the nemesis may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillRandom,
    KillLeader,
    /// kill -9 a majority at once (writes stop until they are back).
    KillMajority,
    Pause,
    /// Under load, either demote a voter to learner or remove it from the cluster; then add it
    /// back as a learner (if removed) and promote it to voter.
    Membership,
    /// Cut the leader off from every other node.
    PartitionLeader,
    /// Split the nodes into a random minority and majority.
    PartitionHalves,
    /// Two sides that cannot talk, joined by one node that reaches both.
    PartitionBridge,
    /// Restart a node with its clock (the time it stamps entries with when leading) shifted by
    /// up to ±8 s, then restart it with a true clock.
    ClockSkew,
    /// Each node reaches only its two ring neighbours (every node still sees a majority when
    /// there are 5: the "majorities ring"). With 3 nodes nothing is cut.
    PartitionRing,
    /// The power goes out on every node, or on a random majority, at once: each is killed
    /// and loses every write it did not fsync (the cluster runs on [`crate::powerfs`] disks).
    PowerLoss,
}

impl Fault {
    const PARTITIONS: [Fault; 4] =
        [Fault::PartitionLeader, Fault::PartitionHalves, Fault::PartitionBridge, Fault::PartitionRing];
    const ALL: [Fault; 11] = [
        Fault::KillRandom,
        Fault::KillLeader,
        Fault::KillMajority,
        Fault::Pause,
        Fault::Membership,
        Fault::PartitionLeader,
        Fault::PartitionHalves,
        Fault::PartitionBridge,
        Fault::PartitionRing,
        Fault::ClockSkew,
        Fault::PowerLoss,
    ];

    fn is_partition(self) -> bool {
        Fault::PARTITIONS.contains(&self)
    }

    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        s.split(',')
            .flat_map(|name| match name.trim() {
                "all" => Fault::ALL.map(Ok).to_vec(),
                "partition" => Fault::PARTITIONS.map(Ok).to_vec(),
                "clock" => vec![Ok(Fault::ClockSkew)],
                "membership" => vec![Ok(Fault::Membership)],
                "partition-ring" => vec![Ok(Fault::PartitionRing)],
                "partition-leader" => vec![Ok(Fault::PartitionLeader)],
                "partition-halves" => vec![Ok(Fault::PartitionHalves)],
                "partition-bridge" => vec![Ok(Fault::PartitionBridge)],
                "kill" => vec![Ok(Fault::KillRandom)],
                "kill-leader" => vec![Ok(Fault::KillLeader)],
                "kill-majority" => vec![Ok(Fault::KillMajority)],
                "pause" => vec![Ok(Fault::Pause)],
                "power-loss" => vec![Ok(Fault::PowerLoss)],
                "none" | "" => vec![],
                other => vec![Err(format!(
                    "unknown nemesis {other:?} (all, kill, kill-leader, kill-majority, power-loss, pause, \
                     membership, partition, partition-leader, partition-halves, partition-bridge, \
                     partition-ring, clock, none)"
                ))],
            })
            .collect()
    }
}

/// Injects faults at random times until the deadline, healing each before the next.
pub(crate) async fn nemesis(
    cluster: &mut Cluster,
    faults: &[Fault],
    seed: u64,
    deadline: Instant,
    dir: &Path,
) -> Result<Vec<serde_json::Value>, RunError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    let mut file = std::fs::File::create(dir.join("nemesis.jsonl"))?;
    let started = Instant::now();
    while !faults.is_empty() && Instant::now() + Duration::from_secs(3) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_000))).await;
        let fault = faults[rng.gen_range(0..faults.len())];
        let ids = cluster.ids();
        let target = match fault {
            Fault::KillLeader | Fault::PartitionLeader => cluster.leader(Duration::from_secs(5)).await.ok(),
            _ => Some(ids[rng.gen_range(0..ids.len())]),
        };
        let Some(target) = target else { continue };
        let hold = Duration::from_millis(rng.gen_range(500..2_500));
        let start = started.elapsed().as_millis() as u64;
        let admin = Client::new(cluster.addrs.values().cloned().collect()).with_deadline(Duration::from_secs(10));
        let voters_without: Vec<u64> = ids.iter().copied().filter(|&id| id != target).collect();
        let mut sides = serde_json::Value::Null;
        let mut removed = false;
        match fault {
            Fault::KillRandom | Fault::KillLeader => cluster.kill(target)?,
            Fault::KillMajority => {
                let mut victims = ids.clone();
                victims.shuffle(&mut rng);
                victims.truncate(ids.len() / 2 + 1);
                for id in &victims {
                    cluster.kill(*id)?;
                }
                sides = json!(victims);
            }
            Fault::PowerLoss => {
                let mut victims = ids.clone();
                victims.shuffle(&mut rng);
                if rng.gen_bool(0.5) {
                    victims.truncate(ids.len() / 2 + 1);
                }
                let lost = cluster.power_loss(&victims)?;
                sides = json!({"nodes": victims, "lost": lost});
            }
            Fault::Pause => cluster.pause(target)?,
            // A failed change is logged, not fatal (it happens under faults).
            Fault::Membership if ids.len() > 1 => {
                removed = rng.gen_bool(0.5);
                sides = json!({"change": if removed { "remove" } else { "demote" }});
                if let Err(e) = admin.change_membership(voters_without, !removed).await {
                    writeln!(file, "{}", json!({"fault": "Membership", "node": target, "error": e.to_string()}))?;
                }
            }
            Fault::Membership => {}
            Fault::ClockSkew => {
                let offset_ms = rng.gen_range(1_000..8_000) * if rng.gen_bool(0.5) { 1 } else { -1 };
                cluster.restart_with(target, &["--clock-offset-ms".into(), offset_ms.to_string()])?;
                sides = json!({"clock_offset_ms": offset_ms});
            }
            Fault::PartitionRing => {
                let cuts = ring_cuts(&ids);
                for (x, y) in &cuts {
                    cluster.net.cut(&[*x], &[*y])?;
                }
                sides = json!(cuts);
            }
            Fault::PartitionLeader | Fault::PartitionHalves | Fault::PartitionBridge => {
                let (a, b) = partition_sides(fault, target, &ids, &mut rng);
                cluster.net.cut(&a, &b)?;
                sides = json!([a, b]);
            }
        }
        tokio::time::sleep(hold).await;
        if fault.is_partition() {
            cluster.net.heal()?;
        }
        if fault == Fault::ClockSkew {
            cluster.restart_with(target, &[])?;
        }
        cluster.heal()?;
        if fault == Fault::Membership {
            // A removed node comes back as a learner first, then every node is a voter again.
            let learner = node::pb::Node { id: target, addr: cluster.addrs[&target].clone() };
            let back = if removed { admin.add_learner(learner).await.map(|_| ()) } else { Ok(()) };
            if let Err(e) = back.and(admin.change_membership(ids.clone(), false).await.map(|_| ())) {
                writeln!(file, "{}", json!({"fault": "Membership", "node": target, "heal_error": e.to_string()}))?;
            }
        }
        let entry = json!({"fault": format!("{fault:?}"), "node": target, "sides": sides, "start_ms": start, "end_ms": started.elapsed().as_millis() as u64});
        writeln!(file, "{entry}")?;
        log.push(entry);
    }
    Ok(log)
}

/// The node pairs a ring partition cuts: all but ring neighbours.
fn ring_cuts(ids: &[u64]) -> Vec<(u64, u64)> {
    let n = ids.len();
    let mut cuts = Vec::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let distance = j - i;
            if distance != 1 && distance != n - 1 {
                cuts.push((ids[i], ids[j]));
            }
        }
    }
    cuts
}

/// The two sides of a partition; `target` is the isolated leader, the minority's first node,
/// or the bridge (which belongs to neither side and reaches both).
fn partition_sides(fault: Fault, target: u64, ids: &[u64], rng: &mut StdRng) -> (Vec<u64>, Vec<u64>) {
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != target).collect();
    match fault {
        Fault::PartitionHalves => {
            let mut shuffled = others;
            shuffled.shuffle(rng);
            let minority_extra = (ids.len().saturating_sub(1) / 2).saturating_sub(1);
            let mut minority = vec![target];
            minority.extend(shuffled.drain(..minority_extra.min(shuffled.len())));
            (minority, shuffled)
        }
        Fault::PartitionBridge => {
            let half = others.len() / 2;
            (others[..half].to_vec(), others[half..].to_vec())
        }
        _ => (vec![target], others),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_cuts_all_but_neighbours() {
        assert!(ring_cuts(&[1, 2, 3]).is_empty());
        assert_eq!(ring_cuts(&[1, 2, 3, 4, 5]), vec![(1, 3), (1, 4), (2, 4), (2, 5), (3, 5)]);
    }

    #[test]
    fn partitions_leave_a_majority_and_a_minority() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, b) = partition_sides(Fault::PartitionHalves, 3, &[1, 2, 3, 4, 5], &mut rng);
        assert_eq!((a.len(), b.len()), (2, 3));
        assert!(a.contains(&3));
        let (a, b) = partition_sides(Fault::PartitionLeader, 2, &[1, 2, 3], &mut rng);
        assert_eq!((a, b), (vec![2], vec![1, 3]));
        let (a, b) = partition_sides(Fault::PartitionBridge, 2, &[1, 2, 3], &mut rng);
        assert_eq!((a, b), (vec![1], vec![3]), "node 2 bridges the two sides");
    }
}
