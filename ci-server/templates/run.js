// The run page: re-reads /run/{commit} and keeps <main id="run"> up to date:
// one <section class="step"> per step, one <details class="attempt"> per
// attempt (open ones stay open), each attempt's log read once it has ended.
(() => {
  const { el, badge } = ciPage;
  const main = document.getElementById("run");
  const stepsBox = document.getElementById("steps");
  const commit = main.dataset.commit;

  function child(parent, selector, key, value) {
    for (const node of parent.querySelectorAll(selector)) {
      if (node.dataset[key] === value) return node;
    }
    return null;
  }
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function summary(a) {
    return el("summary", {},
      el("span", { class: "number" }, "attempt " + a.number), " ",
      badge(a.outcome), " ",
      el("span", { class: "runner" }, a.runner ? "on " + a.runner : ""), " ",
      el("span", { class: "started" }, ciPage.time(a.started_at)), " ",
      el("span", { class: "duration" }, ciPage.duration(a.duration_ms)), " ",
      el("span", { class: "reason" }, a.reason || ""));
  }

  async function readLog(step, a, pre) {
    const url = "/run/" + commit + "/steps/" + encodeURIComponent(step) + "/log?attempt=" + a.number;
    const res = await fetch(url);
    if (res.ok) setText(pre, ciPage.stripAnsi(await res.text()));
  }

  function updateAttempt(box, step, a, reads) {
    let details = child(box, "details.attempt", "attempt", String(a.number));
    if (!details) {
      details = el("details", { class: "attempt", "data-attempt": String(a.number) },
        el("summary"), el("pre", { class: "log" }));
      box.append(details);
    }
    const changed = details.dataset.outcome !== a.outcome;
    details.dataset.outcome = a.outcome;
    details.querySelector("summary").replaceWith(summary(a));
    if (changed) reads.push(readLog(step, a, details.querySelector("pre.log")));
  }

  function updateStep(s, reads) {
    let section = child(stepsBox, "section.step", "step", s.name);
    if (!section) {
      section = el("section", { class: "step", id: "step-" + s.name, "data-step": s.name },
        el("h2", {}), el("p", { class: "reason" }), el("p", { class: "waiting" }),
        el("div", { class: "attempts" }));
      stepsBox.append(section);
    }
    section.dataset.status = s.status;
    section.querySelector("h2").replaceChildren(
      el("span", { class: "name" }, s.name), " ", badge(s.status), " ",
      el("span", { class: "duration" }, ciPage.duration(s.duration_ms)));
    const reason = section.querySelector("p.reason");
    setText(reason, s.reason || "");
    reason.hidden = !s.reason;
    const sentence = s.status === "pending" && s.waiting ? s.waiting.sentence : "";
    const waiting = section.querySelector("p.waiting");
    setText(waiting, sentence || "");
    waiting.hidden = !sentence;
    const box = section.querySelector("div.attempts");
    for (const a of s.attempts) updateAttempt(box, s.name, a, reads);
  }

  async function refresh() {
    const res = await fetch("/run/" + commit, { headers: { accept: "application/json" } });
    if (!res.ok) throw new Error("GET /run/" + commit + " answered " + res.status);
    const run = await res.json();
    main.dataset.status = run.status;
    document.getElementById("run-status").replaceWith(
      Object.assign(badge(run.status), { id: "run-status" }));
    setText(document.getElementById("run-failed"), run.failed_steps.join(", "));
    setText(document.getElementById("run-started"), run.started_at == null ? "" : ciPage.time(run.started_at));
    setText(document.getElementById("run-finished"), run.finished_at == null ? "" : ciPage.time(run.finished_at));
    setText(document.getElementById("run-duration"), ciPage.duration(run.duration_ms));
    const reads = [];
    for (const s of run.steps) updateStep(s, reads);
    await Promise.all(reads);
  }

  ciPage.live(refresh);
})();
