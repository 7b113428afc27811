//! The fan-out hub: one feed follower per gateway publishes here, every socket subscribes here.
//!
//! Each socket has one bounded outbox. Publishing writes a message straight to every
//! subscribed socket whose write half is idle: nothing queued ahead of it, its session not
//! writing, the kernel taking the bytes at once. That is nearly every socket, and it spares a
//! queue hand-off and a task wake-up per socket per event. Any other socket gets the message
//! in its queue, and its session sends it. Once a socket has anything queued, everything after
//! it queues too, so a socket receives its topics' messages in log order. A queue that is full
//! means its socket fell behind: it is marked lagging and gets nothing more (a later message
//! after a dropped one would be a silent gap), and the socket tells its client to resume from
//! the last index it was sent. Publishing splits the subscribers of a message across the
//! runtime's workers and finishes one message before the next.
//!
//! Each topic keeps a bounded history for `since` replays. Joining takes the replay and
//! registers the outbox under the lock publishing holds, and the socket then wants live
//! only what is newer than the index it joined at (a publish may still be working through
//! an older subscriber list), so the seam between replayed and live messages has no gap and
//! no duplicate. History is evicted oldest-first across all
//! topics; a topic remembers the newest index it dropped, and a `since` below that is refused
//! (`history_gone`), never answered with a hole.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::{FutureExt, Sink};
use serde_json::json;
use tokio::sync::mpsc;

use crate::events::Message;

/// One framed message, shared by every socket that sends it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub index: u64,
    /// The hub key of its topic.
    pub key: Arc<str>,
    pub text: Utf8Bytes,
}

/// Bounds of the hub.
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    /// Messages kept for replay, across all topics.
    pub history_max: usize,
    /// Messages a socket may have queued before it counts as lagging.
    pub outbox_max: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits { history_max: 200_000, outbox_max: 1_024 }
    }
}

/// Subscribers a part of one message's delivery is given at least.
const PART_MIN: usize = 512;
/// Sockets written between yields: each write is a system call, and the worker has other
/// tasks.
const YIELD_EVERY: usize = 64;

/// Offers `frame` to each of `targets`; returns how many took it at once. A panic (a bug)
/// marks every target lagging: none of them may get a later frame after a possible gap.
async fn offer_part(frame: &Frame, targets: &[Arc<Outbox>]) -> u64 {
    // Unconstrained: tokio's per-task budget would make a socket write answer "not ready"
    // after a hundred or so, sending every later socket down the slow path for nothing. The
    // loop yields by itself.
    let offered = tokio::task::unconstrained(AssertUnwindSafe(offer_all(frame, targets)).catch_unwind()).await;
    offered.unwrap_or_else(|_| {
        for outbox in targets {
            outbox.lagging.store(true, Ordering::Release);
        }
        0
    })
}

async fn offer_all(frame: &Frame, targets: &[Arc<Outbox>]) -> u64 {
    let mut sent = 0;
    for (i, outbox) in targets.iter().enumerate() {
        if outbox.offer(frame) == Offer::Sent {
            sent += 1;
        }
        if i % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
    }
    sent
}

/// A `since` the hub can no longer answer without a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("history up to index {floor} is gone")]
pub struct HistoryGone {
    pub floor: u64,
}

/// A socket's write half.
pub type Writer = SplitSink<WebSocket, WsMessage>;

/// What publishing and a socket's session share, under the outbox's lock (never held across
/// an await).
#[derive(Default)]
pub struct Line {
    /// The write half, while the session is not writing with it.
    pub writer: Option<Writer>,
    /// Frames in the queue not sent yet: while there are any, new ones queue behind them.
    pub queued: usize,
    /// A frame was accepted but the kernel has not taken all of it: the session finishes it
    /// (woken by `attention`), and frames queue until then.
    pub unflushed: bool,
    /// Topic keys held, each with the index its live frames must exceed: a client's `since`
    /// may be ahead of a gateway still catching up after a restart, and those it has.
    pub keys: BTreeMap<String, u64>,
    /// The highest index sent: where the client resumes (`since`) after a lagging close.
    pub last_index: u64,
}

impl Line {
    /// Whether `frame` is for a topic held, and new to the client.
    pub fn wants(&self, frame: &Frame) -> bool {
        self.keys.get(frame.key.as_ref()).is_some_and(|&after| frame.index > after)
    }
}

