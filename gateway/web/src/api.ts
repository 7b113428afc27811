// The gateway's HTTP API (shared/API.md), as the page uses it.

export interface Session {
  token: string;
  user_id: string;
  role: string;
  username: string;
}

export interface Lot {
  lot_id: string;
  title: string;
  description?: string;
  artist: string;
  category?: string;
  currency: string;
  status: string;
  start_price: number;
  current_price: number;
  leading_bidder: string | null;
  bid_count: number;
  minimum_bid: number;
  reserve_met: boolean;
  starts_at?: string;
  ends_at: string;
  seller_id?: string;
  categories?: string[];
  image_count?: number;
  comment_count?: number;
}

export interface Attribute {
  attribute_id: string;
  key: string;
  value: string;
}

export interface Comment {
  comment_id: string;
  lot_id: string;
  author: string;
  content: string;
  created_at: string;
}

export interface Image {
  image_id: string;
  lot_id: string;
  url: string;
  content_type: string;
  bytes: number;
  width: number;
  height: number;
  position: number;
}

export interface BidLine {
  bid_id: string;
  bidder: string;
  amount: number;
  at: string;
  kind: "placed" | "proxy";
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const SESSION_KEY = "gavel.session";

export function loadSession(): Session | null {
  try {
    const raw = localStorage.getItem(SESSION_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export function saveSession(s: Session | null): void {
  if (s) localStorage.setItem(SESSION_KEY, JSON.stringify(s));
  else localStorage.removeItem(SESSION_KEY);
}

/** A JSON call; non-2xx answers become an ApiError with the API's code and message. */
export async function call<T>(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ data: T; appliedIndex: number | null }> {
  const headers: Record<string, string> = {};
  const session = loadSession();
  if (session) headers["Authorization"] = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection.");
  }
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const err = (parsed as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(response.status, err?.code ?? "http_" + response.status, err?.message ?? response.statusText);
  }
  const applied = response.headers.get("gavel-applied-index");
  return { data: parsed as T, appliedIndex: applied === null ? null : Number(applied) };
}

/** Uploads a file as multipart field `image` (the server judges its type by its bytes). */
export async function upload<T>(path: string, file: Blob): Promise<T> {
  const form = new FormData();
  form.append("image", file);
  const headers: Record<string, string> = {};
  const session = loadSession();
  if (session) headers["Authorization"] = `Bearer ${session.token}`;
  let response: Response;
  try {
    response = await fetch(path, { method: "POST", headers, body: form });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached. Check your connection.");
  }
  const parsed = (await response.json().catch(() => null)) as
    | (T & { error?: { code?: string; message?: string } })
    | null;
  if (!response.ok) {
    const err = parsed?.error;
    throw new ApiError(response.status, err?.code ?? "http_" + response.status, err?.message ?? response.statusText);
  }
  return parsed as T;
}

export async function signIn(username: string, password: string): Promise<Session> {
  const { data } = await call<{ token: string; user_id: string; role: string }>("POST", "/v1/sessions", {
    username,
    password,
  });
  const session = { ...data, username };
  saveSession(session);
  return session;
}

export async function signUp(username: string, password: string): Promise<Session> {
  await call("POST", "/v1/users", { username, password });
  return signIn(username, password);
}

/** A bid id unique to this attempt: a retry of the same attempt reuses it (exactly-once). */
export function newBidId(): string {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
