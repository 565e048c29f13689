// The job page (/jobs/<id>): the record (GET /v1/jobs/{id}), its timeline,
// inputs, error and result, kept live by GET /v1/jobs/{id}/events until the
// job ends; cancel and re-submit buttons for admin tokens. Needs common.js,
// mesh.js and outputs.js. Record data only ever becomes text nodes.
"use strict";

const jobId = decodeURIComponent(location.pathname.replace(/^\/jobs\//, ""));
const jobPath = "/v1/jobs/" + encodeURIComponent(jobId);
const progress = []; // progress events seen while the page is open: [ts_ms, fraction]
let record = null;
let admin = false;

const RECORD_FIELDS = [
  ["feature", "feature"], ["model", "model"], ["tenant", "tenant"], ["submitted_by", "submitted by"],
  ["priority", "priority"], ["priority_lowered_from", "priority asked"], ["attempts", "attempts"],
  ["worker", "worker"], ["host", "host"], ["gpu", "gpu"],
];

function renderRecord() {
  document.getElementById("status").textContent = record.status || "unknown";
  document.getElementById("status").className = "status-" + (record.status || "");
  const rows = RECORD_FIELDS.filter(([field]) => record[field] != null && record[field] !== "")
    .map(([field, label]) => el("tr", {}, el("th", {}, label), el("td", {}, String(record[field]))));
  rows.push(el("tr", {}, el("th", {}, "progress"), el("td", {}, Math.round(100 * (record.progress || 0)) + "%")));
  document.getElementById("record").replaceChildren(...rows);
}

// queued → processing → progress → final, each with the time since the step before.
function renderTimeline() {
  const steps = [];
  if (record.created_ms) steps.push(["queued", record.created_ms, "submitted"]);
  if (record.started_ms) {
    const label = record.attempts > 1 ? `waited ${formatDuration(record.started_ms - record.created_ms)} (attempt ${record.attempts})` : `waited ${formatDuration(record.started_ms - record.created_ms)}`;
    steps.push(["processing", record.started_ms, label]);
  }
  for (const [ts, fraction] of progress) {
    if (!record.finished_ms || ts <= record.finished_ms) steps.push(["progress", ts, `${Math.round(100 * fraction)}% after ${formatDuration(ts - (record.started_ms || ts))}`]);
  }
  if (record.finished_ms && FINAL_STATUSES.includes(record.status)) {
    const from = record.started_ms || record.created_ms;
    const verb = record.started_ms ? "ran" : "after";
    const total = record.created_ms ? `, ${formatDuration(record.finished_ms - record.created_ms)} in all` : "";
    steps.push([record.status, record.finished_ms, `${verb} ${formatDuration(record.finished_ms - from)}${total}`]);
  }
  document.getElementById("timeline").replaceChildren(...steps.map(([what, at, took]) =>
    el("li", { "data-step": what }, el("span", { class: "at" }, formatTime(at)), el("span", { class: "what status-" + what }, what), el("span", { class: "took" }, took))));
}

function renderInputs() {
  const container = document.getElementById("inputs");
  if (record.inputs && typeof record.inputs === "object") renderValues(container, record.inputs);
  else container.replaceChildren(el("div", { class: "sub" }, "This gateway's job records do not keep a job's inputs."));
}

function renderError() {
  document.getElementById("error-section").hidden = !record.error;
  if (record.error) document.getElementById("error").replaceChildren(el("b", {}, record.error.code), ": ", record.error.message);
}

function renderResult() {
  const container = document.getElementById("result");
  if (record.result && typeof record.result === "object" && !Array.isArray(record.result)) renderValues(container, record.result);
  else if (record.result != null) container.replaceChildren(el("code", {}, JSON.stringify(record.result)));
  else container.replaceChildren(el("div", { class: "sub" }, FINAL_STATUSES.includes(record.status) ? "No result." : "No result yet."));
}

function say(message) { document.getElementById("message").textContent = message || ""; }

async function cancel() {
  try { await api("DELETE", jobPath); say(""); await reload(); } catch (error) { say("cancel: " + error.message); }
}

// The same feature, model, inputs, priority and tenant as a new job; opens its page.
async function resubmit() {
  const body = { feature: record.feature, inputs: record.inputs };
  if (record.model) body.model = record.model;
  if (record.priority != null) body.priority = record.priority_lowered_from ?? record.priority;
  if (record.tenant) body.tenant = record.tenant;
  try {
    const reply = await (await api("POST", "/v1/jobs", body)).json();
    location.href = withToken("/jobs/" + encodeURIComponent(reply.job_id));
  } catch (error) { say("re-submit: " + error.message); }
}

function renderActions() {
  const buttons = [];
  if (admin && !FINAL_STATUSES.includes(record.status)) buttons.push(el("button", { id: "cancel", onclick: cancel }, "Cancel"));
  if (admin && record.feature) {
    const known = record.inputs && typeof record.inputs === "object";
    buttons.push(el("button", { id: "resubmit", onclick: resubmit, disabled: !known,
      title: known ? "submit a new job with the same feature, model and inputs" : "the record does not keep this job's inputs" }, "Re-submit"));
  }
  document.getElementById("actions").replaceChildren(...buttons);
}

function render() {
  renderRecord(); renderTimeline(); renderActions(); renderError(); renderResult();
}

async function reload() {
  record = await getJson(jobPath);
  render();
}

// Progress and transitions while the job runs; the record is read again at its end.
function follow() {
  const events = new EventSource(withToken(jobPath + "/events"));
  const seen = (message) => {
    const event = JSON.parse(message.data);
    if (FINAL_STATUSES.includes(event.status)) events.close();
    if (event.status !== record.status) { reload().catch((e) => say(e.message)); return; }
    // A progress update (the stream's first event is the record itself, without ts_ms).
    if (event.progress != null && event.ts_ms) {
      progress.push([event.ts_ms, event.progress]);
      record.progress = event.progress;
      renderRecord(); renderTimeline();
    }
  };
  for (const status of ["queued", "processing", ...FINAL_STATUSES]) events.addEventListener(status, seen);
  events.addEventListener("lagged", () => { events.close(); reload().then(follow); });
}

// Admin tokens may read the history; submit tokens get 403.
async function isAdmin() {
  try { await api("GET", "/v1/history?since_ms=" + Date.now() * 2); return true; } catch (_) { return false; }
}

async function start() {
  document.getElementById("job-id").textContent = jobId;
  document.getElementById("back").href = withToken("/");
  try { record = await getJson(jobPath); } catch (error) { say(error.message); return; }
  admin = await isAdmin();
  render();
  renderInputs();
  if (!FINAL_STATUSES.includes(record.status)) follow();
}
start();
