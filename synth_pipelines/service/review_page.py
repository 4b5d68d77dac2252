# ruff: noqa: E501  (the page is one HTML document; its lines are CSS and JavaScript, not Python)
"""The review page ``/review/{domain}``: one row at a time, labelled from the keyboard.

Server-rendered HTML with one small inline script and no outside assets (it works with no network
beyond the machine). The page itself holds no data: rows come from, and labels go to, the token-
protected ``/v1/domains/{domain}/review`` endpoints. A token is given once in the address's
fragment (``#token=...``, never sent to the server), kept in the tab's session storage and sent as
``Authorization: Bearer``; the reviewer's name (``#reviewer=alice`` or the name box) is kept in
local storage.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Review: __TITLE__</title>
<style>
 body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
 header{background:#1d2430;color:#fff;padding:.7em 1.2em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}
 header b{font-size:1.1em} header input{width:9em}
 main{max-width:60em;margin:1.2em auto;padding:0 1em}
 .card{background:#fff;border-radius:8px;padding:1.1em 1.3em;box-shadow:0 1px 3px #0002;margin-bottom:1em}
 .badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600}
 .accepted{background:#d9f2df;color:#16602a} .rejected{background:#fbdada;color:#8a1c1c}
 table{border-collapse:collapse;width:100%} td,th{text-align:left;vertical-align:top;padding:.35em .5em;border-bottom:1px solid #e4e7ec}
 th{width:11em;color:#5a6472;font-weight:600} td{white-space:pre-wrap;word-break:break-word}
 .keys kbd{background:#eef0f3;border:1px solid #cfd4dc;border-radius:4px;padding:0 .4em;font:13px monospace}
 #status{min-height:1.4em;color:#8a1c1c} .muted{color:#5a6472} ul{margin:.3em 0 .3em 1.2em;padding:0}
 #reason{width:100%;box-sizing:border-box;padding:.4em}
</style></head>
<body>
<header><b>Review · __TITLE__</b>
 <label>reviewer <input id="reviewer" autocomplete="off"></label>
 <span id="progress" class="muted">loading…</span></header>
<main>
 <p class="keys muted"><kbd>g</kbd> good · <kbd>b</kbd> bad · <kbd>s</kbd> skip ·
  <kbd>r</kbd> write a reason (then <kbd>Enter</kbd> keeps it, <kbd>Esc</kbd> leaves the box)</p>
 <div id="status" role="status"></div>
 <section id="row" class="card" hidden>
  <p><span id="verdict" class="badge"></span> <span id="gate" class="muted"></span></p>
  <table>
   <tr><th>problem</th><td id="problem"></td></tr>
   <tr><th>conditions</th><td id="conditions"></td></tr>
  </table>
  <h3>Example <span id="example-id" class="muted"></span></h3>
  <table id="fields"></table>
  <div id="why"></div>
  <p><input id="reason" placeholder="reason (optional)" maxlength="500"></p>
 </section>
 <section id="empty" class="card" hidden>Nothing left to review for this reviewer.</section>
</main>
<script>
(() => {
  const DOMAIN = __DOMAIN__;
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) sessionStorage.setItem("synth_token", hash.get("token"));
  if (hash.get("reviewer")) localStorage.setItem("synth_reviewer", hash.get("reviewer"));
  if (hash.get("token") || hash.get("reviewer")) history.replaceState(null, "", location.pathname);
  const token = sessionStorage.getItem("synth_token") || "";
  const $ = (id) => document.getElementById(id);
  const box = $("reviewer");
  box.value = localStorage.getItem("synth_reviewer") || "reviewer";
  let items = [], at = 0, busy = false;

  async function api(path, options = {}) {
    const headers = {"Content-Type": "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    const answer = await fetch(path, {...options, headers});
    const body = await answer.json();
    if (!answer.ok) throw new Error((body.error && body.error.message) || answer.statusText);
    return body;
  }
  function text(id, value) { $(id).textContent = value; }
  function showProgress(p) {
    const agreement = p.labelled ? `agreement with the gate ${p.agree}/${p.labelled}` +
      (p.kappa === null ? "" : ` (κ ${p.kappa.toFixed(2)})`) : "agreement with the gate: no labels yet";
    text("progress", `labelled ${p.labelled} · queued ${p.queued} · ${agreement}`);
  }
  function show() {
    const item = items[at];
    $("row").hidden = !item; $("empty").hidden = !!item;
    if (!item) return;
    const verdict = $("verdict");
    verdict.className = "badge " + item.verdict;
    verdict.textContent = item.verdict === "accepted" ? "gate: accepted" : "gate: rejected (" + item.stage + ")";
    text("gate", item.consensus === null ? "no consensus (judges skipped or not reached)"
      : `consensus ${item.consensus.toFixed(2)}, threshold ${item.threshold === null ? "?" : item.threshold.toFixed(2)}`);
    text("problem", item.problem || "(none)");
    text("conditions", Object.entries(item.conditions).map(([k, v]) => k + " = " + v).join(", ") +
      (item.complexity ? "  ·  complexity " + item.complexity : ""));
    text("example-id", item.example_id);
    $("row").dataset.exampleId = item.example_id;
    const fields = $("fields"); fields.replaceChildren();
    for (const [name, value] of Object.entries(item.example)) {
      const tr = fields.insertRow(), th = document.createElement("th"), td = tr.insertCell();
      th.textContent = name; tr.prepend(th);
      td.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 1);
    }
    const why = $("why"); why.replaceChildren();
    const notes = [...item.reasons, ...item.judges.map((j) =>
      `${j.model}: ${j.score === null ? "no score" : j.score.toFixed(2)}${j.reason ? " — " + j.reason : ""}`)];
    if (notes.length) {
      const ul = document.createElement("ul");
      for (const note of notes) { const li = document.createElement("li"); li.textContent = note; ul.append(li); }
      why.append(ul);
    }
    $("reason").value = "";
  }
  async function load() {
    busy = true;
    try {
      const queue = await api(`/v1/domains/${encodeURIComponent(DOMAIN)}/review?count=50&reviewer=` +
        encodeURIComponent(box.value));
      items = queue.items; at = 0; showProgress(queue.progress); text("status", ""); show();
    } catch (e) { text("status", e.message); }
    busy = false;
  }
  async function label(value) {
    const item = items[at];
    if (!item || busy) return;
    busy = true;
    try {
      const p = await api(`/v1/domains/${encodeURIComponent(DOMAIN)}/review/labels`, {method: "POST",
        body: JSON.stringify({example_id: item.example_id, content_hash: item.content_hash, label: value,
          reason: $("reason").value, reviewer: box.value})});
      showProgress(p); text("status", ""); at += 1;
      busy = false;
      if (at >= items.length) await load(); else show();
    } catch (e) { text("status", e.message); busy = false; }
  }
  document.addEventListener("keydown", (event) => {
    if (event.target === $("reason")) {
      if (event.key === "Escape" || event.key === "Enter") { event.preventDefault(); $("reason").blur(); }
      return;
    }
    if (event.target === box || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "g") label("good");
    else if (event.key === "b") label("bad");
    else if (event.key === "s") { at += 1; if (at >= items.length) load(); else show(); }
    else if (event.key === "r") { event.preventDefault(); $("reason").focus(); }
  });
  box.addEventListener("change", () => { localStorage.setItem("synth_reviewer", box.value); load(); });
  load();
})();
</script>
</body></html>
"""


def review_page(domain: str) -> str:
    """The page for ``domain`` (a name already checked as safe; escaped all the same)."""
    return _PAGE.replace("__TITLE__", html.escape(domain)).replace(
        "__DOMAIN__", json.dumps(domain).replace("<", "\\u003c")
    )
