// What the page measures about itself, read by the browser tests and the speed test:
// event-to-render delay, from the hub's `server_ts` to the end of the animation frame that
// put the event on screen (renders are batched: one per frame, however many events came),
// and the page's own part of it, from the publication's arrival in the page to that frame.

export const metrics = {
  renderDelaysMs: [],
  pageDelaysMs: [],
  eventsRendered: 0,
  tokensFetched: 0,
};
window.fitsyncMetrics = metrics;

const pending = [];
const renderers = new Set();
let scheduled = false;

/** Run `render` in the next animation frame, once; `serverTs` is the event that caused it. */
export function scheduleRender(render, serverTs) {
  if (render) renderers.add(render);
  if (serverTs) pending.push([serverTs, performance.now()]);
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(flush);
}

function flush() {
  scheduled = false;
  const batch = [...renderers];
  renderers.clear();
  for (const render of batch) {
    try {
      render();
    } catch (error) {
      console.error("render failed:", error);
    }
  }
  const now = Date.now();
  const tick = performance.now();
  for (const [serverTs, arrived] of pending.splice(0)) {
    metrics.renderDelaysMs.push(now - serverTs);
    metrics.pageDelaysMs.push(tick - arrived);
    metrics.eventsRendered += 1;
  }
}
