// The state of one workout session as the page shows it: sets, heart rate, status.
//
// Every event is keyed by its `event_id`, so an event that reaches the page twice (a live
// publication and the snapshot reloaded after a failed recovery, or a recovered publication
// and a live one) is kept once. Sets are kept in the hub's acceptance order (`server_ts`);
// the chart series are kept sorted incrementally, so one event costs O(log n) plus the
// insertion, not a re-sort of the session. Pure: no DOM, no network (unit-tested with node).

export class SessionStore {
  constructor(sessionId) {
    this.sessionId = sessionId;
    this.sets = [];            // set events ordered by server_ts, then arrival
    this.volume = [[], []];    // [x: seconds, y: running volume in kg], one point per set
    this.hr = [[], []];        // [x: seconds, y: bpm], ordered by time
    this.status = "active";
    this.summary = null;
    this.title = "";
    this.user = null;
    this.reorders = 0;         // sets inserted before the last one (views redraw then)
    this._setIds = new Set();
    this._hrIds = new Set();
    this._hrTimes = new Set();
  }

  get setCount() {
    return this.sets.length;
  }

  get totalVolume() {
    const ys = this.volume[1];
    return ys.length ? ys[ys.length - 1] : 0;
  }

  get lastBpm() {
    const ys = this.hr[1];
    return ys.length ? ys[ys.length - 1] : null;
  }

  /** Apply one publication's data; returns true when it changed the state. */
  apply(event) {
    if (!event || typeof event !== "object") return false;
    if (event.type === "set") return this._addSet(event);
    if (event.type === "hr") return this._addHr(event);
    if (event.type === "status") {
      if (event.status === "ended") {
        this.status = "ended";
        this.summary = event.summary ?? this.summary;
        return true;
      }
      return false;
    }
    return false;
  }

  /** Merge a snapshot (`GET /app/sessions/{id}`); events already held are not added again. */
  load(snapshot) {
    const session = snapshot.session ?? {};
    this.title = session.title ?? this.title;
    this.user = session.user_id ?? this.user;
    if (session.status === "ended") {
      this.status = "ended";
      this.summary = session.summary ?? this.summary;
    }
    for (const set of snapshot.sets ?? []) this._addSet(set);
    for (const hr of snapshot.hr ?? []) this._addHr(hr);
  }

  _addSet(event) {
    if (this._setIds.has(event.event_id)) return false;
    this._setIds.add(event.event_id);
    const at = upperBound(this.sets, event.server_ts ?? 0, (s) => s.server_ts ?? 0);
    if (at < this.sets.length) this.reorders += 1;
    this.sets.splice(at, 0, event);
    this._rebuildVolumeFrom(at);
    return true;
  }

  _rebuildVolumeFrom(index) {
    const [xs, ys] = this.volume;
    xs.length = index;
    ys.length = index;
    let total = index ? ys[index - 1] : 0;
    for (let i = index; i < this.sets.length; i++) {
      const s = this.sets[i];
      total = Math.round((total + s.reps * s.weight_kg) * 10) / 10;
      xs.push((s.server_ts ?? 0) / 1000);
      ys.push(total);
    }
  }

  _addHr(event) {
    if (this._hrIds.has(event.event_id)) return false;
    this._hrIds.add(event.event_id);
    const [xs, ys] = this.hr;
    for (const [ts, bpm] of event.samples ?? []) {
      if (this._hrTimes.has(ts)) continue; // two devices reporting the same second
      this._hrTimes.add(ts);
      const x = ts / 1000;
      const at = upperBound(xs, x, (v) => v);
      xs.splice(at, 0, x);
      ys.splice(at, 0, bpm);
    }
    return true;
  }
}

/** First index whose key is greater than `key` (so equal keys keep arrival order). */
export function upperBound(items, key, keyOf) {
  let lo = 0;
  let hi = items.length;
  if (hi && keyOf(items[hi - 1]) <= key) return hi; // the common case: in order
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keyOf(items[mid]) <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
