// Running volume and heart rate over time, drawn with uPlot (canvas: cheap to redraw per event).

import uPlot from "uplot";

const MIN_SPAN_S = 60;

function chart(target, label, stroke, stepped) {
  const width = Math.max(280, target.clientWidth || 480);
  const options = {
    width,
    height: 180,
    legend: { show: false },
    scales: { x: { time: true } },
    axes: [{}, { label, size: 56 }],
    series: [
      {},
      {
        label,
        stroke,
        width: 2,
        fill: `${stroke}22`,
        paths: stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        // Dots only while there are few points: a single one would be invisible as a line.
        points: { show: (u) => u.data[0].length < 3 },
      },
    ],
  };
  return new uPlot(options, [[], []], target);
}

/** A chart bound to one of a store's series; `update()` redraws from it. */
export class SeriesChart {
  constructor(target, label, stroke, series, { stepped = false } = {}) {
    this.target = target;
    this.series = series;
    this.plot = chart(target, label, stroke, stepped);
    this.update();
  }

  update() {
    const [xs, ys] = this.series();
    const span = xs.length ? xs[xs.length - 1] - xs[0] : 0;
    // uPlot keeps the arrays it is given: pass copies, the store keeps growing its own.
    this.plot.setData([xs.slice(), ys.slice()], span >= MIN_SPAN_S);
    if (xs.length && span < MIN_SPAN_S) {
      // A single point would stretch the time axis over years: show a minute from the first.
      this.plot.setScale("x", { min: xs[0] - 5, max: xs[0] + MIN_SPAN_S - 5 });
    }
    this.target.dataset.points = String(xs.length);
  }

  destroy() {
    this.plot.destroy();
  }
}
