// The trainer's view: the roster of linked clients with who is live (`trainer.clients`, then
// `trainer:<me>` events), a card per client updating with its live session, and a client's
// page: the live session (sets, charts, summary, watchers), the coach chat read-only, and
// past sessions (`sessions.recent`).

import { CoachPanel } from "./coach_panel.js";
import { rpc } from "./connection.js";
import { clear, fmtDate, fmtKg, h } from "./dom.js";
import { LiveSession } from "./live_session.js";
import { SessionStore } from "./session_store.js";
import { SessionView } from "./session_view.js";

export class TrainerApp {
  constructor(client, me, { tokens, state }) {
    this.client = client;
    this.me = me;
    this.tokens = tokens;
    this.state = state;
    this.clients = new Map(); // user_id → {user_id, name, live_session_id}
    this.live = new Map(); // session id → LiveSession (one subscription each, shared by views)
    this.cards = new Map(); // user_id → card element
    this.detail = null;
    this.rosterLoad = null; // the roster load in flight, if any
    this.rosterStale = false; // its reply may predate what the roster feed said since
    this.root = h("div.trainer");
  }

  async start(root) {
    root.append(this.root);
    const feed = this.client.newSubscription(`trainer:${this.me}`, { recoverable: true, positioned: true });
    feed.on("publication", (ctx) => this._feed(ctx.data));
    feed.on("subscribed", (ctx) => {
      if (ctx.wasRecovering && !ctx.recovered) this.loadRoster();
      else if (ctx.wasRecovering) this.state.resubscribed(true);
    });
    feed.subscribe();
    await this.loadRoster();
  }

  /** Load the roster. One load at a time: asked again while one is in flight, or given a
   * roster event meanwhile, the load asks once more, since a reply computed before that event
   * (RPC replies need not come in order) would undo it, a live client shown as not training. */
  loadRoster() {
    if (this.rosterLoad) {
      this.rosterStale = true;
      return this.rosterLoad;
    }
    this.rosterLoad = this._loadFreshRoster().finally(() => { this.rosterLoad = null; });
    return this.rosterLoad;
  }

  async _loadFreshRoster() {
    let clients;
    do {
      this.rosterStale = false;
      ({ clients } = await rpc(this.client, "trainer.clients"));
    } while (this.rosterStale);
    for (const c of clients) {
      this.clients.set(c.user_id, { ...this.clients.get(c.user_id), ...c });
      if (c.live_session_id) this._watch(c.live_session_id);
    }
    this.route();
  }

  /** Show the roster, or one client's page for `#/trainer/<user_id>`. */
  route() {
    const [, , userId] = location.hash.split("/");
    if (this.detail) {
      this.detail.destroy();
      this.detail = null;
    }
    clear(this.root);
    if (userId && this.clients.has(decodeURIComponent(userId))) {
      this.detail = new ClientPage(this, this.clients.get(decodeURIComponent(userId)));
      this.root.append(this.detail.el);
      this.detail.mounted();
    } else {
      this.root.append(this._roster());
    }
  }

  _feed(event) {
    if (this.rosterLoad) this.rosterStale = true;
    const known = this.clients.get(event.user_id);
    if (!known) return this.loadRoster(); // a client linked since the roster was loaded
    if (event.type === "client_session_started") {
      known.live_session_id = event.session_id;
      this._watch(event.session_id);
    } else if (event.type === "client_session_ended") {
      if (known.live_session_id === event.session_id) known.live_session_id = null;
      this._unwatch(event.session_id);
    }
    this._renderCard(event.user_id);
    if (this.detail?.client.user_id === event.user_id) this.detail.sessionChanged();
  }

  _watch(sessionId) {
    if (this.live.has(sessionId)) return this.live.get(sessionId);
    const live = new LiveSession(this.client, sessionId, { tokens: this.tokens, state: this.state }).start();
    this.live.set(sessionId, live);
    live.listen(() => {
      const owner = [...this.clients.values()].find((c) => c.live_session_id === sessionId);
      if (owner) this._renderCard(owner.user_id);
    });
    return live;
  }

  /** An ended session keeps its subscription only while its page shows it (the summary). */
  _unwatch(sessionId) {
    const live = this.live.get(sessionId);
    if (!live || this.detail?.view?.store === live.store) return;
    live.stop();
    this.live.delete(sessionId);
  }

