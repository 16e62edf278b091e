// The compare page: cells done of total, the cells' table, and the report (compare.md as text,
// its PNG figures) as it grows.
"use strict";

TB.Compare = class {
  constructor(main) {
    this.summary = TB.el("section", { class: "summary", id: "summary" });
    this.cells = TB.table(["cell", "scheme", "grid", "seed", "state", "rounds", "phase", "final perplexity"], { id: "cells" });
    this.figures = TB.el("div", { class: "figures", id: "figures" });
    this.report = TB.el("pre", { class: "report", id: "report" });
    this.reportStamp = null;
    this.figureStamps = "";
    this.warnings = TB.el("ol", { class: "log", id: "warnings" });
    main.append(this.summary, TB.el("section", {}, TB.el("h3", { text: "cells" }), this.cells.table),
      TB.el("section", {}, TB.el("h3", { text: "report figures" }), this.figures),
      TB.el("section", {}, TB.el("h3", { text: "compare.md" }), this.report),
      TB.el("section", {}, TB.el("h3", { text: "warnings (newest first)" }), this.warnings));
  }

  render(v, files, rel) {
    this.summary.replaceChildren(
      TB.el("span", { class: "item" }, TB.el("b", { text: "cells" }), ` ${v.cells_done} of ${v.cells_total} done`),
      TB.el("span", { class: "item" }, TB.el("b", { text: "running" }), ` ${(v.running || []).map((c) => `${c.cell} (round ${c.current_round ?? "?"})`).join(", ") || "none"}`),
      TB.el("span", { class: "item" }, TB.el("b", { text: "schemes" }), ` ${(v.schemes || []).join(", ")}`),
    );
    TB.fillTable(this.cells.tbody, (v.cells || []).map((c) => ({
      attrs: { "data-cell": c.cell, "data-state": c.state },
      cells: [
        // A cell's run has a live page of its own when its folder is inside this compare's.
        typeof c.run_dir === "string" && c.run_dir.startsWith(v.path + "/")
          ? TB.el("a", { href: TB.viewHref((rel ? rel + "/" : "") + c.run_dir.slice(v.path.length + 1)), text: c.cell })
          : c.cell,
        c.scheme, Object.entries(c.grid || {}).map(([k, x]) => `${k}=${x}`).join(" "), String(c.seed ?? "–"),
        TB.statusBadge(c.state), `${c.rounds_done ?? 0} of ${c.rounds_total ?? "?"}`, c.phase ?? "–", TB.num(c.final_ppl),
      ],
    })));
    const base = `/files/${rel.split("/").map(encodeURIComponent).join("/")}${rel ? "/" : ""}`;
    const pngs = files.filter((f) => f.name.endsWith(".png"));
    const stamps = pngs.map((f) => `${f.name}@${f.mtime}`).join("|");
    if (stamps !== this.figureStamps) {
      this.figureStamps = stamps;
      this.figures.replaceChildren(...pngs.map((f) => TB.el("figure", {},
        TB.el("img", { src: `${base}${encodeURIComponent(f.name)}?t=${f.mtime}`, alt: f.name, loading: "lazy" }),
        TB.el("figcaption", { text: f.name }))));
    }
    const md = files.find((f) => f.name === "compare.md");
    if (md && md.mtime !== this.reportStamp) {
      this.reportStamp = md.mtime;
      fetch(`${base}compare.md`, { cache: "no-store" }).then((r) => (r.ok ? r.text() : "")).then((text) => { this.report.textContent = text; });
    } else if (!md) this.report.textContent = "(no report yet: it is written when the cells finish)";
    this.warnings.replaceChildren(...(v.warnings || []).slice().reverse().map((w) =>
      TB.el("li", {}, TB.el("time", { text: TB.time(w.time) }), " ", TB.el("b", { text: w.cell || "" }), " ", `${w.logger}: ${w.message}`)));
  }
};
