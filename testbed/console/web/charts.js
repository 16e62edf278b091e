// Line charts on uPlot (vendored: static/vendor/uplot). One object per chart; set() replaces
// its data with uPlot's setData, which redraws without rebuilding the chart.
"use strict";

TB.PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#843c39", "#6b6ecf", "#637939", "#ce6dbd",
];

TB.Chart = class {
  // series: [{label, color?}]; opts: {stacked: bool, ylabel: string}
  constructor(parent, name, title, series, opts) {
    this.name = name;
    this.series = series;
    this.opts = opts || {};
    this.box = TB.el("div", { class: "chart", "data-chart": name, "data-points": 0 }, TB.el("h3", { text: title }));
    this.plotBox = TB.el("div", { class: "plot" });
    this.box.append(this.plotBox);
    parent.append(this.box);
    this.plot = null;
  }

  width() {
    return Math.max(240, this.box.clientWidth - 16);
  }

  make(data) {
    const stacked = !!this.opts.stacked;
    const series = [{ label: "round" }].concat(
      this.series.map((s, i) => ({
        label: s.label,
        stroke: s.color || TB.PALETTE[i % TB.PALETTE.length],
        fill: stacked ? (s.color || TB.PALETTE[i % TB.PALETTE.length]) + "cc" : undefined,
        width: 1.5,
        points: { show: true, size: stacked ? 3 : 5 },
        spanGaps: false,
      })),
    );
    this.plot = new uPlot(
      {
        width: this.width(),
        height: 200,
        scales: { x: { time: false } },
        // Whole rounds on the x axis.
        axes: [{ label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] }, { label: this.opts.ylabel || "", size: 60, values: (u, ticks) => ticks.map((t) => (t === null ? "" : String(Number(t.toPrecision(4))))) }],
        series,
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
      },
      data,
      this.plotBox,
    );
  }

  // x: round numbers; ys: one array per series (null where a round has no value).
  set(x, ys) {
    let data = [x].concat(ys);
    if (this.opts.stacked) {
      // Stacked areas: series i shows the sum of parts i..n-1, drawn first (the whole) to last.
      const sums = [];
      let acc = x.map(() => 0);
      for (let i = ys.length - 1; i >= 0; i--) {
        acc = acc.map((a, j) => a + (ys[i][j] ?? 0));
        sums.unshift(acc.slice());
      }
      data = [x].concat(sums);
    }
    if (this.plot === null) this.make(data);
    else this.plot.setData(data);
    const drawn = x.filter((_, j) => ys.some((y) => y[j] !== null && y[j] !== undefined)).length;
    this.box.dataset.points = String(drawn);
  }

  resize() {
    if (this.plot !== null) this.plot.setSize({ width: this.width(), height: 200 });
  }
};