/// A socket's side of the hub: its line, its queue of frames and whether it fell behind.
pub struct Outbox {
    id: u64,
    tx: mpsc::Sender<Frame>,
    lagging: AtomicBool,
    line: Mutex<Line>,
    /// Wakes the session to finish an unflushed frame.
    pub attention: tokio::sync::Notify,
}

/// What became of a frame offered to one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    Sent,
    Queued,
    Skipped,
}

impl Outbox {
    /// True once a message could not be queued: nothing after it will be.
    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    pub fn line(&self) -> MutexGuard<'_, Line> {
        // Every step under this lock is an assignment or a non-blocking poll: a panic leaves
        // the line usable.
        self.line.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `frame` now if the socket's write half is idle, else queues it behind the rest.
    fn offer(&self, frame: &Frame) -> Offer {
        if self.is_lagging() {
            return Offer::Skipped;
        }
        let mut line = self.line();
        if line.queued == 0 && !line.unflushed && line.writer.is_some() {
            if !line.wants(frame) {
                return Offer::Skipped;
            }
            let Line { writer: Some(writer), .. } = &mut *line else { return Offer::Skipped };
            // A waker that does nothing: whatever would wait goes to the queue instead, and
            // the session waits for it with its own.
            let mut cx = Context::from_waker(Waker::noop());
            match Pin::new(&mut *writer).poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    // The sink only stores the frame here; the write happens in the flush.
                    let stored = Pin::new(&mut *writer).start_send(WsMessage::Text(frame.text.clone()));
                    match (stored, Pin::new(&mut *writer).poll_flush(&mut cx)) {
                        (Ok(()), Poll::Ready(Ok(()))) => {
                            line.last_index = line.last_index.max(frame.index);
                            return Offer::Sent;
                        }
                        (Ok(()), Poll::Pending) => {
                            // Accepted, and written out ahead of anything sent after it.
                            line.last_index = line.last_index.max(frame.index);
                            line.unflushed = true;
                            self.attention.notify_one();
                            return Offer::Sent;
                        }
                        _ => {
                            // Broken or closing: not sent. The session's flush meets the same
                            // error and ends the socket; until then frames queue.
                            line.unflushed = true;
                            self.attention.notify_one();
                            return Offer::Skipped;
                        }
                    }
                }
                Poll::Ready(Err(_)) => return Offer::Skipped,
                Poll::Pending => {}
            }
        }
        if self.tx.try_send(frame.clone()).is_ok() {
            line.queued += 1;
            Offer::Queued
        } else {
            // Full (or the socket is gone): drop it from everything after this point.
            self.lagging.store(true, Ordering::Release);
            Offer::Skipped
        }
    }
}

struct TopicState {
    history: VecDeque<Frame>,
    /// The newest index evicted from `history` (0: nothing evicted). A topic that ever
    /// lost history is kept for good (a few bytes per lot or user).
    dropped_upto: u64,
    subscribers: HashMap<u64, Arc<Outbox>>,
}

impl TopicState {
    fn new() -> TopicState {
        TopicState { history: VecDeque::new(), dropped_upto: 0, subscribers: HashMap::new() }
    }
}

struct Inner {
    topics: HashMap<String, TopicState>,
    /// Every history entry's topic, oldest first: the global eviction order.
    order: VecDeque<String>,
    /// The last index published.
    index: u64,
    /// Nothing at or below this index will be published (the hub started again from a
    /// state, `restart_at`): a `since` below it is answered `HistoryGone`.
    floor: u64,
}

