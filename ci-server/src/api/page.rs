//! The live page at `/`: one HTML file (no build step, no external assets) that
//! lists the runs and refreshes itself when the server sends an event on
//! `/events`. It only reads the JSON API, so it shows nothing the API does not.

/// The page's HTML, embedded in the binary.
pub const LIVE_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ci-server</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
  #state { color: #666; margin-bottom: 1rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  code { font-size: 13px; }
  .s { font-weight: 600; }
  .success { color: #1a7f37; } .failure { color: #cf222e; } .error { color: #9a6700; }
  .running, .queued { color: #0969da; } .cancelled { color: #666; }
</style>
</head>
<body>
<h1>ci-server</h1>
<div id="state">loading…</div>
<table>
  <thead><tr><th>commit</th><th>status</th><th>failed steps</th><th>branches</th><th>summary</th><th>duration</th></tr></thead>
  <tbody id="runs"></tbody>
</table>
<p><a href="/docs">API documentation</a> · <a href="/openapi.json">OpenAPI document</a></p>
<script>
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
let pending = false;
async function refresh() {
  pending = false;
  try {
    const res = await fetch("/runs?limit=200");
    const page = await res.json();
    document.getElementById("state").textContent = page.total + " runs";
    document.getElementById("runs").innerHTML = page.data.map(r =>
      "<tr><td><a href=\"/run/" + esc(r.id) + "\"><code>" + esc(r.id.slice(0, 10)) + "</code></a></td>" +
      "<td class=\"s " + esc(r.status) + "\">" + esc(r.status) + "</td>" +
      "<td>" + r.failed_steps.map(s => "<a href=\"/run/" + esc(r.id) + "/steps/" + esc(s) + "/log\">" + esc(s) + "</a>").join(", ") + "</td>" +
      "<td>" + esc(r.branches.join(", ")) + "</td>" +
      "<td>" + esc(r.summary) + "</td>" +
      "<td>" + (r.duration_ms == null ? "" : (r.duration_ms / 1000).toFixed(1) + " s") + "</td></tr>").join("");
  } catch (e) {
    document.getElementById("state").textContent = "cannot reach the server: " + e;
  }
}
function soon() { if (!pending) { pending = true; setTimeout(refresh, 200); } }
refresh();
const events = new EventSource("/events");
for (const t of ["run_queued", "step_started", "step_finished", "run_finished", "lagged", "connected"]) {
  events.addEventListener(t, soon);
}
events.onerror = () => { document.getElementById("state").textContent += " (reconnecting…)"; };
</script>
</body>
</html>
"#;
