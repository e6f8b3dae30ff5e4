// The list page: re-reads /runs with the page's own filters and keeps
// <tbody id="runs"> in the order the API gives, one <tr class="run"> per run.
(() => {
  const { el, badge } = ciPage;
  const tbody = document.getElementById("runs");
  const count = document.getElementById("count");
  const query = new URLSearchParams();
  const here = new URLSearchParams(location.search);
  for (const k of ["branch", "status", "limit", "offset"]) {
    const v = (here.get(k) || "").trim();
    if (v) query.set(k, v);
  }
  const offset = Number(query.get("offset") || 0);

  function cells(r) {
    const href = "/commit/" + r.id;
    const failed = el("td", { class: "failed" });
    for (const f of r.failed_steps) {
      failed.append(el("a", { href: href + "#step-" + f }, f), " ");
    }
    const iso = new Date(r.created_at).toISOString().replace(/\.\d{3}Z$/, "Z");
    return [
      el("td", { class: "commit" }, el("a", { href }, el("code", {}, r.id.slice(0, 10)))),
      el("td", { class: "status" }, badge(r.status)),
      failed,
      el("td", { class: "branches" }, r.branches.join(", ")),
      el("td", { class: "summary" }, r.summary),
      el("td", { class: "when" }, el("time", { datetime: iso }, ciPage.time(r.created_at))),
      el("td", { class: "duration" }, ciPage.duration(r.duration_ms)),
    ];
  }

  async function refresh() {
    const res = await fetch("/runs?" + query.toString(), { headers: { accept: "application/json" } });
    if (!res.ok) throw new Error("GET /runs answered " + res.status);
    const page = await res.json();
    const rows = new Map();
    for (const tr of tbody.querySelectorAll("tr.run")) rows.set(tr.dataset.commit, tr);
    const keep = new Set();
    let before = tbody.firstChild;
    for (const r of page.data) {
      let tr = rows.get(r.id);
      if (!tr) {
        tr = el("tr", { class: "run", "data-commit": r.id });
      }
      tr.dataset.status = r.status;
      tr.replaceChildren(...cells(r));
      keep.add(r.id);
      if (tr !== before) tbody.insertBefore(tr, before);
      before = tr.nextSibling;
    }
    for (const [id, tr] of rows) if (!keep.has(id)) tr.remove();
    const shown = page.data.length;
    count.textContent = shown === 0
      ? (page.total === 0 ? "no runs" : "no runs here; " + page.total + " in all")
      : (offset === 0 && shown === page.total
        ? page.total + (page.total === 1 ? " run" : " runs")
        : "runs " + (offset + 1) + "–" + (offset + shown) + " of " + page.total);
  }

  ciPage.live(refresh);
})();
