// The live status page: polls status.json every second and redraws.  Throughput and
// average times are computed here from the counters' change between two polls, so the
// server only ever copies counters.
"use strict";
const POLL_MS = 1000;
let previous = null;

function text(id, value) { document.getElementById(id).textContent = value; }

function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value;
  if (cls) td.className = cls;
  return td;
}

function seconds(value) {
  if (value === null) return "-";
  if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
  if (value < 1) return (value * 1e3).toFixed(1) + " ms";
  return value.toFixed(2) + " s";
}

function ended(f) { return f.complete + f.fail + f.exception; }

function rates(now, before, elapsed) {
  // per function: jobs ended per second, average wait and run time over the last poll
  const old = before ? Object.fromEntries(before.functions.map(f => [f.name, f])) : {};
  const out = {};
  for (const f of now.functions) {
    const o = old[f.name];
    if (!o || elapsed <= 0) { out[f.name] = { rate: null, wait: null, run: null }; continue; }
    const waits = f.wait_count - o.wait_count, runs = f.run_count - o.run_count;
    out[f.name] = {
      rate: (ended(f) - ended(o)) / elapsed,
      wait: waits > 0 ? (f.wait_sum - o.wait_sum) / waits : null,
      run: runs > 0 ? (f.run_sum - o.run_sum) / runs : null,
    };
  }
  return out;
}

function render(doc) {
  const elapsed = previous ? doc.now - previous.now : 0;
  const recent = rates(doc, previous, elapsed);
  text("version", "gearmand " + doc.version);
  const health = document.getElementById("health");
  health.textContent = doc.healthy ? "healthy" : doc.reason;
  health.className = "badge " + (doc.healthy ? "ok" : "bad");
  text("updated", "updated " + new Date(doc.now * 1000).toLocaleTimeString());
  text("jobs", doc.jobs);
  text("clients", doc.connections.client || 0);
  text("workers-count", doc.connections.worker || 0);
  text("sleeping", doc.sleeping);
  let total = null;
  for (const name in recent) {
    if (recent[name].rate !== null) total = (total || 0) + recent[name].rate;
  }
  text("rate", total === null ? "-" : total.toFixed(1));
  text("store", doc.store.backend + (doc.store.durable && !doc.store.connected ? " (down)" : ""));

  const body = document.querySelector("#functions tbody");
  body.replaceChildren();
  for (const f of doc.functions) {
    const row = body.insertRow();
    row.dataset.function = f.name;
    cell(row, f.name, "name");
    cell(row, f.waiting);
    cell(row, f.running, f.running ? "busy" : "");
    cell(row, f.workers);
    cell(row, f.queued.high);
    cell(row, f.queued.normal);
    cell(row, f.queued.low);
    cell(row, f.complete);
    cell(row, f.fail);
    cell(row, f.exception);
    const r = recent[f.name];
    cell(row, r.rate === null ? "-" : r.rate.toFixed(1));
    cell(row, seconds(r.wait));
    cell(row, seconds(r.run));
  }
  if (!doc.functions.length) {
    cell(body.insertRow(), "no functions yet", "empty").colSpan = 13;
  }

  const workers = document.querySelector("#workers tbody");
  workers.replaceChildren();
  for (const w of doc.workers) {
    const row = workers.insertRow();
    cell(row, w.fd);
    cell(row, w.ip);
    cell(row, w.client_id);
    cell(row, w.functions.join(", "), "name");
    cell(row, w.running, w.running ? "busy" : "");
    cell(row, w.sleeping ? "sleeping" : (w.running ? "working" : "awake"));
  }
  if (!doc.workers.length) {
    cell(workers.insertRow(), "no workers connected", "empty").colSpan = 6;
  }
  previous = doc;
}

async function poll() {
  try {
    const response = await fetch("status.json", { cache: "no-store" });
    render(await response.json());
  } catch (err) {
    const health = document.getElementById("health");
    health.textContent = "unreachable";
    health.className = "badge bad";
  }
  setTimeout(poll, POLL_MS);
}

poll();
