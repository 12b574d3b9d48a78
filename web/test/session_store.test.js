// Unit tests of the page's session state, run by `node --test` (the suite runs them).

import assert from "node:assert/strict";
import { test } from "node:test";

import { SessionStore, upperBound } from "../src/session_store.js";

const set = (id, ts, reps = 5, weight = 100) =>
  ({ type: "set", event_id: id, exercise: "squat", reps, weight_kg: weight, server_ts: ts });
const hr = (id, samples) => ({ type: "hr", event_id: id, samples });

test("an event seen live and again in the reloaded snapshot is kept once", () => {
  const store = new SessionStore("s1");
  assert.equal(store.apply(set("a", 1000)), true);
  assert.equal(store.apply(set("a", 1000)), false);
  store.load({ session: { status: "active" }, sets: [set("a", 1000), set("b", 2000)], hr: [hr("h", [[1000, 120]])] });
  store.load({ session: { status: "active" }, sets: [set("b", 2000)], hr: [hr("h", [[1000, 120]])] });
  assert.deepEqual(store.sets.map((s) => s.event_id), ["a", "b"]);
  assert.deepEqual(store.hr, [[1], [120]]);
});

test("running volume follows acceptance order, also for a set that arrives late", () => {
  const store = new SessionStore("s1");
  store.apply(set("c", 3000, 10, 10));
  store.apply(set("a", 1000, 5, 100));
  store.apply(set("b", 2000, 2, 50));
  assert.deepEqual(store.sets.map((s) => s.event_id), ["a", "b", "c"]);
  assert.deepEqual(store.volume, [[1, 2, 3], [500, 600, 700]]);
  assert.equal(store.totalVolume, 700);
  assert.equal(store.reorders, 2);
});

test("heart-rate samples are sorted by time and a second reported twice is kept once", () => {
  const store = new SessionStore("s1");
  store.apply(hr("h2", [[3000, 130], [4000, 135]]));
  store.apply(hr("h1", [[1000, 110], [2000, 120], [3000, 131]]));
  assert.deepEqual(store.hr, [[1, 2, 3, 4], [110, 120, 130, 135]]);
  assert.equal(store.lastBpm, 135);
});

test("the ended status carries the summary", () => {
  const store = new SessionStore("s1");
  store.apply({ type: "status", status: "ended", session_id: "s1", summary: { sets: 1 } });
  assert.equal(store.status, "ended");
  assert.deepEqual(store.summary, { sets: 1 });
});

test("upperBound keeps equal keys in arrival order", () => {
  assert.equal(upperBound([1, 2, 2, 3], 2, (v) => v), 3);
  assert.equal(upperBound([], 5, (v) => v), 0);
  assert.equal(upperBound([1, 5], 0, (v) => v), 0);
});
