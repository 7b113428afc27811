//! `GET /v1/ws`: live events for lots, sales and the caller's own notifications.
//!
//! A socket is one task: it reads client actions, sends what its hub outbox queued (the hub
//! writes most events to the socket itself) in log order, and pings the peer. Everything a
//! client can send wrong gets an error frame (or, for frames over the size limit, close code
//! 1009); nothing a client sends can stop another socket.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::stream::SplitStream;
use futures::{FutureExt, SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tracing::debug;

use crate::auth::{Caller, bearer};
use crate::error::AppError;
use crate::events::Topic;
use crate::extract::ApiQuery;
use crate::feed::now_ms;
use crate::hub::{Frame, Outbox, Writer};
use crate::state::AppState;
use crate::woken::WhenWoken;

/// Close code for a client that fell behind (application range 4000-4999).
pub const CLOSE_LAGGING: u16 = 4000;
/// Close code for a client that keeps flooding after being told.
pub const CLOSE_FLOODING: u16 = 4001;
/// How long a closing socket waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Bounds of the socket protocol.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// Sockets open at once; more are refused with `503 overloaded`.
    pub connections_max: usize,
    /// Topics one socket may hold.
    pub topics_max: usize,
    /// Largest client frame (text) in bytes; larger ones close the socket with 1009.
    pub message_bytes_max: usize,
    /// Client actions per second per socket, and the burst.
    pub actions_per_sec: u32,
    pub actions_burst: u32,
    /// How often the server pings; a peer silent for two of these is dropped.
    pub heartbeat: Duration,
    /// Longest a single send may take before the peer counts as dead.
    pub send_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            connections_max: 20_000,
            topics_max: 64,
            message_bytes_max: 4 * 1024,
            actions_per_sec: 20,
            actions_burst: 40,
            heartbeat: Duration::from_secs(15),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// The live side of the gateway that sockets share.
pub struct Sockets {
    pub limits: WsLimits,
    pub slots: Arc<tokio::sync::Semaphore>,
    pub stopped: tokio::sync::watch::Receiver<bool>,
}

impl Sockets {
    pub fn new(limits: WsLimits, stopped: tokio::sync::watch::Receiver<bool>) -> Sockets {
        Sockets { limits, slots: Arc::new(tokio::sync::Semaphore::new(limits.connections_max.max(1))), stopped }
    }
}

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Upgrades to a socket. A token is optional (lots and sales are public); one that is sent
/// must be valid, and only a signed-in socket may take its `user` topic.
pub async fn upgrade(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WsQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let ws = ws.map_err(|e| AppError::invalid(format!("not a WebSocket upgrade: {e}")))?;
    let token = match query.token.as_deref() {
        Some(t) => Some(t),
        None => bearer(&headers)?,
    };
    let caller = token.map(|t| state.jwt.verify(t)).transpose()?;
    let permit = state.sockets.slots.clone().try_acquire_owned().map_err(|_| {
        AppError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many open sockets; retry shortly")
    })?;
    let limits = state.sockets.limits;
    Ok(ws
        // Small buffers: a socket mostly waits, and ten thousand of them must fit.
        .read_buffer_size(limits.message_bytes_max.min(4096))
        .write_buffer_size(0)
        .max_message_size(limits.message_bytes_max)
        .max_frame_size(limits.message_bytes_max)
        .on_upgrade(move |socket| async move {
            Session::run(socket, state, caller, permit).await;
        }))
}

/// A client action.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum Action {
    Subscribe { topics: Vec<String>, since: Option<u64> },
    Unsubscribe { topics: Vec<String> },
    Ping,
}

fn error_frame(code: &str, message: impl Into<String>, extra: Value) -> WsMessage {
    let mut error = json!({"code": code, "message": message.into()});
    if let (Value::Object(e), Value::Object(x)) = (&mut error, extra) {
        e.extend(x);
    }
    WsMessage::Text(Utf8Bytes::from(json!({ "error": error }).to_string()))
}

