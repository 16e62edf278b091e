// The index: one row per run, campaign and compare under the served folder, refreshed every 2 s.
"use strict";

async function refreshIndex() {
  let body;
  try {
    const reply = await fetch("/api/index", { cache: "no-store" });
    if (!reply.ok) throw new Error(String(reply.status));
    body = await reply.json();
    document.body.classList.remove("offline");
  } catch (err) {
    document.body.classList.add("offline");
    return;
  }
  document.getElementById("root").textContent = body.root;
  // Newest first.
  body.rows.sort((a, b) => (b.started ?? 0) - (a.started ?? 0));
  const rows = body.rows.map((row) => ({
    attrs: { "data-rel": row.rel, "data-kind": row.kind, "data-status": row.status },
    cells: [
      row.kind,
      TB.el("a", { href: TB.viewHref(row.rel), text: row.rel || "." }),
      row.name ?? row.error ?? "–",
      row.scheme ?? "–",
      TB.statusBadge(row.status ?? "?"),
      `${row.done ?? 0} of ${row.total ?? "?"} ${row.unit ?? ""}`.trim(),
      TB.num(row.final_ppl),
      TB.time(row.started),
    ],
  }));
  TB.fillTable(document.querySelector("#index tbody"), rows);
  document.getElementById("empty").hidden = rows.length > 0;
  document.body.dataset.loaded = "1";
}

refreshIndex();
setInterval(refreshIndex, 2000);
