"use strict";
// Shared by both pages: formatting as the server does, building elements,
// and re-reading the JSON API whenever /events says something happened.
const ciPage = {
  pad(n) { return String(n).padStart(2, "0"); },
  time(ms) {
    const d = new Date(ms);
    return d.getUTCFullYear() + "-" + ciPage.pad(d.getUTCMonth() + 1) + "-" + ciPage.pad(d.getUTCDate()) +
      " " + ciPage.pad(d.getUTCHours()) + ":" + ciPage.pad(d.getUTCMinutes()) + " UTC";
  },
  duration(ms) {
    if (ms == null) return "";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return Math.floor(ms / 1000) + "." + Math.floor(ms % 1000 / 100) + " s";
    const s = Math.floor(ms / 1000);
    if (s < 3600) return Math.floor(s / 60) + "m " + ciPage.pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + ciPage.pad(Math.floor(s % 3600 / 60)) + "m";
  },
  // Removes terminal escapes (CSI, OSC, the others) as the server does.
  stripAnsi(text) {
    return text.replace(/\x1b\[[\x20-\x3f]*[\x40-\x7e]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[\x20-\x2f]*[\x30-\x7e]?/g, "");
  },
  el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v != null) node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c == null) continue;
      node.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  },
  badge(word) { return ciPage.el("span", { class: "badge " + word }, word); },
  // Calls refresh() on every event, at most once per 300 ms, never two at once;
  // returns a function that asks for one more refresh the same way.
  live(refresh) {
    const label = document.getElementById("live");
    const gap = 300;
    let timer = null, last = 0, busy = false, again = false;
    const run = async () => {
      timer = null;
      if (busy) { again = true; return; }
      busy = true; last = Date.now();
      try { await refresh(); } catch (e) { label.textContent = "update failed: " + e; }
      busy = false;
      if (again) { again = false; soon(); }
    };
    const soon = () => {
      if (timer === null) timer = setTimeout(run, Math.max(0, last + gap - Date.now()));
    };
    if (!window.EventSource) return soon;
    const events = new EventSource("/events");
    events.onopen = () => { label.textContent = "live"; soon(); };
    events.onmessage = soon;
    for (const t of ["connected", "reset", "run_queued", "run_retried", "step_started",
      "step_finished", "step_withdrawn", "run_finished", "runner_down", "runner_up"]) {
      events.addEventListener(t, soon);
    }
    events.onerror = () => {
      label.textContent = events.readyState === EventSource.CLOSED ? "static" : "reconnecting…";
    };
    return soon;
  },
};
