// The run page: re-reads /run/{commit} and keeps <main id="run"> up to date:
// one <section class="step"> per step, one <details class="attempt"> per
// attempt (open ones stay open), each attempt's log read once it has ended.
// Its Retry and Cancel buttons POST to the API with the token the visitor
// gives once per tab (kept in sessionStorage).
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

  function summary(a, earlier) {
    return el("summary", {},
      el("span", { class: "number" }, "attempt " + a.number), " ",
      badge(a.outcome), " ",
      el("span", { class: "runner" }, a.runner ? "on " + a.runner : ""), " ",
      el("span", { class: "started" }, ciPage.time(a.started_at)), " ",
      el("span", { class: "duration" }, ciPage.duration(a.duration_ms)), " ",
      el("span", { class: "reason" }, a.reason || ""), " ",
      el("span", { class: "round" }, earlier ? "before the last retry" : ""));
  }

  async function readLog(step, a, pre) {
    const url = "/run/" + commit + "/steps/" + encodeURIComponent(step) + "/log?attempt=" + a.number;
    const res = await fetch(url);
    if (res.ok) setText(pre, ciPage.stripAnsi(await res.text()));
  }

  function updateAttempt(box, step, a, budgetFrom, reads) {
    let details = child(box, "details.attempt", "attempt", String(a.number));
    if (!details) {
      details = el("details", { class: "attempt", "data-attempt": String(a.number) },
        el("summary"), el("pre", { class: "log" }));
      box.append(details);
    }
    const changed = details.dataset.outcome !== a.outcome;
    const earlier = a.number < budgetFrom;
    details.dataset.outcome = a.outcome;
    details.toggleAttribute("data-earlier", earlier);
    details.querySelector("summary").replaceWith(summary(a, earlier));
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
    for (const a of s.attempts) updateAttempt(box, s.name, a, s.budget_from || 1, reads);
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
    updateActions(run.actions || []);
    showButtons(run.status);
    const reads = [];
    for (const s of run.steps) updateStep(s, reads);
    await Promise.all(reads);
  }

  function updateActions(actions) {
    const list = document.getElementById("run-actions");
    if (list.children.length === actions.length) return;
    list.replaceChildren(...actions.map(a => el("li", { class: "action", "data-kind": a.kind },
      a.kind + " at " + ciPage.time(a.at) + (a.by ? " by " + a.by : ""))));
  }

  // Retry (a finished run that did not succeed) and Cancel (a queued or
  // running one). The token is asked once per tab and forgotten on a 401.
  const TOKEN_KEY = "ci-server-api-token";
  const controls = document.getElementById("run-controls");
  const retryButton = document.getElementById("retry-button");
  const cancelButton = document.getElementById("cancel-button");
  const tokenForm = document.getElementById("token-form");
  const tokenInput = document.getElementById("token-input");
  const message = document.getElementById("action-message");
  let memoryToken = null, pending = null, busy = false;

  function showButtons(status) {
    retryButton.hidden = !["failure", "error", "cancelled"].includes(status);
    cancelButton.hidden = !["queued", "running"].includes(status);
  }
  function say(text, kind) {
    setText(message, text || "");
    message.dataset.kind = kind || "";
    message.hidden = !text;
  }
  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || memoryToken; } catch (e) { return memoryToken; }
  }
  function keepToken(value) {
    memoryToken = value;
    try {
      if (value === null) sessionStorage.removeItem(TOKEN_KEY); else sessionStorage.setItem(TOKEN_KEY, value);
    } catch (e) { /* storage off: the token lives in this page only */ }
  }

  async function act(action) {
    const secret = token();
    if (!secret) {
      pending = action;
      tokenForm.hidden = false;
      tokenInput.focus();
      say("Give the API token to " + action + " this run; it is kept for this tab only.", "info");
      return;
    }
    if (busy) return;
    busy = true;
    retryButton.disabled = cancelButton.disabled = true;
    say(action === "retry" ? "Retrying…" : "Cancelling…", "info");
    try {
      const res = await fetch("/run/" + commit + "/" + action, {
        method: "POST",
        headers: { authorization: "Bearer " + secret, accept: "application/json" },
      });
      let body = null;
      try { body = await res.json(); } catch (e) { body = null; }
      const said = body && body.message ? body.message : action + " answered " + res.status;
      if (res.ok && action === "retry") {
        say("Retried: " + (body.steps || []).join(", ") + " run again.", "ok");
      } else if (res.ok) {
        say("Cancelled.", "ok");
      } else if (res.status === 401) {
        keepToken(null);
        say(said + " (the token was forgotten: click again to give it)", "error");
      } else {
        say(said, "error");
      }
    } catch (e) {
      say(action + " failed: " + e, "error");
    } finally {
      busy = false;
      retryButton.disabled = cancelButton.disabled = false;
      update();
    }
  }

  retryButton.addEventListener("click", () => act("retry"));
  cancelButton.addEventListener("click", () => act("cancel"));
  tokenForm.addEventListener("submit", e => {
    e.preventDefault();
    const value = tokenInput.value.trim();
    if (!value) { tokenInput.focus(); return; }
    keepToken(value);
    tokenInput.value = "";
    tokenForm.hidden = true;
    const action = pending;
    pending = null;
    if (action) act(action);
  });
  document.getElementById("token-dismiss").addEventListener("click", () => {
    tokenInput.value = "";
    tokenForm.hidden = true;
    pending = null;
    say("");
  });
  showButtons(main.dataset.status);
  controls.hidden = false;

  const update = ciPage.live(refresh);
})();
