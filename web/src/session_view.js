// The panel of one session: summary line, sets table, running-volume and heart-rate charts,
// and who is watching. Renders from a `SessionStore`; new sets are appended, not redrawn.

import { SeriesChart } from "./charts.js";
import { clear, fmtKg, fmtTime, h } from "./dom.js";

export class SessionView {
  constructor(store, { title = "Live session", me = null } = {}) {
    this.store = store;
    this.me = me;
    this.watchersEl = h("p.watchers", { dataset: { testid: "watchers" } });
    this.summaryEl = h("div.summary", { dataset: { testid: "summary" } });
    this.statsEl = h("p.stats", { dataset: { testid: "stats" } });
    this.tbody = h("tbody");
    this.rendered = 0;
    this.reorders = store.reorders;
    const volumeEl = h("div.chart", { dataset: { testid: "volume-chart" } });
    const hrEl = h("div.chart", { dataset: { testid: "hr-chart" } });
    this.el = h(
      "section.session",
      { dataset: { session: store.sessionId } },
      h("h3", {}, title),
      this.statsEl,
      this.summaryEl,
      this.watchersEl,
      h("div.charts",
        h("figure", {}, h("figcaption", {}, "Running volume"), volumeEl),
        h("figure", {}, h("figcaption", {}, "Heart rate"), hrEl)),
      h("table.sets", { dataset: { testid: "sets" } },
        h("thead", {}, h("tr", {}, ["#", "time", "exercise", "reps", "weight", "RPE", "device"]
          .map((c) => h("th", {}, c)))),
        this.tbody),
    );
    this._charts = () => {
      this.volume = new SeriesChart(volumeEl, "kg", "#2f6fde", () => store.volume, { stepped: true });
      this.heart = new SeriesChart(hrEl, "bpm", "#d43f3a", () => store.hr);
    };
  }

  /** Charts are created once the panel is in the document (uPlot measures its container). */
  mounted() {
    if (this._charts) {
      this._charts();
      this._charts = null;
    }
    this.render();
  }

  render(watchers = null) {
    const s = this.store;
    const bpm = s.lastBpm === null ? "–" : `${s.lastBpm} bpm`;
    this.statsEl.textContent = `${s.setCount} ${s.setCount === 1 ? "set" : "sets"} · ${fmtKg(s.totalVolume)} · ${bpm}`;
    this._renderSets();
    this.volume?.update();
    this.heart?.update();
    clear(this.summaryEl);
    if (s.status === "ended" && s.summary) {
      const m = s.summary;
      this.summaryEl.append(h("strong", {}, "Session ended: "),
        `${m.sets} sets, ${m.reps} reps, ${fmtKg(m.volume_kg)} in ${Math.round(m.duration_s / 60)} min`,
        m.avg_bpm ? `, avg ${m.avg_bpm} / max ${m.max_bpm} bpm` : "");
    }
    if (watchers) {
      const names = watchers.map((u) => (u === this.me ? `${u} (you)` : u));
      this.watchersEl.textContent = `Watching: ${names.join(", ") || "nobody"}`;
      this.watchersEl.dataset.count = String(watchers.length);
    }
  }

  _renderSets() {
    const sets = this.store.sets;
    // Sets arrive in order almost always and are prepended (newest on top); one that sorted
    // before a row already shown (`store.reorders` moved) redraws the table.
    if (this.reorders !== this.store.reorders) {
      clear(this.tbody);
      this.rendered = 0;
      this.reorders = this.store.reorders;
    }
    for (let i = this.rendered; i < sets.length; i++) {
      const s = sets[i];
      this.tbody.prepend(h("tr", { dataset: { eventId: s.event_id } },
        h("td", {}, i + 1), h("td", {}, s.server_ts ? fmtTime(s.server_ts) : ""),
        h("td", {}, s.exercise), h("td", {}, s.reps), h("td", {}, fmtKg(s.weight_kg)),
        h("td", {}, s.rpe ?? ""), h("td", {}, s.device ?? "by hand")));
    }
    this.rendered = sets.length;
  }

  destroy() {
    this.volume?.destroy();
    this.heart?.destroy();
  }
}