pub struct Hub {
    limits: HubLimits,
    /// Parts a message's subscribers are split into: the runtime's workers.
    parts_max: usize,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

impl Hub {
    pub fn new(limits: HubLimits) -> Hub {
        Hub {
            limits,
            parts_max: std::thread::available_parallelism().map_or(1, |n| n.get()),
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner { topics: HashMap::new(), order: VecDeque::new(), index: 0, floor: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every step under the lock is a push, pop or insert: a panic leaves the data usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last index published.
    pub fn index(&self) -> u64 {
        self.lock().index
    }

    /// Goes on from feed index `index` without the entries before it (the fan-out started
    /// again from a state export): every topic's history is dropped, a socket asking for
    /// messages after an earlier index learns they are gone, and every socket subscribed now
    /// is told it fell behind (it resumes, and hears `history_gone`) rather than miss them.
    pub fn restart_at(&self, index: u64) {
        let mut inner = self.lock();
        inner.index = index;
        inner.floor = index;
        inner.order.clear();
        for topic in inner.topics.values_mut() {
            topic.history.clear();
            for outbox in topic.subscribers.drain().map(|(_, o)| o) {
                outbox.lagging.store(true, Ordering::Release);
                outbox.attention.notify_one();
            }
        }
        inner.topics.retain(|_, topic| topic.dropped_upto > 0);
    }

    /// A new socket's outbox and the receiving end of its queue.
    pub fn outbox(&self) -> (Arc<Outbox>, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(self.limits.outbox_max.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Outbox {
            id,
            tx,
            lagging: AtomicBool::new(false),
            line: Mutex::new(Line::default()),
            attention: tokio::sync::Notify::new(),
        };
        (Arc::new(outbox), rx)
    }

    /// Publishes the messages of feed entry `index` (greater than every earlier one), and
    /// returns how many frames went straight to sockets (the rest were queued).
    pub async fn publish(&self, index: u64, messages: Vec<Message>) -> u64 {
        let mut deliveries = Vec::with_capacity(messages.len());
        {
            let mut inner = self.lock();
            inner.index = index;
            for m in messages {
                let key = m.topic.key();
                let text = json!({"topic": m.topic.wire_name(), "index": index, "event": m.event}).to_string();
                let frame = Frame { index, key: Arc::from(key.as_str()), text: Utf8Bytes::from(text) };
                let topic = inner.topics.entry(key.clone()).or_insert_with(TopicState::new);
                // Taken with the history under one lock: a socket joining later replays this
                // frame from the history, one joined earlier is among these.
                let targets: Vec<Arc<Outbox>> = topic.subscribers.values().cloned().collect();
                topic.history.push_back(frame.clone());
                inner.order.push_back(key);
                deliveries.push((frame, targets));
            }
            while inner.order.len() > self.limits.history_max {
                let Some(key) = inner.order.pop_front() else { break };
                let Some(topic) = inner.topics.get_mut(&key) else { continue };
                if let Some(old) = topic.history.pop_front() {
                    topic.dropped_upto = old.index;
                }
            }
        }
        let mut sent = 0;
        for (frame, targets) in deliveries {
            sent += self.deliver(frame, targets).await;
        }
        sent
    }

    /// Offers `frame` to every target, in parts on the runtime's workers at once.
    async fn deliver(&self, frame: Frame, mut targets: Vec<Arc<Outbox>>) -> u64 {
        let parts = self.parts_max.min(targets.len() / PART_MIN).max(1);
        let size = targets.len().div_ceil(parts);
        let mut helpers = Vec::with_capacity(parts);
        while targets.len() > size {
            let part = targets.split_off(targets.len() - size);
            let frame = frame.clone();
            helpers.push(tokio::spawn(async move { offer_part(&frame, &part).await }));
        }
        let mut sent = offer_part(&frame, &targets).await;
        for helper in helpers {
            // A part that panicked marked its sockets lagging itself.
            sent += helper.await.unwrap_or(0);
        }
        sent
    }

    /// Subscribes `outbox` to `key` and returns the replay of every message after `since`
    /// (oldest first; empty without `since`) and the last index published when it joined:
    /// frames up to that one are in the replay or came before the join, so live offers of them
    /// (a publish still working through its subscribers) are not wanted.
    pub fn join(&self, outbox: &Arc<Outbox>, key: &str, since: Option<u64>) -> Result<(Vec<Frame>, u64), HistoryGone> {
        let mut inner = self.lock();
        let inner_floor = inner.floor;
        let topic = inner.topics.entry(key.to_owned()).or_insert_with(TopicState::new);
        let mut replay = Vec::new();
        if let Some(since) = since {
            // Messages up to `dropped_upto` (or the hub's floor) are gone: a `since` below it
            // would skip some.
            let floor = topic.dropped_upto.max(inner_floor);
            if since < floor {
                return Err(HistoryGone { floor });
            }
            replay.extend(topic.history.iter().filter(|f| f.index > since).cloned());
        }
        topic.subscribers.insert(outbox.id, outbox.clone());
        Ok((replay, inner.index))
    }

    /// Unsubscribes `outbox` from `key`, and forgets the topic when it remembers nothing.
    pub fn leave(&self, outbox: &Outbox, key: &str) {
        let mut inner = self.lock();
        let Some(topic) = inner.topics.get_mut(key) else { return };
        topic.subscribers.remove(&outbox.id);
        if topic.subscribers.is_empty() && topic.history.is_empty() && topic.dropped_upto == 0 {
            inner.topics.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::events::Topic;

    #[tokio::test]
    async fn after_a_restart_from_a_state_earlier_positions_are_gone() {
        let hub = Hub::new(HubLimits::default());
        let (outbox, _rx) = hub.outbox();
        let (subscribed, _rx2) = hub.outbox();
        hub.join(&subscribed, "lot:a", None).unwrap();
        hub.publish(3, vec![lot_msg("a", 3)]).await;
        hub.restart_at(10);
        assert!(subscribed.is_lagging(), "a socket subscribed across the restart is told it fell behind");
        assert!(!outbox.is_lagging());
        assert_eq!(hub.index(), 10);
        // A known topic and one never seen: both refuse a position before the restart.
        assert_eq!(hub.join(&outbox, "lot:a", Some(3)).err(), Some(HistoryGone { floor: 10 }));
        assert_eq!(hub.join(&outbox, "lot:z", Some(9)).err(), Some(HistoryGone { floor: 10 }));
        // From the restart on, as usual.
        hub.publish(11, vec![lot_msg("a", 11)]).await;
        let (replay, _) = hub.join(&outbox, "lot:a", Some(10)).unwrap();
        assert_eq!(replay.iter().map(|f| f.index).collect::<Vec<_>>(), [11]);
    }

    fn lot_msg(lot: &str, n: u64) -> Message {
        Message { topic: Topic::Lot(lot.into()), event: json!({"type": "bid", "n": n}) }
    }

    fn indices(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(|f| f.index).collect()
    }

    fn drain(rx: &mut mpsc::Receiver<Frame>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f.index);
        }
        out
    }

    #[tokio::test]
    async fn replay_then_live_has_no_gap_and_no_duplicate() {
        let hub = Hub::new(HubLimits::default());
        for i in 1..=5 {
            hub.publish(i, vec![lot_msg("a", i)]).await;
        }
        let (outbox, mut rx) = hub.outbox();
        let replay = hub.join(&outbox, "lot:a", Some(2)).map(|(frames, _)| frames);
        hub.publish(6, vec![lot_msg("a", 6), lot_msg("b", 6)]).await;
        let replay = replay.unwrap_or_default();
        assert_eq!(indices(&replay), [3, 4, 5]);
        assert_eq!(drain(&mut rx), [6], "lot b is not subscribed");
        let v: serde_json::Value = serde_json::from_str(replay[0].text.as_str()).unwrap_or_default();
        assert_eq!(v, json!({"topic": "lot:a", "index": 3, "event": {"type": "bid", "n": 3}}));
    }

    #[tokio::test]
    async fn one_outbox_gets_all_its_topics_in_log_order() {
        let hub = Hub::new(HubLimits::default());
        let (outbox, mut rx) = hub.outbox();
        assert!(hub.join(&outbox, "lot:a", None).is_ok());
        assert!(hub.join(&outbox, "lot:b", None).is_ok());
        for i in 1..=6 {
            hub.publish(i, vec![lot_msg(if i % 2 == 0 { "a" } else { "b" }, i)]).await;
        }
        assert_eq!(drain(&mut rx), [1, 2, 3, 4, 5, 6]);
        hub.leave(&outbox, "lot:a");
        hub.publish(7, vec![lot_msg("a", 7)]).await;
        hub.publish(8, vec![lot_msg("b", 8)]).await;
        assert_eq!(drain(&mut rx), [8]);
    }

    #[tokio::test]
    async fn evicted_history_refuses_an_older_since_per_topic() {
        let hub = Hub::new(HubLimits { history_max: 3, ..HubLimits::default() });
        let (outbox, _rx) = hub.outbox();
        hub.publish(1, vec![lot_msg("a", 1)]).await;
        hub.publish(2, vec![lot_msg("b", 2)]).await;
        hub.publish(3, vec![lot_msg("a", 3)]).await;
        hub.publish(4, vec![lot_msg("a", 4)]).await;
        // Index 1 (lot a) was evicted; lot b lost nothing.
        assert_eq!(hub.join(&outbox, "lot:a", Some(0)).err(), Some(HistoryGone { floor: 1 }));
        assert!(hub.join(&outbox, "lot:a", Some(1)).is_ok_and(|(r, _)| indices(&r) == [3, 4]));
        assert!(hub.join(&outbox, "lot:b", Some(0)).is_ok_and(|(r, _)| indices(&r) == [2]));
        hub.publish(5, vec![lot_msg("c", 5)]).await;
        hub.publish(6, vec![lot_msg("c", 6)]).await;
        // Lot b's only message is gone now, and it says so.
        assert_eq!(hub.join(&outbox, "lot:b", Some(0)).err(), Some(HistoryGone { floor: 2 }));
        // A topic that never had a message has nothing to miss.
        assert!(hub.join(&outbox, "lot:never", Some(0)).is_ok_and(|(r, _)| r.is_empty()));
    }

    #[tokio::test]
    async fn a_full_outbox_is_lagging_and_gets_nothing_after_the_gap() {
        let hub = Hub::new(HubLimits { outbox_max: 2, ..HubLimits::default() });
        let (slow, mut slow_rx) = hub.outbox();
        let (fast, mut fast_rx) = hub.outbox();
        assert!(hub.join(&slow, "lot:a", None).is_ok());
        assert!(hub.join(&fast, "lot:a", None).is_ok());
        hub.publish(1, vec![lot_msg("a", 1)]).await;
        hub.publish(2, vec![lot_msg("a", 2)]).await;
        assert_eq!(drain(&mut fast_rx), [1, 2]);
        hub.publish(3, vec![lot_msg("a", 3)]).await;
        assert!(slow.is_lagging());
        assert_eq!(drain(&mut slow_rx), [1, 2]);
        hub.publish(4, vec![lot_msg("a", 4)]).await;
        assert_eq!(drain(&mut slow_rx), Vec::<u64>::new(), "nothing after the gap");
        assert_eq!(drain(&mut fast_rx), [3, 4], "the others are unaffected");
    }

    /// A socket that leaves a topic and joins it again with `since` gets the frames it
    /// missed once, from the replay: any offer of them still under way (a publish working
    /// through its subscribers, or frames queued before the leave) is not wanted any more.
    #[tokio::test]
    async fn frames_before_a_join_are_not_wanted_live_after_it() {
        let hub = Hub::new(HubLimits::default());
        let (outbox, mut rx) = hub.outbox();
        let (_, joined_at) = hub.join(&outbox, "lot:a", None).unwrap_or_default();
        outbox.line().keys.insert("lot:a".into(), joined_at);
        for i in 1..=3 {
            hub.publish(i, vec![lot_msg("a", i)]).await;
        }
        // Queued, not yet sent: the client leaves and comes back from index 1.
        outbox.line().keys.remove("lot:a");
        hub.leave(&outbox, "lot:a");
        let (replay, joined_at) = hub.join(&outbox, "lot:a", Some(1)).unwrap_or_default();
        assert_eq!(indices(&replay), [2, 3]);
        assert_eq!(joined_at, 3);
        outbox.line().keys.insert("lot:a".into(), 1_u64.max(joined_at));
        let mut stale = Vec::new();
        while let Ok(f) = rx.try_recv() {
            stale.push(f);
        }
        assert_eq!(indices(&stale), [1, 2, 3]);
        assert!(stale.iter().all(|f| !outbox.line().wants(f)), "2 and 3 would come twice, 1 before the since");
        hub.publish(4, vec![lot_msg("a", 4)]).await;
        let live = rx.try_recv().map(|f| outbox.line().wants(&f));
        assert_eq!(live.ok(), Some(true), "what comes after the join is wanted");
    }

    #[tokio::test]
    async fn a_topic_is_forgotten_when_it_remembers_nothing() {
        let hub = Hub::new(HubLimits::default());
        let (outbox, _rx) = hub.outbox();
        assert!(hub.join(&outbox, "lot:a", None).is_ok());
        hub.leave(&outbox, "lot:a");
        assert!(hub.lock().topics.is_empty());
    }
}
