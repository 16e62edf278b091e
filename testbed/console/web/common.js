// Helpers shared by the console's pages. Every string from a run reaches the page through
// textContent or setAttribute, never through innerHTML: a config name holding <script> is text.
"use strict";

const TB = {};

// An element with attributes ("text" sets textContent, "class" the class) and children.
TB.el = function (tag, attrs, ...children) {
  const e = document.createElement(tag);
  TB.attrs(e, attrs);
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
};

TB.svg = function (tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  TB.attrs(e, attrs);
  return e;
};

TB.attrs = function (e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") e.textContent = String(v);
    else if (k === "class") e.setAttribute("class", v);
    else e.setAttribute(k, String(v));
  }
  return e;
};

TB.num = function (x, digits) {
  if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "–";
  const d = digits === undefined ? 3 : digits;
  if (Math.abs(x) >= 1e4 || (Math.abs(x) < 1e-3 && x !== 0)) return x.toExponential(2);
  return x.toFixed(d).replace(/\.?0+$/, (m) => (m.startsWith(".") ? "" : m)) || "0";
};

TB.time = function (t) {
  if (typeof t !== "number" || !isFinite(t)) return "–";
  const d = new Date(t * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
};

TB.duration = function (s) {
  if (typeof s !== "number" || !isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
};

// Replace the children of a table body with rows of cells (arrays of strings or nodes).
TB.fillTable = function (tbody, rows) {
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    const tr = TB.el("tr", row.attrs || {});
    for (const cell of row.cells) {
      tr.append(cell instanceof Node ? TB.el("td", {}, cell) : TB.el("td", { text: cell }));
    }
    frag.append(tr);
  }
  tbody.replaceChildren(frag);
};

TB.table = function (headers, attrs) {
  const thead = TB.el("thead", {}, TB.el("tr", {}, ...headers.map((h) => TB.el("th", { text: h }))));
  const tbody = TB.el("tbody");
  const table = TB.el("table", Object.assign({ class: "grid" }, attrs || {}), thead, tbody);
  return { table, tbody };
};

TB.statusBadge = function (status) {
  return TB.el("span", { class: `status status-${String(status).replace(/[^a-z]/g, "")}`, text: status });
};

// Apply the server's patch (server.patch_of) to the page's copy of the snapshot.
TB.applyPatch = function (state, patch) {
  for (const [key, op] of Object.entries(patch)) {
    if ("set" in op) state[key] = op.set;
    else if ("drop" in op) state[key] = (state[key] || []).slice(op.drop).concat(op.append);
    else if ("append" in op) state[key] = (state[key] || []).concat(op.append);
    else if ("patch" in op) state[key] = TB.applyPatch(state[key] || {}, op.patch);
    else if (op.del) delete state[key];
  }
  return state;
};

// Follow a folder: the snapshot, then patches; render(state) after each. EventSource reconnects
// by itself, and the server then starts again with a fresh snapshot.
TB.follow = function (rel, render) {
  let state = null;
  const source = new EventSource(`/api/stream/${rel.split("/").map(encodeURIComponent).join("/")}`);
  source.addEventListener("snapshot", (e) => {
    state = JSON.parse(e.data);
    render(state, true);
  });
  source.addEventListener("patch", (e) => {
    if (state === null) return;
    TB.applyPatch(state, JSON.parse(e.data));
    render(state, false);
  });
  source.addEventListener("error", () => {
    document.body.classList.add("offline");
    if (state !== null) return;
    // Never loaded: say why instead of retrying a folder that is not there.
    fetch(`/api/view/${rel.split("/").map(encodeURIComponent).join("/")}`).then(async (reply) => {
      if (reply.status === 404 || reply.status === 403) {
        source.close();
        document.getElementById("title").textContent = await reply.text();
      }
    });
  });
  source.addEventListener("open", () => document.body.classList.remove("offline"));
  return source;
};

TB.pageRel = function () {
  const path = location.pathname.replace(/^\/view\/?/, "");
  return path.split("/").map(decodeURIComponent).join("/");
};

TB.viewHref = function (rel) {
  return `/view/${rel.split("/").map(encodeURIComponent).join("/")}`;
};
