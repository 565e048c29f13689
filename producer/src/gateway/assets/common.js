// What the dashboard and the job page share: the access token, API calls,
// and building DOM from data without ever parsing it as HTML.
"use strict";

// The page was opened as /?access_token=... (browsers cannot send headers on
// a navigation or an EventSource). A literal "+" in a token stays "+"
// (URLSearchParams would make it a space).
const token = new URLSearchParams(location.search.replace(/\+/g, "%2B")).get("access_token");

// A path with the token in its query: for links, images and EventSource.
function withToken(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token);
}

// fetch() with the token as a bearer header; throws with the API's message.
async function api(method, path, body) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const error = (await response.json()).error; message = error.code + ": " + error.message; } catch (_) { /* not JSON */ }
    const failure = new Error(message);
    failure.status = response.status;
    throw failure;
  }
  return response;
}

const getJson = async (path) => (await api("GET", path)).json();

// An element with attributes and children (strings become text nodes, never HTML).
function el(tag, attributes, ...children) {
  const svg = ["svg", "g", "path", "polyline", "line", "text", "rect", "title"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatDuration(ms) {
  if (ms == null || !isFinite(ms)) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  const minutes = Math.floor(ms / 60000);
  return minutes + " min " + Math.round((ms % 60000) / 1000) + " s";
}

function formatTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) + "." + String(ms % 1000).padStart(3, "0") : "–";
}

function formatBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

const FINAL_STATUSES = ["completed", "failed", "cancelled", "timed_out"];