/// Why a session ends.
enum End {
    /// The peer left or the connection broke: nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

/// A socket's task. Its write half lives in its outbox's line (`hub::Line`), where
/// publishing writes straight to it; the session takes it out for its own writes (replies,
/// pings, queued and replayed frames) and puts it back after, so the two never interleave.
struct Session {
    state: AppState,
    caller: Option<Caller>,
    outbox: Arc<Outbox>,
    /// Read through [`WhenWoken`]: the task also wakes for its queue and heartbeat, and the
    /// read half is only worth polling when the socket woke it.
    stream: WhenWoken<SplitStream<WebSocket>>,
    /// Frames the hub could not write at once, in log order.
    queue: mpsc::Receiver<Frame>,
}

impl Session {
    async fn run(socket: WebSocket, state: AppState, caller: Option<Caller>, permit: OwnedSemaphorePermit) {
        let (outbox, queue) = state.live.hub.outbox();
        let limits = state.sockets.limits;
        let mut stopped = state.sockets.stopped.clone();
        // Made once: a fresh `wait_for` per loop would register and drop a waiter under the
        // channel's lock for every event this socket sends.
        let stop = stopping(&mut stopped);
        tokio::pin!(stop);
        let (writer, stream) = socket.split();
        outbox.line().writer = Some(writer);
        let mut session = Session { state, caller, outbox, stream: WhenWoken::new(stream), queue };
        session.state.metrics.ws_connections.inc();
        let quota = Quota::per_second(
            std::num::NonZeroU32::new(limits.actions_per_sec.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        )
        .allow_burst(std::num::NonZeroU32::new(limits.actions_burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN));
        let actions = RateLimiter::direct(quota);
        let mut warned_flood = false;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + limits.heartbeat, limits.heartbeat);
        let mut last_heard = Instant::now();

        let end = loop {
            let step = tokio::select! {
                () = &mut stop => Err(End::Close(close_code::AWAY, "the gateway is shutting down; reconnect with since".into())),
                frame = session.queue.recv() => match frame {
                    Some(frame) => session.deliver(frame).await,
                    None => Err(End::Gone),
                },
                () = session.outbox.attention.notified() => session.finish_flush().await,
                incoming = session.stream.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None => Err(End::Gone),
                        Some(Err(e)) => Err(session.read_failed(&e)),
                        Some(Ok(WsMessage::Text(text))) => {
                            if actions.check().is_err() {
                                if warned_flood {
                                    Err(End::Close(CLOSE_FLOODING, "too many actions".into()))
                                } else {
                                    warned_flood = true;
                                    let m = format!("at most {} actions a second; slow down or be closed", limits.actions_per_sec);
                                    session.send(error_frame("rate_limited", m, json!({}))).await
                                }
                            } else {
                                warned_flood = false;
                                session.act(text.as_str()).await
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            session.send(error_frame("invalid_input", "send actions as JSON text frames", json!({}))).await
                        }
                        Some(Ok(WsMessage::Close(_))) => Err(End::Gone),
                        // Pings are answered by the library; pongs only prove the peer lives.
                        Some(Ok(_)) => Ok(()),
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() > limits.heartbeat * 2 {
                        // Dead: nothing to say to it, and no closing handshake to wait for.
                        debug!("socket silent for two heartbeats; dropping it");
                        Err(End::Gone)
                    } else {
                        session.send(WsMessage::Ping(axum::body::Bytes::new())).await
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
            if session.outbox.is_lagging() {
                session.state.metrics.ws_lagging.inc();
                let last = session.outbox.line().last_index;
                let m = format!("this socket fell behind; reconnect and subscribe with since={last}");
                let _ = session.send(error_frame("lagging", m, json!({"last_index": last}))).await;
                break End::Close(CLOSE_LAGGING, format!("lagging; resume with since={last}"));
            }
        };
        // Out of the hub first: a closing socket takes no more frames.
        let keys = std::mem::take(&mut session.outbox.line().keys);
        for key in keys.into_keys() {
            session.state.live.hub.leave(&session.outbox, &key);
        }
        if let End::Close(code, reason) = end {
            let close = WsMessage::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }));
            let writer = session.outbox.line().writer.take();
            if let Some(mut writer) = writer
                && let Ok(Ok(())) = tokio::time::timeout(limits.send_timeout, writer.send(close)).await
            {
                // The closing handshake: read until the peer's close (briefly). Dropping a
                // socket with unread input makes the kernel reset it, and a reset discards
                // what the peer had not read yet, our close frame and error included.
                let _ = tokio::time::timeout(CLOSE_LINGER, async {
                    while let Some(Ok(m)) = session.stream.next().await {
                        if matches!(m, WsMessage::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
        session.state.metrics.ws_connections.dec();
        drop(permit);
    }

    fn read_failed(&self, e: &axum::Error) -> End {
        // Oversized frames are the one read error worth telling the peer about.
        let text = e.to_string();
        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
            let limit = self.state.sockets.limits.message_bytes_max;
            End::Close(close_code::SIZE, format!("frames are limited to {limit} bytes"))
        } else {
            debug!(error = %e, "socket read failed");
            End::Gone
        }
    }

    /// Sends with the write half taken out of the line, so publishing queues meanwhile.
    async fn send(&mut self, message: WsMessage) -> Result<(), End> {
        let Some(mut writer) = self.outbox.line().writer.take() else { return Err(End::Gone) };
        let sent = send_within(&mut writer, message, self.state.sockets.limits.send_timeout).await;
        self.outbox.line().writer = Some(writer);
        sent
    }

    /// Sends a frame from the queue, if its topic is still held and it is new to the client.
    async fn deliver(&mut self, frame: Frame) -> Result<(), End> {
        let wanted = self.outbox.line().wants(&frame);
        let index = frame.index;
        let sent = if wanted { self.send(WsMessage::Text(frame.text)).await } else { Ok(()) };
        let mut line = self.outbox.line();
        // Counted down only now: until the frame is out, later ones queue behind it.
        line.queued = line.queued.saturating_sub(1);
        if wanted && sent.is_ok() {
            line.last_index = line.last_index.max(index);
            self.state.metrics.ws_messages_sent.inc();
        }
        sent
    }

    /// Finishes a frame publishing wrote that the kernel did not take in full.
    async fn finish_flush(&mut self) -> Result<(), End> {
        let Some(mut writer) = self.outbox.line().writer.take() else { return Err(End::Gone) };
        let timeout = self.state.sockets.limits.send_timeout;
        let flushed = match tokio::time::timeout(timeout, writer.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        };
        let mut line = self.outbox.line();
        line.writer = Some(writer);
        line.unflushed = false;
        flushed
    }

    async fn act(&mut self, text: &str) -> Result<(), End> {
        let action: Action = match serde_json::from_str(text) {
            Ok(a) => a,
            Err(e) => {
                // serde names an unknown tag "unknown variant"; anything else is malformed.
                let code =
                    if e.to_string().starts_with("unknown variant") { "unknown_action" } else { "invalid_input" };
                return self.send(error_frame(code, format!("bad action: {e}"), json!({}))).await;
            }
        };
        match action {
            Action::Ping => {
                let now = ledger::time::format_time(now_ms());
                let pong = json!({"type": "pong", "server_time": now, "server_time_ms": now_ms()});
                self.send(WsMessage::Text(Utf8Bytes::from(pong.to_string()))).await
            }
            Action::Unsubscribe { topics } => {
                for name in topics {
                    match self.topic(&name) {
                        Ok(topic) => {
                            let key = topic.key();
                            // Out of the line first: publishing writes nothing more for it.
                            let held = self.outbox.line().keys.remove(&key).is_some();
                            if held {
                                self.state.live.hub.leave(&self.outbox, &key);
                            }
                        }
                        Err((code, message)) => self.send(error_frame(code, message, json!({"topic": name}))).await?,
                    }
                }
                Ok(())
            }
            Action::Subscribe { topics, since } => self.subscribe(topics, since).await,
        }
    }

    /// A topic by its wire name, if this socket may take it.
    fn topic(&self, name: &str) -> Result<Topic, (&'static str, String)> {
        let checked = |kind: &str, id: &str| {
            ledger::checks::check_id(kind, id).map_err(|e| ("unknown_topic", format!("topic {name}: {e}")))
        };
        if name == "user" {
            return match &self.caller {
                Some(c) => Ok(Topic::User(c.user_id.clone())),
                None => Err(("unauthorized", "sign in to take the `user` topic (send the token)".into())),
            };
        }
        match name.split_once(':') {
            Some(("lot", id)) => checked("lot id", id).map(|()| Topic::Lot(id.to_owned())),
            Some(("auction", id)) => checked("auction id", id).map(|()| Topic::Auction(id.to_owned())),
            Some(("user", _)) => {
                Err(("forbidden", "a socket may only take its own notifications: topic `user`".into()))
            }
            _ => Err(("unknown_topic", format!("unknown topic {name:?}; use lot:<id>, auction:<id> or user"))),
        }
    }

    /// Joins the topics and sends their replays. The write half is held throughout, so
    /// publishing queues what arrives meanwhile and a live frame cannot overtake the replay.
    async fn subscribe(&mut self, names: Vec<String>, since: Option<u64>) -> Result<(), End> {
        let Some(mut writer) = self.outbox.line().writer.take() else { return Err(End::Gone) };
        let mut out: Vec<WsMessage> = Vec::new();
        let mut replay: Vec<Frame> = Vec::new();
        for name in names {
            let topic = match self.topic(&name) {
                Ok(t) => t,
                Err((code, message)) => {
                    out.push(error_frame(code, message, json!({"topic": name})));
                    continue;
                }
            };
            let key = topic.key();
            let held = {
                let line = self.outbox.line();
                if line.keys.contains_key(&key) {
                    // Already live: a second replay would repeat what is queued.
                    continue;
                }
                line.keys.len()
            };
            if held >= self.state.sockets.limits.topics_max {
                let m = format!("a socket may hold at most {} topics", self.state.sockets.limits.topics_max);
                out.push(error_frame("too_many_topics", m, json!({"topic": name})));
                continue;
            }
            match self.state.live.hub.join(&self.outbox, &key, since) {
                Ok((frames, joined_at)) => {
                    // Live frames must be newer than both the client's `since` and the join:
                    // anything older is in the replay or came before the subscription.
                    self.outbox.line().keys.insert(key, since.unwrap_or(0).max(joined_at));
                    replay.extend(frames);
                }
                Err(gone) => {
                    let m = format!(
                        "events of {name} up to index {} are no longer held; reload over HTTP and subscribe without since",
                        gone.floor
                    );
                    out.push(error_frame("history_gone", m, json!({"topic": name, "floor": gone.floor})));
                }
            }
        }
        // Frames already queued for the topics held before go out merged with the replay by
        // log index: sent after it, an older one would arrive out of order, and a socket that
        // lagged meanwhile would be told to resume past it.
        let mut queued = Vec::new();
        while let Ok(frame) = self.queue.try_recv() {
            queued.push(frame);
        }
        let drained = queued.len();
        queued.retain(|f| self.outbox.line().wants(f));
        let mut frames: Vec<Frame> = replay.into_iter().chain(queued).collect();
        // Several topics interleave by log index; a stable sort keeps each entry's own order.
        frames.sort_by_key(|f| f.index);
        let timeout = self.state.sockets.limits.send_timeout;
        let mut sent = Ok(());
        let mut last = 0;
        for message in out {
            sent = send_within(&mut writer, message, timeout).await;
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            for frame in frames {
                let index = frame.index;
                sent = send_within(&mut writer, WsMessage::Text(frame.text), timeout).await;
                if sent.is_err() {
                    break;
                }
                last = index;
                self.state.metrics.ws_messages_sent.inc();
            }
        }
        let mut line = self.outbox.line();
        line.writer = Some(writer);
        line.last_index = line.last_index.max(last);
        line.queued = line.queued.saturating_sub(drained);
        sent
    }
}

/// One send, given at most `timeout` if the kernel does not take it at once.
async fn send_within(writer: &mut Writer, message: WsMessage, timeout: Duration) -> Result<(), End> {
    let send = writer.send(message);
    tokio::pin!(send);
    // Nearly every send completes at once: arm the timer only for one that waits, so ten
    // thousand sockets do not each register a timer per event.
    let sent = match (&mut send).now_or_never() {
        Some(sent) => sent,
        None => match tokio::time::timeout(timeout, send).await {
            Ok(sent) => sent,
            Err(_) => return Err(End::Gone),
        },
    };
    sent.map_err(|_| End::Gone)
}

/// Resolves once the gateway stops (the guard `wait_for` returns must not live across awaits).
async fn stopping(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|&s| s).await;
}
