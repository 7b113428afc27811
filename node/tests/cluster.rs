//! Multi-process tests: real `gavel-node` processes on loopback, talking real gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledger::pb::{self as lp, command::Body, outcome::Result as Res};
use node::{Client, pb};
use tempfile::TempDir;
use tokio_stream::StreamExt;

/// A free loopback port below the kernel's ephemeral range (32768 and up), so no outgoing
/// connection of a test running alongside can take it between this pick and the bind.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + std::process::id() * 97;
        let port = 10_000 + (n % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Cluster {
    dir: TempDir,
    addrs: BTreeMap<u64, String>,
    children: BTreeMap<u64, Child>,
    members: String,
    /// `--snapshot-logs` of every node.
    snapshot_logs: u64,
    /// More flags for every node.
    extra_args: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes snapshotting every 40 entries; the lowest id initialises the cluster.
    fn start(n: u64) -> Cluster {
        Cluster::start_with_snapshot_logs(n, 40)
    }

    fn start_with_snapshot_logs(n: u64, snapshot_logs: u64) -> Cluster {
        Cluster::start_with_args(n, snapshot_logs, &[])
    }

    fn start_with_args(n: u64, snapshot_logs: u64, extra_args: &[&str]) -> Cluster {
        let addrs: BTreeMap<u64, String> = (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let members = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        let dir = tempfile::tempdir().unwrap();
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let mut cluster = Cluster { dir, addrs, children: BTreeMap::new(), members, snapshot_logs, extra_args };
        for id in 1..=n {
            cluster.spawn(id, true);
        }
        cluster
    }

    fn spawn(&mut self, id: u64, with_members: bool) {
        let addr = self.addrs[&id].clone();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gavel-node"));
        cmd.args(["--id", &id.to_string(), "--listen", &addr])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{id}")))
            .args(["--snapshot-logs", &self.snapshot_logs.to_string(), "--logs-kept-after-snapshot", "5"])
            .args(&self.extra_args)
            // Leaders snapshot on schedule too, so the tests' short runs see purges and installs,
            // unless a test asks otherwise.
            .args(if self.extra_args.iter().any(|a| a.starts_with("--leader-snapshot-defer")) {
                &[][..]
            } else {
                &["--leader-snapshot-defer", "1"][..]
            })
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if with_members {
            cmd.args(["--members", &self.members]);
        }
        self.children.insert(id, cmd.spawn().expect("spawn gavel-node"));
    }

    /// kill -9.
    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn client(&self) -> Client {
        Client::new(self.addrs.values().cloned().collect()).with_deadline(Duration::from_secs(20))
    }

    async fn leader(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for id in among {
                if let Ok(m) = Client::metrics(&self.addrs[id]).await
                    && m.state == "Leader"
                    && m.leader_id == Some(*id)
                {
                    return *id;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node in `ids` has applied at least `index`; returns their digests.
    async fn digests_at(&self, ids: &[u64], index: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut digests = Vec::new();
            for id in ids {
                match Client::metrics_with_digest(&self.addrs[id]).await {
                    Ok(m) if m.last_applied_index >= index => digests.push(m.state_digest),
                    _ => break,
                }
            }
            if digests.len() == ids.len() {
                return digests;
            }
            assert!(Instant::now() < deadline, "nodes {ids:?} did not reach index {index}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn cmd(actor: &str, body: Body) -> lp::Command {
    lp::Command { at_ms: 0, actor: actor.into(), body: Some(body), log_index: 0 }
}

fn user(id: &str, role: lp::Role) -> lp::Command {
    cmd(
        "",
        Body::CreateUser(lp::CreateUser {
            user_id: id.into(),
            username: id.into(),
            role: role as i32,
            password_hash: vec![],
        }),
    )
}

/// Users, and an open lot `lot` ending `secs` from now.
fn setup(lot: &str, secs: i64) -> Vec<lp::Command> {
    let mut cmds = vec![user("cur", lp::Role::Curator), user("sam", lp::Role::User)];
    cmds.extend((0..4).map(|i| user(&format!("b{i}"), lp::Role::User)));
    cmds.push(cmd(
        "cur",
        Body::CreateLot(lp::CreateLot {
            lot_id: lot.into(),
            title: "Test lot".into(),
            currency: "USD".into(),
            start_price: 10_000,
            starts_at_ms: now_ms() - 1_000,
            ends_at_ms: now_ms() + secs * 1_000,
            seller_id: "sam".into(),
            ..Default::default()
        }),
    ));
    for s in [
        lp::LotStatus::UnderReview,
        lp::LotStatus::Authenticated,
        lp::LotStatus::ReadyForAuction,
        lp::LotStatus::InAuction,
    ] {
        cmds.push(cmd("cur", Body::SetLotStatus(lp::SetLotStatus { lot_id: lot.into(), status: s as i32 })));
    }
    cmds
}

fn bid(bidder: &str, bid_id: &str, lot: &str, max: i64) -> lp::Command {
    cmd(bidder, Body::PlaceBid(lp::PlaceBid { lot_id: lot.into(), bid_id: bid_id.into(), max_amount: max }))
}

/// A lot by "cur" for "sam" with a long description: a large command.
fn large_lot(lot_id: String, description: &str) -> lp::Command {
    let lot = lp::CreateLot {
        lot_id,
        title: "Large lot".into(),
        description: description.into(),
        currency: "USD".into(),
        start_price: 10_000,
        starts_at_ms: now_ms(),
        ends_at_ms: now_ms() + 3_600_000,
        seller_id: "sam".into(),
        ..Default::default()
    };
    cmd("cur", Body::CreateLot(lot))
}

fn rejection(r: &pb::CommandResult) -> Option<&lp::Rejection> {
    match r.outcome.as_ref().and_then(|o| o.result.as_ref()) {
        Some(Res::Rejected(rej)) => Some(rej),
        _ => None,
    }
}

async fn feed(addr: &str, upto: u64) -> Vec<pb::FeedItem> {
    feed_after(addr, 0, upto).await
}

/// One node's feed items after `from`, up to `upto`.
async fn feed_after(addr: &str, from: u64, upto: u64) -> Vec<pb::FeedItem> {
    // A node that was just (re)started may not listen yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match Client::subscribe(addr, from).await {
            Ok(stream) => break stream,
            Err(e) => assert!(Instant::now() < deadline, "cannot subscribe to {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut items = Vec::new();
    while items.last().is_none_or(|i: &pb::FeedItem| i.index < upto) {
        let item =
            tokio::time::timeout(Duration::from_secs(20), stream.next()).await.expect("feed stalled").unwrap().unwrap();
        items.push(item);
    }
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_ledger_survives_leader_crash_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let all = [1, 2, 3];
    let leader = cluster.leader(&all).await;
    let client = cluster.client();

    // Writes through a follower are forwarded to the leader.
    let follower = *all.iter().find(|&&id| id != leader).unwrap();
    let via_follower = Client::new(vec![cluster.addrs[&follower].clone()]);
    let results = via_follower.propose(setup("lot-1", 600)).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()), "setup rejected: {results:?}");

    // Acknowledged bids, rising; a retry with the same id returns the first answer.
    let mut acked = Vec::new();
    for i in 0..30 {
        let r = client
            .propose(vec![bid(&format!("b{}", i % 4), &format!("x{i}"), "lot-1", 10_000 + i * 500)])
            .await
            .unwrap();
        if rejection(&r[0]).is_none() {
            acked.push(format!("x{i}"));
        }
    }
    assert!(acked.len() >= 20, "most bids accepted: {acked:?}");
    let first = client.propose(vec![bid("b1", "x1", "lot-1", 9_999_900)]).await.unwrap();
    let again = client.propose(vec![bid("b1", "x1", "lot-1", 10_500)]).await.unwrap();
    assert_eq!(first[0].outcome, again[0].outcome);

    // kill -9 the leader: a new leader serves writes, with every acknowledged bid present.
    cluster.kill(leader);
    let rest: Vec<u64> = all.iter().copied().filter(|&id| id != leader).collect();
    let new_leader = cluster.leader(&rest).await;
    assert_ne!(new_leader, leader);
    // Past a purge of the log (in steps of 256 entries), so the killed node cannot catch up
    // from the log alone.
    for i in 30..330 {
        let r = client
            .propose(vec![bid(&format!("b{}", i % 4), &format!("x{i}"), "lot-1", 10_000 + i * 500)])
            .await
            .unwrap();
        if rejection(&r[0]).is_none() {
            acked.push(format!("x{i}"));
        }
    }
    let lot = client.read_lot("lot-1", false, true).await.unwrap();
    let in_history: std::collections::BTreeSet<_> = lot.bids.iter().map(|b| b.bid_id.clone()).collect();
    for id in &acked {
        assert!(in_history.contains(id), "acknowledged bid {id} lost");
    }

    // The killed node restarts and catches up: from a snapshot, since the log it missed was
    // purged (snapshot every 40 entries, 5 kept).
    cluster.spawn(leader, false);
    let target = client.read_lot("lot-1", false, false).await.unwrap().applied_index;
    let digests = cluster.digests_at(&all, target).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "replica digests differ: {digests:?}");
    assert!(digests.iter().all(|d| d.len() == 64), "asked for, digests are BLAKE3 hex: {digests:?}");
    let m = Client::metrics(&cluster.addrs[&leader]).await.unwrap();
    assert_eq!(m.state_digest, "", "plain metrics skip the digest (it hashes the whole ledger)");
    assert!(m.snapshot_index > 0, "the restarted node should hold a snapshot: {m:?}");
    assert!(m.purged_index > 0 || m.feed_start > 0, "it caught up from the leader's snapshot: {m:?}");

    // The restarted node installed the leader's snapshot, which carries no feed (the store
    // tests show it), so it held only the items after it; it copies the older ones from a peer.
    // Then the committed-event feed from index 0 is identical and gap-free on every node.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::metrics(&cluster.addrs[&leader]).await.unwrap().feed_start > 0 {
        assert!(Instant::now() < deadline, "the restarted node's feed was never backfilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let feeds: Vec<Vec<pb::FeedItem>> =
        futures::future::join_all(all.iter().map(|id| feed(&cluster.addrs[id], target))).await;
    for items in &feeds {
        assert_eq!(items.first().map(|i| i.index), Some(1), "the feed starts at the first entry");
        assert!(items.windows(2).all(|w| w[1].index == w[0].index + 1), "the feed has a gap");
        assert_eq!(items, &feeds[0], "feeds differ between nodes");
    }
    let bids_in_feed = feeds[0]
        .iter()
        .flat_map(|i| &i.events)
        .filter(|e| matches!(&e.kind, Some(lp::event::Kind::BidRecorded(b)) if b.kind == lp::BidKind::Placed as i32))
        .count();
    assert!(bids_in_feed >= acked.len(), "every accepted bid is in the feed");

    // The feed resumes after a restart of the node serving it, without gaps or duplicates:
    // the node that backfilled its feed, whose lowered start is on disk.
    let serving = leader;
    cluster.kill(serving);
    cluster.spawn(serving, false);
    let resumed = feed(&cluster.addrs[&serving], target).await;
    assert_eq!(resumed, feeds[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_and_the_leader_closes_lots() {
    let mut cluster = Cluster::start(3);
    cluster.leader(&[1, 2, 3]).await;
    let client = cluster.client();
    let results = client.propose(setup("short", 2)).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()));
    let r = client.propose(vec![bid("b0", "w1", "short", 20_000)]).await.unwrap();
    assert!(rejection(&r[0]).is_none());

    // Add a fourth node as a learner, promote it, remove node 1.
    let addr4 = format!("127.0.0.1:{}", free_port());
    cluster.addrs.insert(4, addr4.clone());
    cluster.spawn(4, false);
    let m = client.add_learner(pb::Node { id: 4, addr: addr4 }).await.unwrap();
    assert!(m.learners.contains(&4));
    let m = client.change_membership(vec![2, 3, 4], false).await.unwrap();
    assert_eq!(m.voters, vec![2, 3, 4]);
    cluster.kill(1);
    cluster.leader(&[2, 3, 4]).await;

    // The leader's timer closes the lot once its end time passes; every replica agrees.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sold = loop {
        let lot = client.read_lot("short", false, false).await.unwrap();
        let status = lot.lot.as_ref().unwrap().status;
        if status != lp::LotStatus::InAuction as i32 {
            break lot;
        }
        assert!(Instant::now() < deadline, "lot never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let view = sold.lot.unwrap();
    assert_eq!(view.status, lp::LotStatus::SoldPendingPayment as i32);
    assert_eq!(view.leading_bidder, "b0");
    let digests = cluster.digests_at(&[2, 3, 4], sold.applied_index).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "replica digests differ: {digests:?}");
}

/// The ledger is in memory and persisted only as snapshot files: kill -9 every node while the
/// log runs past the last snapshot, and the restarted cluster still holds every acknowledged
/// bid, from the snapshots plus the re-applied log, with equal digests on all replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_node_between_snapshots_loses_no_acknowledged_bid() {
    let mut cluster = Cluster::start(3);
    let all = [1, 2, 3];
    cluster.leader(&all).await;
    let client = cluster.client();
    let results = client.propose(setup("lot-k", 600)).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()), "setup rejected: {results:?}");
    // One entry per command, 330 in all: past a snapshot (every 40) and a log purge (in steps
    // of 256). Every tenth adds an attribute, which is not idempotent: an entry applied twice
    // after the restart would show in the lot and the digest.
    let mut acked = Vec::new();
    for i in 0..330 {
        let command = if i % 10 == 0 {
            let attribute = lp::AttributeInput { key: format!("k{i}"), value: "v".into() };
            cmd("cur", Body::AddAttributes(lp::AddAttributes { lot_id: "lot-k".into(), attributes: vec![attribute] }))
        } else {
            bid(&format!("b{}", i % 4), &format!("k{i}"), "lot-k", 10_000 + i * 500)
        };
        let r = client.propose(vec![command]).await.unwrap();
        if rejection(&r[0]).is_none() && i % 10 != 0 {
            acked.push(format!("k{i}"));
        }
    }
    let read = pb::ReadLotRequest { lot_id: "lot-k".into(), stale: false, include_bids: true, include_content: true };
    let before = client.read_lot_with(read.clone()).await.unwrap();
    assert_eq!(before.content.as_ref().map(|c| c.attributes.len()), Some(33), "33 attributes added");
    let m = Client::metrics(&cluster.addrs[&1]).await.unwrap();
    assert!(m.snapshot_index > 0 && m.snapshot_index < before.applied_index, "the log runs past a snapshot: {m:?}");
    assert!(m.purged_index > 0, "the log below a snapshot was purged: {m:?}");

    for id in all {
        cluster.kill(id);
    }
    for id in all {
        cluster.spawn(id, false);
    }
    cluster.leader(&all).await;
    let after = client.read_lot_with(read).await.unwrap();
    assert_eq!(after.lot, before.lot, "the lot is as it was");
    assert_eq!(after.bids, before.bids, "the bid history is as it was");
    assert_eq!(after.content, before.content, "each attribute once");
    let in_history: std::collections::BTreeSet<_> = after.bids.iter().map(|b| b.bid_id.clone()).collect();
    for id in &acked {
        assert!(in_history.contains(id), "acknowledged bid {id} lost");
    }
    let digests = cluster.digests_at(&all, after.applied_index).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "replica digests differ: {digests:?}");
}

/// A power loss can take the newest `committed` marker (written unsynced: a lost one is
/// rediscovered from the quorum). Rolled back by hand on the leader while every node is down,
/// the old leader must not take up its old term on restart and serve linearizable reads from the
/// state it re-applied so far (openraft's leader restore does that: jepsen found it as prices
/// read lower after a power loss than answered before it). Every read sees every bid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_committed_marker_was_lost_serves_no_stale_read() {
    use node::store::{LogStore, open_db};
    use openraft::storage::{RaftLogReader, RaftLogStorage};

    let mut cluster = Cluster::start(3);
    let all = [1, 2, 3];
    cluster.leader(&all).await;
    let client = cluster.client();
    let results = client.propose(setup("lot-p", 600)).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()), "setup rejected: {results:?}");
    let read = pb::ReadLotRequest { lot_id: "lot-p".into(), stale: false, include_bids: true, include_content: false };
    let mut rolled_back_to = 0;
    for i in 0..20 {
        let r = client.propose(vec![bid(&format!("b{}", i % 4), &format!("p{i}"), "lot-p", 10_000 + i * 1_000)]).await;
        assert!(rejection(&r.unwrap()[0]).is_none(), "bid {i} rejected");
        if i == 1 {
            rolled_back_to = client.read_lot_with(read.clone()).await.unwrap().applied_index;
        }
    }
    let before = client.read_lot_with(read.clone()).await.unwrap();
    assert_eq!(before.bids.len(), 20);
    let leader = cluster.leader(&all).await;
    for id in all {
        cluster.kill(id);
    }
    {
        let db = open_db(&cluster.dir.path().join(format!("node-{leader}")), leader).unwrap();
        let mut log = LogStore::open(db, true).unwrap();
        let entry = log.try_get_log_entries(rolled_back_to..=rolled_back_to).await.unwrap().remove(0);
        log.save_committed(Some(entry.log_id)).await.unwrap();
    }
    // The old leader first, alone: it re-applies the log up to the marker. Reads sent to it now
    // wait for a quorum, which comes with the others.
    cluster.spawn(leader, false);
    let only_leader =
        std::sync::Arc::new(Client::new(vec![cluster.addrs[&leader].clone()]).with_deadline(Duration::from_secs(30)));
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let (client, read) = (only_leader.clone(), read.clone());
            tokio::spawn(async move { client.read_lot_with(read).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for id in all.into_iter().filter(|&id| id != leader) {
        cluster.spawn(id, false);
    }
    for read in reads {
        let after = read.await.unwrap().unwrap();
        assert_eq!(after.bids.len(), 20, "a read after the restart lost acknowledged bids");
        assert_eq!(after.lot, before.lot, "a read after the restart is older than one before it");
    }
}

/// The write path batches whole requests: a request's commands land in one log entry (so they
/// commit together), even one larger than a batch, while concurrent requests share entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lands_in_one_entry_and_concurrent_requests_share_them() {
    let cluster = Cluster::start(3);
    cluster.leader(&[1, 2, 3]).await;
    let client = cluster.client();
    let big: Vec<lp::Command> = (0..2_000).map(|i| user(&format!("big{i}"), lp::Role::User)).collect();
    let results = client.propose(big).await.unwrap();
    assert_eq!(results.len(), 2_000);
    assert!(results.iter().all(|r| rejection(r).is_none()));
    assert!(results.iter().all(|r| r.log_index == results[0].log_index), "2,000 commands, one entry");

    let client = &client;
    let requests = (0..16).map(|r| async move {
        let cmds = (0..100).map(|i| user(&format!("r{r}-{i}"), lp::Role::User)).collect();
        client.propose(cmds).await.unwrap()
    });
    let answers = futures::future::join_all(requests).await;
    let mut entries = std::collections::BTreeSet::new();
    for results in &answers {
        assert_eq!(results.len(), 100);
        assert!(results.iter().all(|r| r.log_index == results[0].log_index), "a request split across entries");
        entries.insert(results[0].log_index);
    }
    assert!(entries.len() < answers.len(), "concurrent requests share entries: {entries:?}");
}

/// Entries are bounded in bytes too: concurrent large requests share entries only up to
/// about 1 MiB of commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_requests_share_entries_up_to_the_byte_bound() {
    use prost::Message;
    let cluster = Cluster::start(3);
    cluster.leader(&[1, 2, 3]).await;
    let client = cluster.client();
    client.propose(vec![user("cur", lp::Role::Curator), user("sam", lp::Role::User)]).await.unwrap();
    // 32 requests of 10 lots with 15 KB descriptions: about 150 KB each, 4.8 MB in all.
    let requests: Vec<Vec<lp::Command>> =
        (0..32).map(|r| (0..10).map(|i| large_lot(format!("l-{r}-{i}"), &"d".repeat(15_000))).collect()).collect();
    let client = &client;
    let answers = futures::future::join_all(requests.iter().map(|cmds| async move {
        let bytes: usize = cmds.iter().map(Message::encoded_len).sum();
        (bytes, client.propose(cmds.clone()).await.unwrap())
    }))
    .await;
    let mut per_entry: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for (bytes, results) in &answers {
        assert!(results.iter().all(|r| rejection(r).is_none() && r.log_index == results[0].log_index));
        let entry = per_entry.entry(results[0].log_index).or_default();
        *entry = (entry.0 + 1, entry.1 + bytes);
    }
    for (index, (requests, bytes)) in &per_entry {
        assert!(*bytes <= 1024 * 1024, "entry {index} holds {requests} requests, {bytes} bytes");
    }
    assert!(per_entry.len() >= 5, "32 requests of 150 KB fill at least five entries: {per_entry:?}");
    assert!(per_entry.values().any(|(n, _)| *n > 1), "concurrent requests still share entries: {per_entry:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_gavel-node"))
            .args(["--id", id, "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run("1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let second = run("2").wait_with_output().unwrap();
    assert!(!second.status.success(), "status {:?}", second.status);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("belongs to node 1"), "clear error expected, got: {stderr} (status {:?})", second.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gavel_ctl_proposes_json_commands_and_reads_metrics() {
    let cluster = Cluster::start(1);
    cluster.leader(&[1]).await;
    let addr = cluster.addrs[&1].clone();
    let ctl = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_gavel-ctl"))
            .args(["--nodes", &addr])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let input = concat!(
        r#"{"cmd":"create_user","at":"2026-11-22T17:00:00Z","user_id":"ana","username":"ana"}"#,
        "\n",
        r#"{"cmd":"create_user","at":"2026-11-22T17:00:00Z","user_id":"ana2","username":"ana"}"#,
        "\n",
        "not json\n"
    );
    let out = ctl(&["propose"], input);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["user_id"], "ana");
    assert!(lines[0]["log_index"].as_u64().unwrap() > 0);
    assert_eq!(lines[1]["error"]["code"], "username_taken");
    assert_eq!(lines[2]["error"]["code"], "invalid_input");
    let metrics: serde_json::Value = serde_json::from_str(ctl(&["metrics"], "").trim()).unwrap();
    assert_eq!(metrics["state"], "Leader");
    assert_eq!(metrics["state_digest"].as_str().map(str::len), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_its_settings_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("node.env");
    std::fs::write(
        &config,
        format!(
            "GAVEL_NODE_ID=5\nGAVEL_LISTEN={addr}\nGAVEL_DATA_DIR={}\nGAVEL_MEMBERS=5={addr}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel-node"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Ok(m) = Client::metrics(&addr).await
            && m.state == "Leader"
        {
            break m;
        }
        assert!(Instant::now() < deadline, "node from config file never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(metrics.node_id, 5);
    // A missing config file is a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_gavel-node"))
        .args(["--config", "/nonexistent/gavel.env"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

/// What the test's handler saw: applied items in order, parked ones with their reason.
#[derive(Default)]
struct Seen {
    checkpoint: u64,
    applied: Vec<u64>,
    parked: Vec<(u64, String)>,
    calls: u64,
}

/// A read model that refuses every item whose index is a multiple of 10 (for good) and fails
/// every fifth call transiently; all-or-nothing per batch, like a real store.
struct Picky(std::sync::Arc<std::sync::Mutex<Seen>>);

impl node::Handler for Picky {
    async fn checkpoint(&mut self) -> Result<u64, node::HandleError> {
        Ok(self.0.lock().unwrap().checkpoint)
    }

    async fn apply(&mut self, items: &[pb::FeedItem]) -> Result<(), node::HandleError> {
        let mut seen = self.0.lock().unwrap();
        seen.calls += 1;
        if let Some(bad) = items.iter().find(|i| i.index % 10 == 0) {
            return Err(node::HandleError::Permanent(format!("index {} is a multiple of 10", bad.index)));
        }
        if seen.calls.is_multiple_of(5) {
            return Err(node::HandleError::Transient("store busy".into()));
        }
        for item in items {
            assert!(item.index > seen.checkpoint, "item {} redelivered", item.index);
            seen.applied.push(item.index);
            seen.checkpoint = item.index;
        }
        Ok(())
    }

    async fn park(&mut self, item: &pb::FeedItem, error: &str) -> Result<(), node::HandleError> {
        let mut seen = self.0.lock().unwrap();
        seen.parked.push((item.index, error.to_owned()));
        seen.checkpoint = item.index;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_parks_refusals_retries_failures_and_survives_its_node_dying() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    // Node 1 first: the subscriber streams from it until it dies.
    let subscriber = node::Subscriber::new(cluster.addrs.values().cloned().collect(), Picky(seen.clone()));
    let mut progress = subscriber.progress();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(subscriber.run(stopped));
    for i in 0..40 {
        client.propose(vec![user(&format!("early{i}"), lp::Role::User)]).await.unwrap();
    }
    let halfway = progress.wait_for(|p| p.index >= 30).await.unwrap().index;
    assert!(halfway >= 30);
    cluster.kill(1);
    for i in 0..40 {
        client.propose(vec![user(&format!("late{i}"), lp::Role::User)]).await.unwrap();
    }
    let leader = cluster.leader(&[2, 3]).await;
    let head = Client::metrics(&cluster.addrs[&leader]).await.unwrap().last_applied_index;
    let done = tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.index >= head)).await;
    let last = *done.expect("the subscriber did not catch up after its node died").unwrap();
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    // Every index exactly once, in order: applied or parked.
    let mut all: Vec<u64> = seen.applied.clone();
    all.extend(seen.parked.iter().map(|(i, _)| *i));
    all.sort();
    assert_eq!(all, (1..=last.index).collect::<Vec<_>>());
    assert!(seen.applied.windows(2).all(|w| w[0] < w[1]));
    let parked: Vec<u64> = seen.parked.iter().map(|(i, _)| *i).collect();
    assert_eq!(parked, (1..=last.index).filter(|i| i % 10 == 0).collect::<Vec<_>>());
    assert!(seen.parked.iter().all(|(i, why)| why.contains(&format!("index {i}"))));
    assert_eq!(last.parked, parked.len() as u64);
    assert!(last.retries > 0, "no transient failure was retried");
    assert!(!last.broken);
}

/// A follower that missed more than one gRPC message's worth of entries (64 MB) still catches
/// up: each append is bounded in bytes, and openraft sends the rest after a partial success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_more_than_a_message_catches_up() {
    // Snapshots far apart: a node's first can come as early as a third of the interval in
    // (the replicas take turns), and the follower must get entries, not a snapshot.
    let mut cluster = Cluster::start_with_snapshot_logs(3, 400);
    let all = [1, 2, 3];
    let leader = cluster.leader(&all).await;
    let client = cluster.client();
    let results = client.propose(vec![user("cur", lp::Role::Curator), user("sam", lp::Role::User)]).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()), "{results:?}");
    let behind = all.into_iter().find(|id| *id != leader).unwrap();
    cluster.kill(behind);

    // 30 entries of about 2.6 MB each (170 lots with 15 KB descriptions): 78 MB of log, in
    // fewer entries than any node's first snapshot, so the follower gets it as entries.
    let description = "d".repeat(15_000);
    for e in 0..30 {
        let lots: Vec<lp::Command> = (0..170).map(|i| large_lot(format!("big-{e}-{i}"), &description)).collect();
        let results = client.propose(lots).await.unwrap();
        assert!(results.iter().all(|r| rejection(r).is_none()), "entry {e} rejected");
    }
    let m = Client::metrics(&cluster.addrs[&leader]).await.unwrap();
    assert_eq!(m.snapshot_index, 0, "no snapshot yet: the follower must get entries, not a snapshot");

    cluster.spawn(behind, false);
    let target = m.last_applied_index;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(f) = Client::metrics(&cluster.addrs[&behind]).await
            && f.last_applied_index >= target
        {
            break;
        }
        assert!(Instant::now() < deadline, "node {behind} never caught up to {target}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let digests = cluster.digests_at(&all, target).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "replica digests differ: {digests:?}");
}

/// A request too large to travel as one log entry is refused whole, with a clear error, and
/// the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_an_entry_can_be_is_refused_whole() {
    let cluster = Cluster::start(3);
    cluster.leader(&[1, 2, 3]).await;
    let client = cluster.client();
    client.propose(vec![user("cur", lp::Role::Curator), user("sam", lp::Role::User)]).await.unwrap();
    // 4,064 lots with 16 KB descriptions: 63.5 MiB, under the 64 MiB message limit but over
    // what fits in an entry with its AppendEntries header.
    let description = "d".repeat(16 * 1024);
    let lots: Vec<lp::Command> = (0..4_064).map(|i| large_lot(format!("huge-{i}"), &description)).collect();
    let err = client.propose(lots).await.unwrap_err().to_string();
    assert!(err.contains("fit in one log entry"), "{err}");
    let r = client.read_lot("huge-0", false, false).await;
    assert!(r.is_err() || r.is_ok_and(|r| r.lot.is_none()), "nothing of the request was applied");
    let ok = client.propose(vec![user("after", lp::Role::User)]).await.unwrap();
    assert!(rejection(&ok[0]).is_none(), "the cluster goes on");
}

/// One node's feed items `(from, upto]`, or the error that cut the read short.
async fn read_feed(addr: &str, from: u64, upto: u64) -> Result<Vec<pb::FeedItem>, String> {
    let mut stream = Client::subscribe(addr, from).await.map_err(|e| e.to_string())?;
    let mut items: Vec<pb::FeedItem> = Vec::new();
    while items.last().map_or(from, |i| i.index) < upto {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(item))) => items.push(item),
            Ok(Some(Err(status))) => return Err(status.to_string()),
            Ok(None) => return Err("the stream ended".into()),
            Err(_) => return Err("the feed stalled".into()),
        }
    }
    Ok(items)
}

/// Feed retention by age: every node drops the items older than its bound and publishes where
/// its feed now starts; a subscription from below that is refused with the start (never a
/// gap), the feed from the start on is whole and the same on every node, and the backfill does
/// not copy back what retention dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_feed_items_and_refuses_subscriptions_below_the_floor() {
    let cluster = Cluster::start_with_args(3, 10_000, &["--feed-retain-secs", "3"]);
    let all = [1, 2, 3];
    cluster.leader(&all).await;
    let client = cluster.client();
    let results = client.propose(setup("lot", 3_600)).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()), "{results:?}");
    for i in 0..20 {
        let r = client.propose(vec![bid(&format!("b{}", i % 4), &format!("old-{i}"), "lot", 20_000 + i * 1_000)]).await;
        assert!(rejection(&r.unwrap()[0]).is_none());
    }
    let old = Client::metrics(&cluster.addrs[&1]).await.unwrap().last_applied_index;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Whatever the nodes hold after this, a fresh bid keeps their feeds from being empty.
    async fn fresh(client: &Client, n: i64) -> u64 {
        let r = client.propose(vec![bid("b1", &format!("fresh-{n}"), "lot", 100_000 + n * 1_000)]).await.unwrap();
        assert!(rejection(&r[0]).is_none(), "{r:?}");
        r[0].log_index
    }
    fresh(&client, 0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut starts = BTreeMap::new();
    while starts.len() < all.len() {
        for id in all {
            let m = Client::metrics(&cluster.addrs[&id]).await.unwrap();
            if m.feed_start >= old {
                starts.insert(id, m.feed_start);
            }
        }
        assert!(Instant::now() < deadline, "retention did not drop the old items on every node: {starts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in all {
        let addr = &cluster.addrs[&id];
        let status = match Client::subscribe(addr, 0).await {
            Err(node::ClientError::Refused(status)) => status,
            other => panic!("node {id}: a subscription from 0 must be refused, got {:?}", other.map(|_| ())),
        };
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "node {id}: {status:?}");
        assert!(status.message().contains("history_gone"), "node {id}: {}", status.message());
        let floor: u64 = status.metadata().get("gavel-feed-start").unwrap().to_str().unwrap().parse().unwrap();
        assert!(floor >= old, "node {id} names its floor {floor}, the old items end at {old}");
    }
    // Every node refuses, so a follower from 0 learns that the history is gone, and where.
    let mut follower = node::Follower::new(cluster.addrs.values().cloned().collect(), 0);
    match tokio::time::timeout(Duration::from_secs(20), follower.next_batch(16)).await.unwrap() {
        Err(node::FollowError::HistoryGone { after: 0, start }) => assert!(start >= old),
        other => panic!("a follower from 0 must stop with HistoryGone, got {other:?}"),
    }

    // From its floor on, each node's feed is whole and the same as the others'. A fresh item
    // is young for 3 s: a read that a trim cuts short is simply started again.
    fresh(&client, 1).await;
    let upto = fresh(&client, 2).await;
    let mut tails = Vec::new();
    for id in all {
        let addr = &cluster.addrs[&id];
        let deadline = Instant::now() + Duration::from_secs(20);
        let (start, items) = loop {
            let start = Client::metrics(addr).await.unwrap().feed_start;
            if let Ok(items) = read_feed(addr, start, upto).await {
                break (start, items);
            }
            assert!(Instant::now() < deadline, "node {id}: no whole read of its feed from its start");
        };
        assert!(start < upto, "node {id} dropped a fresh item");
        let indices: Vec<u64> = items.iter().map(|i| i.index).collect();
        assert_eq!(indices, (start + 1..=upto).collect::<Vec<_>>(), "node {id}'s feed after its floor has a gap");
        tails.push(items);
    }
    let common = tails.iter().map(|t| t[0].index).max().unwrap();
    let from_common: Vec<&[pb::FeedItem]> =
        tails.iter().map(|t| &t[t.iter().position(|i| i.index == common).unwrap()..]).collect();
    assert!(from_common[0].len() >= 2, "the common run is {} items", from_common[0].len());
    assert!(from_common.windows(2).all(|w| w[0] == w[1]), "the nodes' feeds differ after their floors");

    // The backfill leaves a trimmed feed alone: no start moves down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in all {
        let m = Client::metrics(&cluster.addrs[&id]).await.unwrap();
        assert!(m.feed_start >= starts[&id], "node {id}'s start went down from {} to {}", starts[&id], m.feed_start);
    }
}

