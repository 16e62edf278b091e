// The run page: charts per round, the antenna map, the stage and node tables, the event log.
"use strict";

TB.Run = class {
  constructor(main) {
    this.summary = TB.el("section", { class: "summary", id: "summary" });
    const charts = TB.el("section", { class: "charts" });
    this.charts = {
      ppl: new TB.Chart(charts, "ppl", "validation perplexity", [{ label: "val ppl" }], { ylabel: "perplexity" }),
      nmse: new TB.Chart(charts, "nmse", "aggregation NMSE", [{ label: "movable array" }, { label: "fixed array" }], { ylabel: "dB" }),
      energy: new TB.Chart(charts, "energy", "cumulative energy", [{ label: "energy (J)" }], { ylabel: "J" }),
      latency: new TB.Chart(charts, "latency", "cumulative latency", [{ label: "latency (s)" }], { ylabel: "s" }),
    };
    this.breakdownBox = TB.el("div", { class: "breakdown" });
    charts.append(this.breakdownBox);
    this.breakdown = null;
    this.breakdownKeys = "";
    this.map = new TB.AntennaMap();
    this.stages = TB.table(["stage", "state", "position (m)", "target (m)", "alarm"], { id: "stages" });
    this.nodes = TB.table(["node", "alive", "heartbeat age", "last train", "tokens/s", "GPU memory", "selected"], { id: "nodes" });
    this.log = TB.el("ol", { class: "log", id: "log" });
    main.append(
      this.summary,
      charts,
      TB.el("section", { class: "lab" },
        TB.el("div", { class: "mapbox" }, TB.el("h3", { text: "antennas" }), this.map.svg, this.map.legend),
        TB.el("div", { class: "tables" },
          TB.el("h3", { text: "stages" }), this.stages.table,
          TB.el("h3", { text: "nodes" }), this.nodes.table)),
      TB.el("section", {}, TB.el("h3", { text: "event log (newest first)" }), this.log),
    );
    window.addEventListener("resize", () => Object.values(this.charts).concat(this.breakdown ? [this.breakdown] : []).forEach((c) => c.resize()));
  }

  render(v) {
    this.renderSummary(v);
    const rows = v.rounds || [];
    const x = rows.map((r) => r.round);
    const col = (key) => rows.map((r) => (typeof r[key] === "number" ? r[key] : null));
    this.charts.ppl.set(x, [col("val_ppl")]);
    this.charts.nmse.set(x, [col("nmse_ma_db"), col("nmse_fpa_db")]);
    this.charts.energy.set(x, [col("energy_j")]);
    this.charts.latency.set(x, [col("latency_s")]);
    this.renderBreakdown(x, rows);
    this.map.render(v.antennas || {}, rows, v.stages || []);
    this.renderTables(v);
    this.renderLog(v.log || []);
  }

  renderSummary(v) {
    const items = [];
    const total = v.rounds_total ?? "?";
    items.push(["round", v.current_round !== null && v.current_round !== undefined ? `${v.current_round} of ${total}` : `${v.rounds_done} of ${total} done`]);
    if (v.phase) items.push(["phase", `${v.phase.phase} (${TB.duration(v.phase.elapsed_s)})`]);
    if (v.eta_s !== null && v.eta_s !== undefined) items.push(["ETA", TB.duration(v.eta_s)]);
    const b = v.budgets || {};
    items.push(["energy", `${TB.num(b.energy_j)} J of ${TB.num(b.energy_budget_j)} J`]);
    items.push(["latency", `${TB.num(b.latency_s)} s of ${TB.num(b.latency_budget_s)} s`]);
    if (v.stop_request) items.push(["stop", `requested by ${v.stop_request.by || "?"}${v.stop_request.now ? " (now)" : " (end of round)"}`]);
    if (v.stop_reason) items.push(["ended", v.stop_reason]);
    this.summary.replaceChildren(...items.map(([k, val]) => TB.el("span", { class: "item" }, TB.el("b", { text: k }), " ", val)));
  }

  renderBreakdown(x, rows) {
    const keys = [];
    for (const r of rows) for (const k of Object.keys(r.time_breakdown_s || {})) if (!keys.includes(k)) keys.push(k);
    if (keys.join("|") !== this.breakdownKeys) {
      // New parts appeared: a new chart (uPlot's series are fixed at creation).
      this.breakdownKeys = keys.join("|");
      this.breakdownBox.replaceChildren();
      this.breakdown = new TB.Chart(this.breakdownBox, "breakdown", "time per round, by part (stacked)",
        (keys.length ? keys : ["(none)"]).map((k) => ({ label: k })), { stacked: true, ylabel: "s" });
    }
    const ys = (keys.length ? keys : ["(none)"]).map((k) => rows.map((r) => (typeof (r.time_breakdown_s || {})[k] === "number" ? r.time_breakdown_s[k] : null)));
    this.breakdown.set(x, ys);
  }

  renderTables(v) {
    const pos = (p) => (Array.isArray(p) ? `(${TB.num(p[0])}, ${TB.num(p[1])})` : "–");
    TB.fillTable(this.stages.tbody, (v.stages || []).map((s) => ({
      attrs: { "data-stage": s.stage, "data-state": s.state },
      cells: [s.stage, TB.el("span", { class: `state state-${String(s.state).replace(/[^a-z]/g, "")}`, text: s.state }), pos(s.position_m), pos(s.target_m), s.alarm ?? "–"],
    })));
    const yesno = (b) => (b === null || b === undefined ? "–" : b ? "yes" : "no");
    TB.fillTable(this.nodes.tbody, (v.nodes || []).map((n) => ({
      attrs: { "data-node": n.node, class: n.alive === false ? "dead" : "" },
      cells: [n.node, yesno(n.alive), TB.duration(n.heartbeat_age_s), TB.duration(n.train_s), TB.num(n.tokens_per_s, 1),
        typeof n.gpu_mem_bytes === "number" ? `${(n.gpu_mem_bytes / 2 ** 30).toFixed(2)} GiB` : "–", yesno(n.selected)],
    })));
  }

  renderLog(log) {
    const items = log.slice().reverse().map((e) =>
      TB.el("li", { class: `log-${String(e.kind).replace(/[^a-z_]/g, "")}` },
        TB.el("time", { text: TB.time(e.time) }), " ", TB.el("b", { text: e.kind }), " ", e.text));
    this.log.replaceChildren(...items);
  }
};

