// The campaign page: the gain map filling in as points are measured (each antenna's gain,
// summed over the clients, at the cell it read), points done of total, the latest point's gains.
"use strict";

TB.viridis = function (t) {
  // A few stops of matplotlib's viridis, interpolated (t in [0, 1]).
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const u = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(u));
  const f = u - i;
  const c = stops[i].map((v, j) => Math.round(v + f * (stops[i + 1][j] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
};

TB.Campaign = class {
  constructor(main) {
    this.summary = TB.el("section", { class: "summary", id: "summary" });
    this.size = 420;
    this.svg = TB.svg("svg", { id: "gainmap", viewBox: `0 0 ${this.size} ${this.size}`, width: this.size, height: this.size, role: "img" });
    this.scale = TB.el("p", { class: "muted legend" });
    this.latest = TB.table(["client", "antenna", "gain (dB)", "SNR (dB)"], { id: "latest" });
    this.log = TB.el("ol", { class: "log", id: "log" });
    main.append(
      this.summary,
      TB.el("section", { class: "lab" },
        TB.el("div", { class: "mapbox" }, TB.el("h3", { text: "gain map (dB, summed over the clients)" }), this.svg, this.scale),
        TB.el("div", { class: "tables" }, TB.el("h3", { text: "latest point" }), this.latest.table)),
      TB.el("section", {}, TB.el("h3", { text: "event log (newest first)" }), this.log),
    );
  }

  render(v) {
    const items = [["points", `${v.points_done} of ${v.points_total ?? "?"}`]];
    if (v.phase) items.push(["phase", `${v.phase.phase} (${TB.duration(v.phase.elapsed_s)})`]);
    if (v.eta_s !== null && v.eta_s !== undefined) items.push(["ETA", TB.duration(v.eta_s)]);
    if (v.stop_reason) items.push(["ended", v.stop_reason]);
    this.summary.replaceChildren(...items.map(([k, val]) => TB.el("span", { class: "item" }, TB.el("b", { text: k }), " ", val)));
    this.renderMap(v);
    const latest = v.latest || {};
    const rows = [];
    (latest.gain_db || []).forEach((perAntenna, c) => {
      (Array.isArray(perAntenna) ? perAntenna : [perAntenna]).forEach((g, a) => {
        const snr = Array.isArray(latest.snr_db) ? latest.snr_db[c] : null;
        rows.push({ cells: [String(c), String(a), TB.num(g, 2), TB.num(Array.isArray(snr) ? snr[a] : snr, 2)] });
      });
    });
    TB.fillTable(this.latest.tbody, rows);
    this.log.replaceChildren(...(v.log || []).slice().reverse().map((e) =>
      TB.el("li", {}, TB.el("time", { text: TB.time(e.time) }), " ", TB.el("b", { text: e.kind }), " ", e.text)));
  }

  renderMap(v) {
    const gx = v.grid_x_m || [], gy = v.grid_y_m || [];
    const cells = [];
    const latest = v.latest ? v.latest.point : null;
    for (const p of v.points || []) {
      const pos = Array.isArray(p.positions_m) && Array.isArray(p.positions_m[0]) ? p.positions_m : [p.positions_m];
      pos.forEach((xy, a) => { if (Array.isArray(xy)) cells.push({ x: xy[0], y: xy[1], g: (p.gain_db || [])[a] ?? null, latest: p.point === latest }); });
    }
    const xs = gx.concat(cells.map((c) => c.x)), ys = gy.concat(cells.map((c) => c.y));
    if (!xs.length) { this.svg.replaceChildren(); this.svg.dataset.cells = "0"; return; }
    const step = (arr) => { const s = [...new Set(arr)].sort((a, b) => a - b); let d = Infinity; for (let i = 1; i < s.length; i++) d = Math.min(d, s[i] - s[i - 1]); return isFinite(d) ? d : 0.01; };
    const dx = step(xs), dy = step(ys);
    const lo = Math.min(Math.min(...xs) - dx / 2, Math.min(...ys) - dy / 2);
    const hi = Math.max(Math.max(...xs) + dx / 2, Math.max(...ys) + dy / 2);
    const k = this.size / (hi - lo);
    const X = (x) => (x - dx / 2 - lo) * k, Y = (y) => this.size - (y + dy / 2 - lo) * k;
    const kids = [];
    for (const x of gx) for (const y of gy) kids.push(TB.svg("rect", { class: "todo", x: X(x), y: Y(y), width: dx * k, height: dy * k }));
    // The latest point's cells last, so that their outline is on top.
    cells.sort((a, b) => (a.latest ? 1 : 0) - (b.latest ? 1 : 0));
    const gains = cells.map((c) => c.g).filter((g) => typeof g === "number");
    const gmin = Math.min(...gains), gmax = Math.max(...gains);
    for (const c of cells) {
      const t = typeof c.g === "number" && gmax > gmin ? (c.g - gmin) / (gmax - gmin) : 0.5;
      const r = TB.svg("rect", { class: c.latest ? "cell latest" : "cell", x: X(c.x), y: Y(c.y), width: dx * k, height: dy * k, fill: typeof c.g === "number" ? TB.viridis(t) : "#999", "data-gain": c.g });
      const title = TB.svg("title");
      title.textContent = `(${TB.num(c.x)}, ${TB.num(c.y)}) m: ${TB.num(c.g, 2)} dB`;
      r.append(title);
      kids.push(r);
    }
    this.svg.replaceChildren(...kids);
    this.svg.dataset.cells = String(cells.length);
    this.scale.textContent = gains.length ? `colour: ${TB.num(gmin, 1)} dB (dark) to ${TB.num(gmax, 1)} dB (yellow); grey: not measured yet; outlined: the latest point` : "no point measured yet";
  }
};