/// A read model of each lot's price: from the feed's `BidRecorded` events, or all at once from
/// a state export.
#[derive(Default)]
struct Prices {
    checkpoint: u64,
    prices: BTreeMap<String, i64>,
    /// The export's index, and the first item applied after it.
    bootstrapped: Option<u64>,
    first_after: Option<u64>,
}

struct PriceModel(std::sync::Arc<std::sync::Mutex<Prices>>);

impl node::Handler for PriceModel {
    async fn checkpoint(&mut self) -> Result<u64, node::HandleError> {
        Ok(self.0.lock().unwrap().checkpoint)
    }

    async fn apply(&mut self, items: &[pb::FeedItem]) -> Result<(), node::HandleError> {
        let mut model = self.0.lock().unwrap();
        for item in items {
            assert_eq!(item.index, model.checkpoint + 1, "a gap or a redelivery");
            if model.bootstrapped.is_some() && model.first_after.is_none() {
                model.first_after = Some(item.index);
            }
            for event in &item.events {
                if let Some(lp::event::Kind::BidRecorded(b)) = &event.kind {
                    model.prices.insert(b.lot_id.clone(), b.current_price);
                }
            }
            model.checkpoint = item.index;
        }
        Ok(())
    }

    async fn park(&mut self, item: &pb::FeedItem, _error: &str) -> Result<(), node::HandleError> {
        self.0.lock().unwrap().checkpoint = item.index;
        Ok(())
    }

