// The dashboard (/): history charts from GET /v1/history, the system tables
// from GET /v1/system (both polled every 2 s), and recent jobs kept live by
// the event stream (GET /v1/events). Needs common.js and charts.js.
"use strict";

const text = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const jobs = new Map();
const samples = [];
const MAX_GPU_CHARTS = 16;
const STATUS_COLOURS = { completed: "#1a7f37", failed: "#c62828", timed_out: "#e0a030", cancelled: "#888" };

function renderSystem(system) {
  const slotsByWorker = new Map();
  const rows = [];
  for (const host of system.hosts) {
    for (const slot of host.slots) slotsByWorker.set(slot.worker_id, slot);
    for (const gpu of host.gpus) {
      const total = gpu.memory_total_mib || 1;
      const others = gpu.foreign_used_mib || 0;
      const ours = Math.max(0, (gpu.memory_used_mib || 0) - others);
      rows.push(`<tr><td>${text(host.host_id)}</td><td>${gpu.index}</td><td>${text(gpu.name)}</td>
        <td><div class="bar"><div class="ours" style="width:${100 * ours / total}%"></div><div class="others" style="width:${100 * others / total}%"></div></div></td>
        <td>${ours} / ${others} / ${total - ours - others}</td><td>${gpu.utilization_percent == null ? "–" : gpu.utilization_percent + "%"}</td><td>${text(gpu.source)}</td></tr>`);
    }
  }
  document.getElementById("gpus").innerHTML = rows.join("");
  document.getElementById("workers").innerHTML = system.workers.map((w) => {
    const slot = slotsByWorker.get(w.worker_id) || {};
    const state = slot.state === "failed" ? "failed" : w.state;
    return `<tr><td>${text(w.worker_id)}</td><td>${text(w.host)}</td><td>${text(w.gpu)}</td><td class="state-${text(state)}">${text(state)}</td>
      <td>${w.vram_budget_mib}</td><td>${text((w.consuming || []).join(", ") || "–")}</td><td>${text((w.resident_models || []).map((m) => m.model).join(", ") || "–")}</td>
      <td>${text(w.current_jobs.join(", ") || "–")}</td><td>${w.jobs_done}</td><td>${w.jobs_failed}</td><td>${slot.restarts ?? 0}</td></tr>`;
  }).join("");
  document.getElementById("queues").innerHTML = system.queues.map((q) =>
    `<tr><td>${text(q.model)}</td><td>${text(q.feature)}</td><td>${q.messages ?? "–"}</td>
     <td class="${q.consumers ? "" : "warn"}">${q.consumers ?? "–"}${q.consumers ? "" : " (no worker serves it)"}</td>
     <td>${text((q.sub_queues || []).map((s) => `${s.tenant}/${s.level} ${s.messages}`).join(", ") || "–")}</td></tr>`).join("");
  // Measured VRAM (issue 17): flagged where the p99 is over 120 % of the declaration.
  document.getElementById("vram").innerHTML = (system.vram || []).map((v) => {
    const m = v.measured;
    const peaks = m ? `${m.peaks.p50_mib} / ${m.peaks.p99_mib} / ${m.peaks.max_mib}` : "–";
    return `<tr data-model="${text(v.model)}"><td>${text(v.model)}</td><td>${v.declared_mib}</td>
      <td class="${v.over_declared ? "warn" : ""}">${v.admitted_mib}${v.over_declared ? " (measured over 120 % of declared)" : ""}</td>
      <td>${m && m.resident_mib != null ? m.resident_mib : "–"}</td><td>${peaks}</td><td>${m ? m.peaks.samples : 0}</td><td>${m ? m.out_of_memory : 0}</td></tr>`;
  }).join("");
}

function renderJobs() {
  const sorted = [...jobs.values()].sort((a, b) => (b.created_ms || 0) - (a.created_ms || 0)).slice(0, 25);
  document.getElementById("jobs").innerHTML = sorted.map((j) => {
    const duration = j.started_ms && j.finished_ms ? `${j.finished_ms - j.started_ms} ms` : "";
    const error = j.error ? `${j.error.code}: ${j.error.message}` : "";
    const page = withToken("/jobs/" + encodeURIComponent(j.job_id));
    return `<tr id="job-${text(j.job_id)}"><td><a href="${text(page)}">${text(j.job_id)}</a></td><td>${text(j.tenant || "")}</td><td>${text(j.feature)}</td>
      <td class="status-${text(j.status)}">${text(j.status)}</td><td>${Math.round(100 * (j.progress || 0))}%</td>
      <td>${duration}</td><td>${text(error)}</td></tr>`;
  }).join("");
}

