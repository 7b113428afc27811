//! The gateway's view of the cluster: one feed follower per process, which feeds the live
//! projection and the socket hub; the catalog's subscriber; and a poller that learns who
//! leads and how far it has applied, so `/readyz` and `/metrics` can say whether the feed and
//! the catalog are caught up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use catalog::{Catalog, Engine};
use node::{Client, FollowError, Follower, OnBlockingPool, Progress, StateExport, Subscriber};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::events::Projection;
use crate::hub::{Hub, HubLimits};
use crate::metrics::Metrics;

/// What the feed follower keeps current for sockets and the page.
pub struct Live {
    pub hub: Hub,
    pub projection: Mutex<Projection>,
}

impl Live {
    pub fn new(limits: HubLimits) -> Live {
        Live { hub: Hub::new(limits), projection: Mutex::new(Projection::default()) }
    }

    /// Runs `f` on the projection (a panic elsewhere leaves it usable: each apply is whole).
    pub fn with_projection<T>(&self, f: impl FnOnce(&mut Projection) -> T) -> T {
        let mut guard = self.projection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

/// How often the leader's progress is polled.
const POLL_MS: u64 = 500;
/// The feed counts as caught up within this many entries of the leader.
pub const READY_LAG_ENTRIES_MAX: u64 = 1_000;

/// What the background tasks know; read by `/readyz`.
#[derive(Default)]
pub struct ClusterView {
    leader_known: AtomicBool,
    leader_applied_index: AtomicU64,
    feed_index: AtomicU64,
    feed_broken: AtomicBool,
    catalog: Mutex<Option<watch::Receiver<Progress>>>,
    search: Mutex<Option<watch::Receiver<Progress>>>,
}

impl ClusterView {
    pub fn leader_known(&self) -> bool {
        self.leader_known.load(Ordering::Acquire)
    }

    pub fn feed_index(&self) -> u64 {
        self.feed_index.load(Ordering::Acquire)
    }

    pub fn feed_lag_entries(&self) -> u64 {
        self.leader_applied_index.load(Ordering::Acquire).saturating_sub(self.feed_index())
    }

    /// The catalog subscriber's progress (default until it has started).
    pub fn catalog(&self) -> Progress {
        let guard = self.catalog.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.as_ref().map(|rx| *rx.borrow()).unwrap_or_default()
    }

    /// The search indexer's progress (default until it has started, or with search off).
    pub fn search(&self) -> Progress {
        let guard = self.search.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.as_ref().map(|rx| *rx.borrow()).unwrap_or_default()
    }

    pub fn search_lag_entries(&self) -> u64 {
        self.leader_applied_index.load(Ordering::Acquire).saturating_sub(self.search().index)
    }

    pub fn catalog_lag_entries(&self) -> u64 {
        self.leader_applied_index.load(Ordering::Acquire).saturating_sub(self.catalog().index)
    }

    /// How old the newest entry the catalog has applied is, while it is behind (else 0).
    pub fn catalog_lag_seconds(&self, now_ms: i64) -> f64 {
        let progress = self.catalog();
        if self.catalog_lag_entries() == 0 || progress.at_ms == 0 {
            return 0.0;
        }
        (now_ms - progress.at_ms).max(0) as f64 / 1000.0
    }

    /// Why the gateway is not ready, if it is not.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.feed_broken.load(Ordering::Acquire) {
            return Some("the feed follower stopped on an inconsistent feed".into());
        }
        if self.catalog().broken {
            return Some("the catalog's subscriber stopped on an inconsistent feed".into());
        }
        if !self.leader_known() {
            return Some("no leader known".into());
        }
        let lag = self.feed_lag_entries();
        if lag > READY_LAG_ENTRIES_MAX {
            return Some(format!("feed is {lag} entries behind the leader"));
        }
        let lag = self.catalog_lag_entries();
        (lag > READY_LAG_ENTRIES_MAX).then(|| format!("catalog is {lag} entries behind the leader"))
    }
}

