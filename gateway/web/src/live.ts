// The live socket: subscribes, resumes after a drop with `since` (missing nothing), and
// keeps the server's clock so countdowns do not trust the device's.

import { loadSession } from "./api";

export interface LiveEvent {
  type: string;
  lot_id?: string;
  [key: string]: unknown;
}

export interface Handlers {
  /** An event of `topic` at log `index`. */
  event(topic: string, index: number, event: LiveEvent): void;
  /** The server no longer holds the history since our last index: reload over HTTP. */
  historyGone(topic: string): void;
  /** Connection state for the page's indicator. */
  status(connected: boolean): void;
}

const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5000;
const PING_MS = 10000;

export class Live {
  private socket: WebSocket | null = null;
  private topics = new Set<string>();
  /** The newest index received: where a reconnect resumes. */
  private lastIndex: number | null = null;
  private backoff = RECONNECT_MIN_MS;
  private pingTimer: number | undefined;
  private closed = false;
  /** Server time minus local time, in ms, from the last pong. */
  clockOffsetMs = 0;

  constructor(private readonly handlers: Handlers) {}

  /** Watches `topics` with events after `since` (log index), or from now. */
  watch(topics: string[], since: number | null): void {
    this.topics = new Set(topics);
    this.lastIndex = since;
    this.restart();
  }

  close(): void {
    this.closed = true;
    window.clearInterval(this.pingTimer);
    this.socket?.close(1000, "page left");
    this.socket = null;
  }

  /** The server's current time in ms. */
  now(): number {
    return Date.now() + this.clockOffsetMs;
  }

  private restart(): void {
    this.closed = false;
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close(1000, "resubscribing");
    }
    this.connect();
  }

  private connect(): void {
    const session = loadSession();
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const query = session ? `?token=${encodeURIComponent(session.token)}` : "";
    const socket = new WebSocket(`${proto}//${location.host}/v1/ws${query}`);
    this.socket = socket;
    socket.onopen = () => {
      this.backoff = RECONNECT_MIN_MS;
      this.handlers.status(true);
      const subscribe: Record<string, unknown> = { action: "subscribe", topics: [...this.topics] };
      if (this.lastIndex !== null) subscribe.since = this.lastIndex;
      socket.send(JSON.stringify(subscribe));
      this.ping();
      window.clearInterval(this.pingTimer);
      this.pingTimer = window.setInterval(() => this.ping(), PING_MS);
    };
    socket.onmessage = (m) => this.receive(String(m.data));
    socket.onclose = () => {
      window.clearInterval(this.pingTimer);
      this.handlers.status(false);
      if (this.closed || this.socket !== socket) return;
      // Resume where we were: the server replays everything after lastIndex.
      window.setTimeout(() => this.socket === socket && this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, RECONNECT_MAX_MS);
    };
  }

  private pingSentAt = 0;

  private ping(): void {
    if (this.socket?.readyState !== WebSocket.OPEN) return;
    this.pingSentAt = Date.now();
    this.socket.send(JSON.stringify({ action: "ping" }));
  }

  private receive(text: string): void {
    let msg: {
      topic?: string;
      index?: number;
      event?: LiveEvent;
      type?: string;
      server_time_ms?: number;
      error?: { code: string; topic?: string; last_index?: number };
    };
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.type === "pong" && typeof msg.server_time_ms === "number") {
      // The server stamped its time about half a round trip ago.
      const received = Date.now();
      const rtt = received - this.pingSentAt;
      this.clockOffsetMs = msg.server_time_ms + rtt / 2 - received;
      return;
    }
    if (msg.error) {
      if (msg.error.code === "history_gone") this.handlers.historyGone(msg.error.topic ?? "");
      if (msg.error.code === "lagging" && typeof msg.error.last_index === "number") {
        this.lastIndex = msg.error.last_index;
      }
      return;
    }
    if (msg.topic && typeof msg.index === "number" && msg.event) {
      if (this.lastIndex === null || msg.index > this.lastIndex) this.lastIndex = msg.index;
      this.handlers.event(msg.topic, msg.index, msg.event);
    }
  }
}