// The antenna region seen from above: the square of side A centred on 0, each antenna's path
// this run, where it is now (colour: its stage's state), a dashed circle of radius D/2 around it
// (two circles may touch, never overlap), and where a moving stage is heading.
TB.AntennaMap = class {
  constructor() {
    this.size = 360;
    this.svg = TB.svg("svg", { id: "map", viewBox: `0 0 ${this.size} ${this.size}`, width: this.size, height: this.size, role: "img" });
    this.legend = TB.el("p", { class: "muted legend" });
  }

  render(ant, rows, stages) {
    // A position is known when both coordinates are numbers (a homing stage reports none).
    const known = (p) => Array.isArray(p) && typeof p[0] === "number" && typeof p[1] === "number";
    const A = typeof ant.region_m === "number" ? ant.region_m : null;
    const now = Array.isArray(ant.positions_m) ? ant.positions_m : [];
    const paths = now.map(() => []);
    const home = Array.isArray(ant.homed_m) ? ant.homed_m : null;
    for (const r of [{ positions_m: home }].concat(rows)) {
      if (!Array.isArray(r.positions_m)) continue;
      r.positions_m.forEach((p, a) => { if (a < paths.length && known(p)) paths[a].push(p); });
    }
    // The frame: the region plus every point shown, with a margin.
    const pts = paths.flat().concat(now.filter(known));
    const half = A !== null ? A / 2 : 0.5;
    let lo = -half, hi = half;
    for (const p of pts) { lo = Math.min(lo, p[0], p[1]); hi = Math.max(hi, p[0], p[1]); }
    const pad = (hi - lo) * 0.08 + 1e-6;
    lo -= pad; hi += pad;
    const k = this.size / (hi - lo);
    const X = (x) => (x - lo) * k;
    const Y = (y) => this.size - (y - lo) * k;
    const kids = [];
    if (A !== null) kids.push(TB.svg("rect", { class: "region", x: X(-half), y: Y(half), width: A * k, height: A * k }));
    const D = typeof ant.clearance_m === "number" ? ant.clearance_m : null;
    paths.forEach((path, a) => {
      if (path.length > 1) kids.push(TB.svg("polyline", { class: "path", stroke: TB.PALETTE[a % TB.PALETTE.length], points: path.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") }));
    });
    now.forEach((p, a) => {
      if (!known(p)) return;
      const stage = stages[a] || null;
      const color = TB.PALETTE[a % TB.PALETTE.length];
      if (D !== null && D > 0) kids.push(TB.svg("circle", { class: "clearance", cx: X(p[0]), cy: Y(p[1]), r: (D / 2) * k }));
      if (stage && Array.isArray(stage.target_m) && stage.state === "moving") {
        kids.push(TB.svg("line", { class: "target", x1: X(p[0]), y1: Y(p[1]), x2: X(stage.target_m[0]), y2: Y(stage.target_m[1]) }));
      }
      const dot = TB.svg("circle", {
        class: `antenna state-${stage ? String(stage.state).replace(/[^a-z]/g, "") : "unknown"}`,
        cx: X(p[0]), cy: Y(p[1]), r: 6, fill: color,
        "data-antenna": a, "data-x": p[0], "data-y": p[1], "data-state": stage ? stage.state : "",
      });
      const title = TB.svg("title");
      title.textContent = `antenna ${a}${stage ? ` (${stage.stage}: ${stage.state})` : ""} at (${TB.num(p[0])}, ${TB.num(p[1])}) m`;
      dot.append(title);
      kids.push(dot);
      // Labels to the left of antennas near the right edge, so that they stay inside the map.
      const left = X(p[0]) > this.size * 0.7;
      const label = TB.svg("text", { x: X(p[0]) + (left ? -9 : 9), y: Y(p[1]) - 8, class: "label", "text-anchor": left ? "end" : "start" });
      label.textContent = stage ? `${stage.stage} ${stage.state}` : `${a}`;
      kids.push(label);
    });
    this.svg.replaceChildren(...kids);
    this.svg.dataset.antennas = String(now.filter(known).length);
    this.legend.textContent = `region A = ${A !== null ? TB.num(A) + " m" : "?"} (square), clearance D = ${D !== null ? TB.num(D) + " m" : "?"} (dashed: D/2 around each antenna); lines: this run's path from home`;
  }
};
