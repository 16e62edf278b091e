// A folder's page: follows /api/stream/<folder> and renders by the view's kind.
"use strict";

(function () {
  const rel = TB.pageRel();
  const main = document.getElementById("main");
  let page = null;
  window.TB_PAGE = null;
  TB.follow(rel, (state) => {
    const v = state.view;
    if (page === null) {
      page = v.kind === "run" ? new TB.Run(main) : v.kind === "campaign" ? new TB.Campaign(main) : new TB.Compare(main);
      window.TB_PAGE = page;
      document.body.dataset.kind = v.kind;
    }
    document.title = `${v.name} · testbed console`;
    document.getElementById("title").textContent = `${v.kind} ${v.name}`;
    document.getElementById("status").replaceChildren(TB.statusBadge(v.status));
    document.getElementById("progress").textContent = `${rel || "."}${v.scheme ? " · " + v.scheme : ""}${v.started ? " · started " + TB.time(v.started) : ""}`;
    page.render(v, state.files || [], rel);
    document.body.dataset.version = String(v.version);
    // When this render was done (ms since the epoch; bench_console reads it), and, after the
    // first one's frame is painted, a "first-paint" performance mark.
    document.body.dataset.renderedAt = String(performance.timeOrigin + performance.now());
    if (document.body.dataset.loaded !== "1") {
      requestAnimationFrame(() => setTimeout(() => performance.mark("first-paint"), 0));
    }
    document.body.dataset.loaded = "1";
  });
})();
