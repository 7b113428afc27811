// Gavel's bidder page: sign in, the open lots, and a live lot page.
//
// Routes: `#/` (open lots) and `#/lots/<lot_id>`. Every number on a lot page comes from the
// server: the price, the leader and the end time from the lot and its live events, the
// countdown from the server's clock (see live.ts).

import { ApiError, call, loadSession, newBidId, saveSession, signIn, signUp } from "./api";
import type { BidLine, Lot } from "./api";
import { CONTENT_EVENTS, contentSection } from "./content";
import { el } from "./dom";
import { Live } from "./live";
import type { LiveEvent } from "./live";

const app = document.getElementById("app") as HTMLElement;
const who = document.getElementById("who") as HTMLElement;
const alerts = document.getElementById("alerts") as HTMLElement;

// ---- small DOM helpers ---------------------------------------------------------------

function money(amount: number, currency: string): string {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(amount / 100);
  } catch {
    return `${(amount / 100).toFixed(2)} ${currency}`;
  }
}

function remaining(ms: number): string {
  if (ms <= 0) return "ended";
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  return d > 0 ? `${d}d ${two(h)}:${two(m)}:${two(sec)}` : `${two(h)}:${two(m)}:${two(sec)}`;
}

function notify(text: string, kind: "info" | "alert" = "info"): void {
  const item = el("div", { class: `toast ${kind}`, role: kind === "alert" ? "alert" : "status" }, text);
  alerts.append(item);
  window.setTimeout(() => item.remove(), 8000);
}

// ---- session ---------------------------------------------------------------------------

function renderWho(): void {
  const session = loadSession();
  who.replaceChildren();
  if (session) {
    const out = el("button", { type: "button", id: "sign-out" }, "Sign out");
    out.onclick = () => {
      saveSession(null);
      void route();
    };
    who.append(el("span", { id: "signed-in-as" }, `Signed in as ${session.username}`), " ", out);
  } else {
    who.append(el("a", { href: "#/sign-in", id: "sign-in-link" }, "Sign in"));
  }
}

function signInView(): HTMLElement {
  const username = el("input", { id: "username", name: "username", autocomplete: "username", required: "" });
  const password = el("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: "",
  });
  const message = el("p", { id: "sign-in-error", class: "error", role: "alert" });
  const signInButton = el("button", { type: "submit", id: "sign-in" }, "Sign in");
  const signUpButton = el("button", { type: "button", id: "sign-up", class: "secondary" }, "Create account");
  const form = el(
    "form",
    { class: "card narrow", "aria-labelledby": "sign-in-title" },
    el("h1", { id: "sign-in-title" }, "Sign in to bid"),
    el("label", { for: "username" }, "Username"),
    username,
    el("label", { for: "password" }, "Password"),
    password,
    message,
    el("div", { class: "row" }, signInButton, signUpButton),
  );
  const go = async (create: boolean) => {
    message.textContent = "";
    try {
      await (create ? signUp : signIn)(username.value.trim(), password.value);
      const back = sessionStorage.getItem("gavel.after-sign-in") ?? "#/";
      sessionStorage.removeItem("gavel.after-sign-in");
      // Changing the hash routes; the same hash does not, so route by hand.
      if (location.hash === back) void route();
      else location.hash = back;
    } catch (e) {
      message.textContent = e instanceof ApiError ? e.message : String(e);
    }
  };
  form.onsubmit = (ev) => {
    ev.preventDefault();
    void go(false);
  };
  signUpButton.onclick = () => void go(true);
  window.setTimeout(() => username.focus(), 0);
  return form;
}

// ---- open lots ---------------------------------------------------------------------------

/** What a view started (its socket, its clock), stopped when another view replaces it. */
class Page {
  live: Live | null = null;
  ticker: number | undefined;

  dispose(): void {
    this.live?.close();
    this.live = null;
    window.clearInterval(this.ticker);
  }
}

let current: Page | null = null;

async function lotsView(page: Page): Promise<HTMLElement> {
  const list = el("ul", { class: "lots", id: "lots" });
  const section = el("section", {}, el("h1", {}, "Open lots"), list);
  const { data } = await call<{ items: Lot[] }>("GET", "/v1/live/lots");
  if (data.items.length === 0) {
    list.append(el("li", { class: "empty" }, "No lot is open for bidding right now."));
    return section;
  }
  const rows = new Map<string, { price: HTMLElement; ends: HTMLElement; lot: Lot }>();
  for (const lot of data.items) {
    const price = el("span", { class: "price" }, money(lot.current_price, lot.currency));
    const ends = el("span", { class: "ends" });
    list.append(
      el(
        "li",
        {},
        el("a", { href: `#/lots/${encodeURIComponent(lot.lot_id)}`, class: "lot-link" }, lot.title),
        el("span", { class: "artist" }, lot.artist),
        price,
        ends,
      ),
    );
    rows.set(lot.lot_id, { price, ends, lot });
  }
  const clock = new Live({
    event(_topic, _index, e) {
      const row = e.lot_id ? rows.get(e.lot_id) : undefined;
      if (!row) return;
      if (typeof e.current_price === "number") row.lot.current_price = e.current_price;
      if (typeof e.ends_at === "string") row.lot.ends_at = e.ends_at;
      row.price.textContent = money(row.lot.current_price, row.lot.currency);
    },
    historyGone() {},
    status() {},
  });
  page.live = clock;
  // The first 64 lots (a socket's topic limit) update live; the rest on reload.
  clock.watch(
    [...rows.keys()].slice(0, 64).map((id) => `lot:${id}`),
    null,
  );
  const tick = () => {
    for (const { ends, lot } of rows.values()) ends.textContent = remaining(Date.parse(lot.ends_at) - clock.now());
  };
  tick();
  page.ticker = window.setInterval(tick, 250);
  return section;
}

