// Running volume and heart rate over time, drawn with uPlot (canvas: cheap to redraw per event).

import uPlot from "uplot";

function chart(target, label, stroke, stepped) {
  const width = Math.max(280, target.clientWidth || 480);
  const options = {
    width,
    height: 180,
    legend: { show: false },
    // One point (or none) would stretch the time axis over years: show a minute around it.
    scales: { x: { time: true, range: (u, min, max) => (max - min < 60 ? [min - 30, min + 30] : [min, max]) } },
    axes: [{}, { label, size: 56 }],
    series: [
      {},
      {
        label,
        stroke,
        width: 2,
        fill: `${stroke}22`,
        paths: stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
        points: { show: false },
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
    // uPlot keeps the arrays it is given: pass copies, the store keeps growing its own.
    this.plot.setData([xs.slice(), ys.slice()]);
    this.target.dataset.points = String(xs.length);
  }

  destroy() {
    this.plot.destroy();
  }
}
