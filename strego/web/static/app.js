// strego web UI: actions through the JSON API (with the page's CSRF token), live overview by
// Server-Sent Events with polling as the fallback. Task data is only ever set as textContent.
"use strict";
(function () {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
  const base = meta("strego-base");
  const token = meta("strego-csrf");
  const readonly = meta("strego-readonly") === "yes";
  const RESULT_KEY = "strego-result";

  function showResult(text, ok) {
    const box = document.getElementById("result");
    box.textContent = text;
    box.classList.toggle("bad", !ok);
    box.hidden = false;
  }

  // a result survives the reload that shows its effect
  const pending = sessionStorage.getItem(RESULT_KEY);
  if (pending) {
    sessionStorage.removeItem(RESULT_KEY);
    const { text, ok } = JSON.parse(pending);
    showResult(text, ok);
  }

  function confirmDialog(text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      document.getElementById("confirm-no").focus();
    });
  }

  async function call(method, url) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "X-Strego-CSRF": token, Accept: "application/json" },
    });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    return { ok: response.ok, status: response.status, body };
  }

  function describe(label, result) {
    const body = result.body || {};
    if (result.ok) {
      const parts = Object.entries(body)
        .filter(([, v]) => typeof v === "number" || typeof v === "string" || typeof v === "boolean")
        .map(([k, v]) => `${k}: ${v}`);
      return `${label}: done${parts.length ? " (" + parts.join(", ") + ")" : ""}.`;
    }
    const why = body.message || body.error || "";
    return `${label}: refused, HTTP ${result.status}${why ? ": " + why : ""}.`;
  }

  function reloadWith(text, ok, url) {
    sessionStorage.setItem(RESULT_KEY, JSON.stringify({ text, ok }));
    if (url) window.location.assign(url);
    else window.location.reload();
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || readonly) return;
    if (!(await confirmDialog(button.dataset.confirm))) return;
    button.disabled = true;
    const label = button.textContent.trim();
    try {
      const result = await call(button.dataset.method, button.dataset.url);
      const text = describe(label, result);
      if (result.ok) reloadWith(text, true, button.dataset.after);
      else showResult(text, false);
    } catch (e) {
      showResult(`${label}: the request failed (${e})`, false);
    } finally {
      button.disabled = false;
    }
  });

  // actions on the tasks selected in a queue listing: one API call per task
  const TASK_CALL = {
    run: ["POST", "/run"],
    requeue: ["POST", "/requeue"],
    cancel: ["POST", "/cancel"],
    delete: ["DELETE", ""],
  };
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-bulk]");
    if (!button || readonly) return;
    const ids = [...document.querySelectorAll("input[data-select]:checked")].map((b) => b.value);
    if (!ids.length) {
      showResult("Select tasks first.", false);
      return;
    }
    const action = button.dataset.bulk;
    if (!(await confirmDialog(`${action} ${ids.length} selected task(s)?`))) return;
    const [method, suffix] = TASK_CALL[action];
    let done = 0;
    const refused = [];
    for (const id of ids) {
      const result = await call(method, `${base}/api/v1/tasks/${encodeURIComponent(id)}${suffix}`);
      if (result.ok) done += 1;
      else refused.push(`${id} (HTTP ${result.status})`);
    }
    const text = `${action}: ${done} of ${ids.length} done` +
      (refused.length ? `; refused: ${refused.join(", ")}` : "") + ".";
    reloadWith(text, refused.length === 0);
  });

  const selectAll = document.querySelector("input[data-select-all]");
  if (selectAll) {
    selectAll.addEventListener("change", () => {
      for (const box of document.querySelectorAll("input[data-select]")) box.checked = selectAll.checked;
    });
  }

  // "/" jumps to the task-id box, as in most dashboards
  document.addEventListener("keydown", (event) => {
    const t = event.target;
    if (event.key === "/" && !(t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement)) {
      event.preventDefault();
      document.getElementById("jump-id").focus();
    }
  });

  // -- live overview -------------------------------------------------------------------------
  const table = document.getElementById("queues");
  if (!table) return;
  const live = document.getElementById("live");
  const SVG = "http://www.w3.org/2000/svg";

  function age(ms) {
    if (ms === null || ms === undefined) return "-";
    const s = Math.max(0, Math.floor(ms / 1000));
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
    return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
  }

  function drawChart(svg, history) {
    svg.replaceChildren();
    if (!history) return;
    const { processed, failed } = history;
    const n = processed.length;
    const peak = Math.max(1, ...processed.map((p, i) => p + failed[i]));
    const width = 120 / n;
    for (let i = 0; i < n; i++) {
      const hp = (processed[i] / peak) * 30;
      const hf = (failed[i] / peak) * 30;
      for (const [cls, h, y] of [["processed", hp, 30 - hp], ["failed", hf, 30 - hp - hf]]) {
        if (h <= 0) continue;
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("class", cls);
        rect.setAttribute("x", String(i * width));
        rect.setAttribute("y", String(y));
        rect.setAttribute("width", String(Math.max(width - 0.3, 0.3)));
        rect.setAttribute("height", String(h));
        svg.appendChild(rect);
      }
    }
    const title = document.createElementNS(SVG, "title");
    const sum = (a) => a.reduce((x, y) => x + y, 0);
    title.textContent = `last hour: ${sum(processed)} processed, ${sum(failed)} failed`;
    svg.appendChild(title);
  }

  function apply(snapshot) {
    const rows = new Map([...table.querySelectorAll("tbody tr")].map((r) => [r.dataset.queue, r]));
    let unknown = 0;
    for (const q of snapshot.queues) {
      const row = rows.get(q.name);
      if (!row) {
        unknown += 1;
        continue;
      }
      // a queue that could not be read shows its error (as text); one that became readable, or
      // stopped being, has other cells: a reload shows them
      const unreadable = row.dataset.error !== undefined;
      if (unreadable || q.error) {
        if (unreadable && q.error) row.querySelector('[data-field="error"]').textContent = q.error;
        else unknown += 1;
        continue;
      }
      for (const cell of row.querySelectorAll("[data-count]")) {
        cell.textContent = String(q.counts[cell.dataset.count]);
      }
      row.querySelector('[data-field="age"]').textContent = age(q.oldest_pending_age_ms);
      row.querySelector('[data-field="paused"]').hidden = !q.paused;
      row.querySelector('[data-field="no_workers"]').hidden = !q.no_workers;
      const pause = row.querySelector('[data-action="pause"]');
      const resume = row.querySelector('[data-action="resume"]');
      if (pause) pause.hidden = q.paused;
      if (resume) resume.hidden = !q.paused;
      drawChart(row.querySelector("[data-chart]"), q.history);
    }
    const at = new Date(snapshot.at_ms).toISOString().slice(11, 19);
    live.textContent = `updated ${at} UTC` + (unknown ? ` · ${unknown} new or changed queue(s): reload` : "");
    live.dataset.at = String(snapshot.at_ms);
  }

  let polling = null;
  function poll() {
    if (polling) return;
    live.classList.add("polling");
    const tick = async () => {
      try {
        const response = await fetch(`${base}/ui/overview.json`, { credentials: "same-origin" });
        if (response.ok) apply(await response.json());
      } catch (e) {
        live.textContent = "offline";
      }
    };
    tick();
    polling = setInterval(tick, 3000);
  }

  if (window.EventSource && !new URLSearchParams(window.location.search).has("poll")) {
    const source = new EventSource(`${base}/ui/events`);
    let heard = false;
    source.addEventListener("overview", (event) => {
      heard = true;
      apply(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) poll();
    });
    // a proxy that buffers the stream delivers nothing: poll instead
    setTimeout(() => {
      if (!heard) {
        source.close();
        poll();
      }
    }, 10000);
  } else {
    poll();
  }
})();