// ---- one lot -------------------------------------------------------------------------------

async function lotView(page: Page, lotId: string): Promise<HTMLElement> {
  const path = `/v1/lots/${encodeURIComponent(lotId)}`;
  // The history first: its index is where the live events pick up (no gap, no repeat).
  const bidsAnswer = await call<{ bids: BidLine[] }>("GET", `${path}/bids`);
  const lotAnswer = await call<Lot>("GET", path);
  let lot = lotAnswer.data;
  let lotIndex = lotAnswer.appliedIndex ?? 0;
  const since = bidsAnswer.appliedIndex ?? 0;
  const history = bidsAnswer.data.bids;
  const me = loadSession();

  const price = el("output", { id: "price", "aria-live": "polite" });
  const leader = el("span", { id: "leader" });
  const count = el("span", { id: "bid-count" });
  const status = el("span", { id: "status" });
  const countdown = el("output", { id: "countdown", "aria-live": "off" });
  const connection = el("span", { id: "connection", class: "offline" }, "connecting");
  const historyList = el("ol", { id: "history", reversed: "" });
  const amount = el("input", {
    id: "amount",
    name: "amount",
    type: "number",
    inputmode: "decimal",
    step: "0.01",
    min: "0",
    "aria-describedby": "bid-help",
  });
  const help = el("p", { id: "bid-help", class: "help" });
  const message = el("p", { id: "bid-message", role: "alert" });
  const bidButton = el("button", { type: "submit", id: "place-bid" }, "Place bid");

  const render = () => {
    price.textContent = money(lot.current_price, lot.currency);
    leader.textContent =
      lot.leading_bidder === null
        ? "no bids yet"
        : me && lot.leading_bidder === me.user_id
          ? "you are leading"
          : `leader ${lot.leading_bidder}`;
    count.textContent = `${lot.bid_count} bid${lot.bid_count === 1 ? "" : "s"}`;
    status.textContent = lot.status;
    help.textContent = `Next valid bid: ${money(lot.minimum_bid, lot.currency)} or more (your maximum; we bid for you up to it).`;
    if (document.activeElement !== amount || amount.value === "") amount.value = (lot.minimum_bid / 100).toFixed(2);
    amount.min = (lot.minimum_bid / 100).toFixed(2);
    const open = lot.status === "InAuction";
    bidButton.disabled = !open;
    amount.disabled = !open;
  };
  const renderHistory = () => {
    historyList.replaceChildren(
      ...history
        .slice()
        .reverse()
        .map((b) =>
          el(
            "li",
            {},
            el("span", { class: "amount" }, money(b.amount, lot.currency)),
            " ",
            el("span", { class: "bidder" }, me && b.bidder === me.user_id ? "you" : b.bidder),
            " ",
            el("span", { class: "kind" }, b.kind === "proxy" ? "(auto)" : ""),
            " ",
            el("time", { datetime: b.at }, new Date(b.at).toLocaleTimeString()),
          ),
        ),
    );
  };

  const content = await contentSection(lot);
  const socket = new Live({
    event(topic, index, e: LiveEvent) {
      if (topic === "user") {
        if (e.type === "outbid") {
          // A "you are leading" answer is stale now; any other answer (the bid that was
          // just outbid by a proxy says so itself, and may arrive after this event) stays.
          if (e.lot_id === lotId && message.className === "ok") {
            message.textContent = "";
            message.className = "";
          }
          const where = e.lot_id === lotId ? "on this lot" : `on ${String(e.title ?? e.lot_id)}`;
          notify(`You have been outbid ${where}: now ${money(Number(e.current_price), lot.currency)}.`, "alert");
        } else if (e.type === "won") {
          notify(`You won ${String(e.title ?? e.lot_id)} for ${money(Number(e.price), lot.currency)}!`, "info");
        }
        return;
      }
      if (e.lot_id !== lotId) return;
      if (CONTENT_EVENTS.has(e.type)) {
        content.event(e);
        return;
      }
      if (e.type === "bid") {
        history.push({
          bid_id: String(e.bid_id),
          bidder: String(e.bidder),
          amount: Number(e.amount),
          at: String(e.at),
          kind: e.kind === "proxy" ? "proxy" : "placed",
        });
        renderHistory();
      }
      // Every event carries the lot's state after it; the lot read may already be newer.
      // Events of one entry share its index and come in order: apply each of them.
      if (index >= lotIndex) {
        lotIndex = index;
        lot = {
          ...lot,
          status: typeof e.status === "string" ? e.status : lot.status,
          current_price: Number(e.current_price ?? lot.current_price),
          leading_bidder: (e.leading_bidder as string | null | undefined) ?? null,
          bid_count: Number(e.bid_count ?? lot.bid_count),
          minimum_bid: Number(e.minimum_bid ?? lot.minimum_bid),
          reserve_met: Boolean(e.reserve_met ?? lot.reserve_met),
          ends_at: typeof e.ends_at === "string" ? e.ends_at : lot.ends_at,
        };
        render();
      }
      if (e.type === "extended") notify("Soft close: the lot was extended.");
    },
    historyGone() {
      // Too far behind to replay: start over from a fresh read.
      void route();
    },
    status(connected) {
      connection.textContent = connected ? "live" : "reconnecting";
      connection.className = connected ? "online" : "offline";
    },
  });
  page.live = socket;
  socket.watch(me ? [`lot:${lotId}`, "user"] : [`lot:${lotId}`], since);

  const form = el(
    "form",
    // The ledger's rules are the truth: let every bid reach it and show its message, rather
    // than the browser's own range check.
    { id: "bid-form", class: "bid", novalidate: "" },
    el("label", { for: "amount" }, `Your maximum (${lot.currency})`),
    el("div", { class: "row" }, amount, bidButton),
    help,
    message,
  );
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    message.textContent = "";
    message.className = "";
    if (!loadSession()) {
      sessionStorage.setItem("gavel.after-sign-in", location.hash);
      location.hash = "#/sign-in";
      return;
    }
    const cents = Math.round(Number(amount.value) * 100);
    if (!Number.isFinite(cents) || cents <= 0) {
      message.textContent = "Enter an amount.";
      message.className = "error";
      return;
    }
    bidButton.disabled = true;
    const bidId = newBidId();
    try {
      const { data } = await call<{ outcome: string; current_price: number }>("POST", `${path}/bids`, {
        bid_id: bidId,
        max_amount: cents,
      });
      message.textContent =
        data.outcome === "leading"
          ? `You are leading at ${money(data.current_price, lot.currency)}.`
          : `Another bidder's maximum is higher: the price is now ${money(data.current_price, lot.currency)}.`;
      message.className = data.outcome === "leading" ? "ok" : "error";
      amount.value = "";
    } catch (e) {
      message.textContent = e instanceof ApiError ? e.message : String(e);
      message.className = "error";
      if (e instanceof ApiError && e.status === 401) {
        saveSession(null);
        renderWho();
      }
    } finally {
      bidButton.disabled = lot.status !== "InAuction";
    }
  };

  const tick = () => {
    const left = Date.parse(lot.ends_at) - socket.now();
    countdown.textContent = lot.status === "InAuction" ? remaining(left) : lot.status;
    countdown.className = left < 60000 && lot.status === "InAuction" ? "closing" : "";
  };
  render();
  renderHistory();
  tick();
  page.ticker = window.setInterval(tick, 200);

  return el(
    "article",
    { class: "lot" },
    el("p", {}, el("a", { href: "#/" }, "← All open lots")),
    el("h1", { id: "lot-title" }, lot.title),
    el("p", { class: "artist" }, lot.artist),
    lot.description ? el("p", { class: "description" }, lot.description) : null,
    el(
      "div",
      { class: "card live" },
      el("div", { class: "price-line" }, price, " ", connection),
      el("p", {}, leader, " · ", count, " · ", status),
      el("p", {}, "Ends in ", countdown),
      form,
    ),
    el("h2", {}, "Bids"),
    historyList,
    content.element,
  );
}

// ---- routing -------------------------------------------------------------------------------

async function route(): Promise<void> {
  current?.dispose();
  const page = new Page();
  current = page;
  renderWho();
  const hash = location.hash || "#/";
  app.setAttribute("aria-busy", "true");
  try {
    let view: HTMLElement;
    const lotMatch = hash.match(/^#\/lots\/(.+)$/);
    if (hash === "#/sign-in") view = signInView();
    else if (lotMatch) view = await lotView(page, decodeURIComponent(lotMatch[1]));
    else view = await lotsView(page);
    if (current !== page) {
      // Another route started while this one loaded: it owns the screen.
      page.dispose();
      return;
    }
    app.replaceChildren(view);
  } catch (e) {
    if (current !== page) return;
    const text = e instanceof ApiError ? `${e.message} (${e.code})` : String(e);
    app.replaceChildren(el("p", { class: "error", role: "alert" }, text));
  } finally {
    app.removeAttribute("aria-busy");
  }
}

window.addEventListener("hashchange", () => void route());
void route();

