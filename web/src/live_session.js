// One live session channel on the page: its subscription, its store, who is watching.
//
// Exactly once across reconnects: the subscription is recoverable, so after a reconnect the
// hub replays what was missed from channel history (`recovered: true`). When it cannot
// (`recovered: false`: history no longer reaches back, or the stream's epoch changed) the
// page reloads the session from the hub (`GET /app/sessions/{id}`) and merges it; the store
// keys events by `event_id`, so nothing is shown twice and nothing is left out. The first
// subscribe also loads the snapshot: it holds what happened before the page opened.

import { SessionStore } from "./session_store.js";
import { scheduleRender } from "./metrics.js";

export class LiveSession {
  constructor(client, sessionId, { tokens, state }) {
    this.client = client;
    this.sessionId = sessionId;
    this.channel = `session:${sessionId}`;
    this.tokens = tokens;
    this.state = state;
    this.store = new SessionStore(sessionId);
    this.watchers = new Map(); // client id → user
    this.listeners = new Set();
    this.loaded = false;
    this.sub = null;
  }

  /** Call `fn()` after changes (events, watchers, the snapshot), at most once per frame. */
  listen(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  start() {
    const sub = this.client.newSubscription(this.channel, {
      recoverable: true,
      positioned: true,
      joinLeave: true,
    });
    this.sub = sub;
    let first = true;
    sub.on("publication", (ctx) => {
      if (this.store.apply(ctx.data)) this._changed(ctx.data.server_ts);
    });
    sub.on("subscribed", async (ctx) => {
      if (first) {
        first = false;
        await this.reload();
      } else if (ctx.wasRecovering) {
        if (!ctx.recovered) await this.reload();
        this.state.resubscribed(ctx.recovered);
      }
      await this._loadWatchers();
    });
    sub.on("join", (ctx) => {
      this.watchers.set(ctx.info.client, ctx.info.user);
      this._changed();
    });
    sub.on("leave", (ctx) => {
      this.watchers.delete(ctx.info.client);
      this._changed();
    });
    sub.on("error", (ctx) => console.warn(`${this.channel}:`, ctx.error));
    sub.subscribe();
    return this;
  }

  stop() {
    if (!this.sub) return;
    this.sub.unsubscribe();
    this.client.removeSubscription(this.sub);
    this.sub = null;
    this.listeners.clear();
  }

  async reload() {
    const token = await this.tokens.current();
    const response = await fetch(`/app/sessions/${encodeURIComponent(this.sessionId)}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (response.status === 401 && this.tokens.signIn.kind === "dev") {
      await this.tokens.fresh();
      return this.reload();
    }
    if (!response.ok) throw new Error(`session ${this.sessionId}: HTTP ${response.status}`);
    this.store.load(await response.json());
    this.loaded = true;
    this._changed();
  }

  /** Distinct users watching, the page's own user included. */
  watcherUsers() {
    return [...new Set(this.watchers.values())].sort();
  }

  async _loadWatchers() {
    try {
      const result = await this.sub.presence();
      this.watchers = new Map(Object.entries(result.clients).map(([id, info]) => [id, info.user]));
      this._changed();
    } catch (error) {
      console.warn(`${this.channel} presence:`, error);
    }
  }

  _changed(serverTs) {
    scheduleRender(null, serverTs);
    for (const fn of this.listeners) scheduleRender(fn);
  }
}