/// Starts the catalog's subscriber from the catalog's checkpoint; it stops when `stop`
/// turns true (join the handle to know the store is no longer written).
pub fn start_catalog(
    addrs: Vec<String>,
    catalog: Arc<Catalog<Engine>>,
    view: &ClusterView,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let subscriber = Subscriber::new(addrs, OnBlockingPool(catalog));
    *view.catalog.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(subscriber.progress());
    tokio::spawn(async move {
        if let Err(e) = subscriber.run(stop).await {
            error!(error = %e, "catalog subscriber stopped");
        }
    })
}

/// How often a read-only gateway reads the catalog store's checkpoint.
const CATALOG_FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// For a read-only gateway: follows the checkpoint of the store another gateway projects
/// into, so `min_index` waits, `/readyz` and the lag metrics see it move.
pub fn follow_catalog(
    catalog: Arc<Catalog<Engine>>,
    view: &ClusterView,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let (progress, rx) = watch::channel(Progress::default());
    *view.catalog.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(rx);
    tokio::spawn(async move {
        while !*stop.borrow() {
            let catalog = catalog.clone();
            match tokio::task::spawn_blocking(move || catalog.refresh()).await {
                Ok(Ok(index)) => progress.send_if_modified(|p| std::mem::replace(&mut p.index, index) != index),
                Ok(Err(e)) => {
                    warn!(error = %e, "catalog store: could not read its checkpoint");
                    progress.send_modify(|p| p.retries += 1);
                    true
                }
                Err(e) => {
                    error!(error = %e, "catalog store: the checkpoint read panicked");
                    true
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(CATALOG_FOLLOW_EVERY) => {}
                _ = stop.changed() => {}
            }
        }
    })
}

/// Starts search's indexer from its checkpoint; it stops when `stop` turns true.
pub fn start_search(
    addrs: Vec<String>,
    index: Arc<search::Index<search::Engine>>,
    view: &ClusterView,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let subscriber = Subscriber::new(addrs, OnBlockingPool(index)).batch_max(search::index::BATCH_ITEMS);
    *view.search.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(subscriber.progress());
    tokio::spawn(async move {
        if let Err(e) = subscriber.run(stop).await {
            error!(error = %e, "search indexer stopped");
        }
    })
}

/// Starts the follower and the poller; both stop when `stop` turns true.
pub fn start(
    addrs: Vec<String>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Arc<ClusterView> {
    let view = Arc::new(ClusterView::default());
    tokio::spawn(follow(addrs.clone(), live, view.clone(), metrics.clone(), stop.clone()));
    tokio::spawn(poll(addrs, view.clone(), metrics, stop));
    view
}

async fn follow(
    addrs: Vec<String>,
    live: Arc<Live>,
    view: Arc<ClusterView>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut follower = Follower::new(addrs.clone(), 0);
    // Starts from a state since the last item, and the pause before the next one.
    let (mut starts_in_a_row, mut starts_delay) = (0u32, Duration::from_millis(RESTART_DELAY_MIN_MS));
    loop {
        let item = tokio::select! {
            item = follower.next() => item,
            _ = stop.wait_for(|&s| s) => return,
        };
        match item {
            Err(FollowError::HistoryGone { after, start }) => {
                // The nodes dropped the items after this position (feed retention): go on from
                // the ledger as of a later index; sockets asking for older messages are told
                // they are gone, never sent a hole.
                warn!(after, start, "the feed after the fan-out's position is gone; starting from a state export");
                if starts_in_a_row > 0 {
                    if starts_in_a_row >= 3 {
                        error!(
                            starts_in_a_row,
                            "the feed is dropped faster than the fan-out can start from a state; raise the nodes' feed retention"
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(starts_delay) => {},
                        _ = stop.wait_for(|&s| s) => return,
                    }
                    starts_delay = (starts_delay * 2).min(Duration::from_millis(RESTART_DELAY_MAX_MS));
                }
                let Some(state) = export_from(&addrs, start, &mut stop).await else { return };
                // The hub first: a socket joining in between is refused, not served the old state.
                live.hub.restart_at(state.index);
                live.with_projection(|p| *p = Projection::from_state(&state.ledger, state.index));
                view.feed_index.store(state.index, Ordering::Release);
                metrics.feed_index.set(i64::try_from(state.index).unwrap_or(i64::MAX));
                info!(index = state.index, "the fan-out started from a state export");
                follower = Follower::new(addrs.clone(), state.index);
                starts_in_a_row += 1;
            }
            Ok(item) => {
                starts_in_a_row = 0;
                starts_delay = Duration::from_millis(RESTART_DELAY_MIN_MS);
                let messages = live.with_projection(|p| p.apply(&item));
                let sent = live.hub.publish(item.index, messages).await;
                metrics.ws_messages_sent.inc_by(sent);
                view.feed_index.store(item.index, Ordering::Release);
                metrics.feed_index.set(i64::try_from(item.index).unwrap_or(i64::MAX));
            }
            Err(e) => {
                // Never skip past an inconsistency: report it and stay not-ready.
                error!(error = %e, "feed follower stopped");
                view.feed_broken.store(true, Ordering::Release);
                return;
            }
        }
    }
}

/// Bounds of the pause between two starts from a state with no item between them, and
/// between failed export attempts.
const RESTART_DELAY_MIN_MS: u64 = 100;
const RESTART_DELAY_MAX_MS: u64 = 5_000;

/// A state export at or above `floor` from the first node that gives one, retried with
/// backoff until one does; `None` once `stop` turns true.
async fn export_from(addrs: &[String], floor: u64, stop: &mut watch::Receiver<bool>) -> Option<StateExport> {
    let mut delay = Duration::from_millis(RESTART_DELAY_MIN_MS);
    loop {
        tokio::select! {
            export = Client::export_state_from_any(addrs, floor) => if export.is_some() { return export },
            _ = stop.wait_for(|&s| s) => return None,
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = stop.wait_for(|&s| s) => return None,
        }
        delay = (delay * 2).min(Duration::from_millis(RESTART_DELAY_MAX_MS));
    }
}

async fn poll(addrs: Vec<String>, view: Arc<ClusterView>, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut had_leader = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stop.wait_for(|&s| s) => return,
        }
        let mut leader = None;
        for addr in &addrs {
            let Ok(m) = Client::metrics(addr).await else { continue };
            if m.state == "Leader" {
                leader = Some(m.last_applied_index);
                break;
            }
        }
        view.leader_known.store(leader.is_some(), Ordering::Release);
        if let Some(applied) = leader {
            view.leader_applied_index.store(applied, Ordering::Release);
            metrics.leader_applied_index.set(i64::try_from(applied).unwrap_or(i64::MAX));
        }
        metrics.feed_lag_entries.set(i64::try_from(view.feed_lag_entries()).unwrap_or(i64::MAX));
        let catalog = view.catalog();
        metrics.catalog_index.set(i64::try_from(catalog.index).unwrap_or(i64::MAX));
        metrics.catalog_lag_entries.set(i64::try_from(view.catalog_lag_entries()).unwrap_or(i64::MAX));
        metrics.catalog_lag_seconds.set(view.catalog_lag_seconds(now_ms()));
        metrics.catalog_dead_letters_parked.set(i64::try_from(catalog.parked).unwrap_or(i64::MAX));
        metrics.catalog_retries.set(i64::try_from(catalog.retries).unwrap_or(i64::MAX));
        let search = view.search();
        metrics.search_index.set(i64::try_from(search.index).unwrap_or(i64::MAX));
        metrics.search_lag_entries.set(i64::try_from(view.search_lag_entries()).unwrap_or(i64::MAX));
        metrics.search_dead_letters_parked.set(i64::try_from(search.parked).unwrap_or(i64::MAX));
        if leader.is_some() != had_leader {
            info!(leader_known = leader.is_some(), "cluster leadership seen");
            had_leader = leader.is_some();
        }
    }
}

/// Wall-clock Unix milliseconds (lag is measured against the leader's stamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