    async fn bootstrap(&mut self, state: std::sync::Arc<node::StateExport>) -> Result<(), node::HandleError> {
        let mut model = self.0.lock().unwrap();
        model.prices = state
            .ledger
            .lots()
            .filter(|l| !l.history.is_empty())
            .map(|l| (l.lot_id.to_string(), l.book.price))
            .collect();
        model.checkpoint = state.index;
        model.bootstrapped = Some(state.index);
        Ok(())
    }

    fn can_bootstrap(&self) -> bool {
        true
    }
}

/// Below every node's retention floor, a subscriber that can start from a state does so and
/// goes on gap-free after the state's index, ending where a subscriber that never lost the
/// feed would; one that cannot stops with a clear error instead of skipping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_below_the_floor_starts_from_a_state_export_and_goes_on() {
    let cluster = Cluster::start_with_args(3, 10_000, &["--feed-retain-secs", "2"]);
    let all = [1, 2, 3];
    cluster.leader(&all).await;
    let client = cluster.client();
    let mut setup_cmds = setup("lot-a", 3_600);
    setup_cmds.extend(setup("lot-b", 3_600).into_iter().filter(|c| !matches!(c.body, Some(Body::CreateUser(_)))));
    let results = client.propose(setup_cmds).await.unwrap();
    assert!(results.iter().all(|r| rejection(r).is_none()), "{results:?}");
    let mut last = 0;
    for i in 0..10 {
        let r =
            client.propose(vec![bid(&format!("b{}", i % 4), &format!("old-{i}"), "lot-a", 20_000 + i * 1_000)]).await;
        last = r.unwrap()[0].log_index;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.propose(vec![bid("b1", "fresh-a", "lot-b", 30_000)]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in all {
        while Client::metrics(&cluster.addrs[&id]).await.unwrap().feed_start < last {
            assert!(Instant::now() < deadline, "node {id} did not drop the old items");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();

    // A model that cannot start from a state stops, saying why, and marks itself broken.
    let unable = node::Subscriber::new(addrs.clone(), Picky(Default::default()));
    let unable_progress = unable.progress();
    let (_keep, stopped) = tokio::sync::watch::channel(false);
    match tokio::time::timeout(Duration::from_secs(20), unable.run(stopped.clone())).await.unwrap() {
        Err(node::SubscribeError::Bootstrap { gone: node::FollowError::HistoryGone { after: 0, start }, .. }) => {
            assert!(start >= last)
        }
        Err(e) => panic!("expected the bootstrap refusal, got {e}"),
        Ok(_) => panic!("expected the bootstrap refusal, got a clean stop"),
    }
    assert!(unable_progress.borrow().broken);

    // One that can: bids keep coming while it starts.
    let model = std::sync::Arc::new(std::sync::Mutex::new(Prices::default()));
    let subscriber = node::Subscriber::new(addrs, PriceModel(model.clone()));
    let mut progress = subscriber.progress();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(subscriber.run(stopped));
    let started =
        tokio::time::timeout(Duration::from_secs(20), progress.wait_for(|p| p.bootstrapped_at.is_some())).await;
    let from = started.expect("no start from a state export").unwrap().bootstrapped_at.unwrap_or_default();
    let mut head = 0;
    for i in 0..20 {
        let lot = if i % 2 == 0 { "lot-a" } else { "lot-b" };
        let r = client.propose(vec![bid(&format!("b{}", i % 4), &format!("new-{i}"), lot, 200_000 + i * 10_000)]).await;
        head = r.unwrap()[0].log_index;
    }
    let done = tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.index >= head)).await;
    let at = *done.expect("the subscriber did not catch up").unwrap();
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    let (bootstrapped, first_after, prices) = {
        let model = model.lock().unwrap();
        (model.bootstrapped, model.first_after, model.prices.clone())
    };
    assert_eq!(bootstrapped, Some(from), "the handler was given the export once");
    assert!(from >= last, "the export at {from} is below the floor");
    assert_eq!(at.bootstrapped_at, Some(from));
    assert!(head > from, "bids after the start");
    assert_eq!(first_after, Some(from + 1), "the feed goes on right after the export");
    for lot in ["lot-a", "lot-b"] {
        let read = client.read_lot(lot, false, false).await.unwrap();
        assert_eq!(prices.get(lot).copied(), read.lot.map(|l| l.current_price), "{lot}'s price");
    }
}

/// A new cluster's leader turns exactly-once record expiry on at one log entry: every
/// replica's ledger has it, and their states agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_turns_record_expiry_on_at_one_entry() {
    let cluster = Cluster::start(3);
    let all = [1, 2, 3];
    cluster.leader(&all).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in all {
        loop {
            if let Ok(state) = Client::export_state(&cluster.addrs[&id]).await
                && state.ledger.record_expiry()
            {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} never turned record expiry on");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let head = Client::metrics(&cluster.addrs[&1]).await.unwrap().last_applied_index;
    let digests = cluster.digests_at(&all, head).await;
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

/// The leader, whose applies every answer waits for, defers its snapshot builds (a build
/// copies the ledger under the apply gate) until it is `--leader-snapshot-defer` intervals
/// behind, while the followers build on their schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_defers_its_snapshots_while_the_followers_build_on_schedule() {
    let defer = 4;
    let cluster = Cluster::start_with_args(3, 40, &["--leader-snapshot-defer", &defer.to_string()]);
    let all = [1, 2, 3];
    let leader = cluster.leader(&all).await;
    let client = cluster.client();
    let every = cluster.snapshot_logs;
    // One entry each (refused: no such lot). Up to a point below the leader's deferred build
    // (its grid is shifted by at most two thirds of a cell) and past every follower's first.
    let mut sent = 0;
    propose_until(&client, (defer - 1) * every, &mut sent).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in all.iter().copied().filter(|&id| id != leader) {
        while Client::metrics(&cluster.addrs[&id]).await.unwrap().snapshot_index == 0 {
            assert!(Instant::now() < deadline, "follower {id} never built a snapshot");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let m = Client::metrics(&cluster.addrs[&leader]).await.unwrap();
    assert_eq!(m.leader_id, Some(leader), "the leader did not change");
    assert_eq!(m.snapshot_index, 0, "the leader deferred its snapshot: {m:?}");
    // Far enough behind, it builds.
    propose_until(&client, (defer + 1) * every, &mut sent).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::metrics(&cluster.addrs[&leader]).await.unwrap().snapshot_index == 0 {
        assert!(Instant::now() < deadline, "the leader never built a snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Proposes one-command entries (refused: no such lot) until one lands at `target` or later.
async fn propose_until(client: &Client, target: u64, sent: &mut u64) {
    loop {
        let r = client.propose(vec![bid("ana", &format!("x{sent}"), "no-such-lot", 100)]).await.unwrap();
        *sent += 1;
        if r[0].log_index >= target {
            return;
        }
    }
}