// Every name any point has under `field` (an object of name → value), in order of appearance.
function namesIn(field) {
  const names = new Set();
  for (const point of samples) for (const name of Object.keys(point[field] || {})) names.add(name);
  return [...names];
}

// The time axis ends at the last sample and spans the window, or, while the
// gateway has sampled for less, what it has (at least a minute).
function renderHistory(windowMs) {
  const t1 = samples.length ? samples[samples.length - 1].ts_ms : Date.now();
  const first = samples.length ? samples[0].ts_ms : t1;
  const t0 = t1 - Math.min(windowMs, Math.max(60000, t1 - first));
  const frame = { t0, t1 };
  const over = (value) => samples.map((p) => [p.ts_ms, value(p)]);
  drawChart(document.getElementById("history-queued"), { ...frame, id: "queued", title: "Jobs waiting, by model", floor: 1,
    series: namesIn("queued").map((model) => ({ name: model, values: over((p) => p.queued[model] || 0) })) });
  drawChart(document.getElementById("history-finished"), { ...frame, id: "finished", title: "Jobs finished per second, by status", unit: "/s", floor: 0.5,
    series: Object.entries(STATUS_COLOURS).map(([status, color]) => ({ name: status, color, values: over((p) => p.finished_per_s[status]) })) });
  drawChart(document.getElementById("history-workers"), { ...frame, id: "workers", title: "Workers busy", floor: 1,
    series: [{ name: "busy", color: "#3b7ddd", values: over((p) => p.workers_busy) },
             { name: "live", color: "#9aa3b0", values: over((p) => p.workers) }] });
  const gpuIds = new Set();
  for (const point of samples) for (const gpu of point.gpus) gpuIds.add(gpu.gpu);
  const ids = [...gpuIds].sort();
  const gpuCharts = document.getElementById("history-gpus");
  gpuCharts.replaceChildren(...ids.slice(0, MAX_GPU_CHARTS).map((id, index) => {
    const host = el("div", { class: "chart-box", "data-gpu": id });
    const memory = (field) => samples.flatMap((p) => p.gpus.filter((g) => g.gpu === id).map((g) => [p.ts_ms, g[field]]));
    drawChart(host, { ...frame, id: "gpu-" + index, title: "GPU " + id + " memory", unit: "MiB", stacked: true, floor: 1,
      series: [{ name: "gpuq", color: "#3b7ddd", values: memory("gpuq_mib") },
               { name: "others", color: "#e0a030", values: memory("others_mib") },
               { name: "free", color: "#d5dae2", values: memory("free_mib") }] });
    return host;
  }));
  if (ids.length > MAX_GPU_CHARTS) gpuCharts.append(el("div", { class: "sub" }, `and ${ids.length - MAX_GPU_CHARTS} more GPUs`));
}

async function refreshHistory() {
  try {
    const since = samples.length ? samples[samples.length - 1].ts_ms : 0;
    const reply = await getJson("/v1/history" + (since ? "?since_ms=" + since : ""));
    samples.push(...reply.points);
    const windowMs = reply.window_s * 1000;
    const newest = samples.length ? samples[samples.length - 1].ts_ms : 0;
    while (samples.length && samples[0].ts_ms < newest - windowMs) samples.shift();
    renderHistory(windowMs);
  } catch (e) { console.error(e); }
}

async function refreshSystem() {
  try { renderSystem(await getJson("/v1/system")); } catch (e) { console.error(e); }
}

function follow() {
  const events = new EventSource(withToken("/v1/events"));
  const live = document.getElementById("live");
  events.onopen = () => { live.textContent = "live"; live.className = ""; };
  events.onerror = () => { live.textContent = "reconnecting…"; live.className = "off"; };
  events.onmessage = (message) => {
    const event = JSON.parse(message.data);
    const job = jobs.get(event.job_id) || { job_id: event.job_id, created_ms: event.ts_ms };
    job.status = event.status;
    if (event.feature) job.feature = event.feature;
    if (event.tenant) job.tenant = event.tenant;
    if (event.progress != null) job.progress = event.progress;
    if (event.status === "processing" && event.attempt) job.started_ms = event.ts_ms;
    if (FINAL_STATUSES.includes(event.status)) {
      job.finished_ms = event.ts_ms; job.error = event.error || null;
      if (event.status === "completed") job.progress = 1;
    }
    jobs.set(event.job_id, job);
    renderJobs();
  };
}

async function start() {
  const features = await getJson("/v1/features");
  document.getElementById("ns").textContent = features.namespace || "gpuq";
  for (const job of (await getJson("/v1/jobs?limit=25")).jobs) jobs.set(job.job_id, job);
  renderJobs();
  await Promise.all([refreshSystem(), refreshHistory()]);
  setInterval(refreshSystem, 2000);
  setInterval(refreshHistory, 2000);
  follow();
}
start();