  _roster() {
    this.cards.clear();
    const grid = h("div.roster", { dataset: { testid: "roster" } });
    const sorted = [...this.clients.values()].sort((a, b) =>
      Number(Boolean(b.live_session_id)) - Number(Boolean(a.live_session_id)) || a.user_id.localeCompare(b.user_id, undefined, { numeric: true }));
    for (const c of sorted) {
      const card = h("a.card", { href: `#/trainer/${encodeURIComponent(c.user_id)}`, dataset: { user: c.user_id } });
      this.cards.set(c.user_id, card);
      grid.append(card);
      this._renderCard(c.user_id);
    }
    const empty = h("p.muted", {}, "No linked clients yet. Run `fitsync-hub simulate --demo` to fill the demo.");
    return h("section", {}, h("h2", {}, "Clients"), sorted.length ? grid : empty);
  }

  _renderCard(userId) {
    const card = this.cards.get(userId);
    const c = this.clients.get(userId);
    if (!card || !c) return;
    const store = c.live_session_id ? this.live.get(c.live_session_id)?.store : null;
    card.dataset.live = String(Boolean(c.live_session_id));
    clear(card);
    card.append(
      h("div.name", {}, c.name || c.user_id, c.live_session_id ? h("span.badge", {}, "live") : null),
      h("div.muted", {}, c.user_id),
      store
        ? h("div.card-stats", {}, `${store.setCount} sets · ${fmtKg(store.totalVolume)}`,
            store.lastBpm ? ` · ${store.lastBpm} bpm` : "",
            store.sets.length ? h("div.last", {}, `last: ${lastSet(store)}`) : null)
        : h("div.muted", {}, "not training now"),
    );
  }
}

function lastSet(store) {
  const s = store.sets[store.sets.length - 1];
  return `${s.exercise} ${s.reps} × ${fmtKg(s.weight_kg)}`;
}

class ClientPage {
  constructor(app, client) {
    this.app = app;
    this.client = client;
    this.sessionSlot = h("div");
    this.pastEl = h("section.past", { dataset: { testid: "past-sessions" } }, h("h3", {}, "Past sessions"));
    this.coach = new CoachPanel(app.client, client.user_id, { readOnly: true });
    this.el = h("div.client-page", { dataset: { user: client.user_id } },
      h("p", {}, h("a", { href: "#/trainer" }, "← all clients")),
      h("h2", {}, client.name || client.user_id),
      h("div.columns", h("div.main", this.sessionSlot, this.pastEl), h("div.side", this.coach.el)));
    this.view = null;
    this.unlisten = null;
  }

  mounted() {
    this.sessionChanged();
    this.coach.start();
    this.loadPast();
  }

  /** Show the client's live session, or the last one opened if it just ended. */
  sessionChanged() {
    const sessionId = this.client.live_session_id;
    if (!sessionId) {
      if (!this.view) this.sessionSlot.replaceChildren(h("p.muted", {}, "Not training now."));
      this.loadPast();
      return;
    }
    if (this.view?.store.sessionId === sessionId) return;
    this._show(this.app._watch(sessionId));
  }

  _show(live) {
    this._drop();
    this.view = new SessionView(live.store, { title: "Live session", me: this.app.me });
    this.sessionSlot.replaceChildren(this.view.el);
    this.view.mounted();
    const render = () => this.view?.render(live.watcherUsers());
    this.unlisten = live.listen(render);
    render();
  }

  async openPast(sessionId) {
    const live = this.app.live.get(sessionId);
    if (live) return this._show(live);
    const store = new SessionStore(sessionId);
    const token = await this.app.tokens.current();
    const response = await fetch(`/app/sessions/${encodeURIComponent(sessionId)}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) return;
    store.load(await response.json());
    this._drop();
    this.view = new SessionView(store, { title: store.title || "Past session" });
    this.sessionSlot.replaceChildren(this.view.el);
    this.view.mounted();
  }

  async loadPast() {
    try {
      const { sessions } = await rpc(this.app.client, "sessions.recent", { user_id: this.client.user_id, limit: 10 });
      const rows = sessions.map((s) => h("tr", { dataset: { session: s.session_id },
        onclick: () => this.openPast(s.session_id) },
        h("td", {}, fmtDate(s.started_at)), h("td", {}, s.title || "workout"),
        h("td", {}, s.status), h("td", {}, `${s.summary.sets} sets`), h("td", {}, fmtKg(s.summary.volume_kg)),
        h("td", {}, s.summary.avg_bpm ? `${s.summary.avg_bpm} bpm avg` : "")));
      this.pastEl.replaceChildren(h("h3", {}, "Past sessions"),
        rows.length ? h("table.past-table", {}, h("tbody", {}, rows)) : h("p.muted", {}, "None yet."));
    } catch (error) {
      this.pastEl.replaceChildren(h("h3", {}, "Past sessions"), h("p.error", {}, error.message ?? String(error)));
    }
  }

  _drop() {
    this.unlisten?.();
    this.unlisten = null;
    this.view?.destroy();
    this.view = null;
  }

  destroy() {
    this._drop();
    this.coach.stop();
  }
}
