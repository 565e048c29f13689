// A job's values on its page: bytes and artifacts recognised as images are
// shown inline, meshes (glb, gltf, obj, ply) in model-viewer, anything else
// is a download link; plain values as JSON text. Needs common.js and mesh.js.
"use strict";

const VIEWER_SCRIPT = "/assets/model-viewer-4.4.0.min.js";
// Largest file the page fetches by itself to show (bigger: a link only).
const MAX_SHOWN_BYTES = 256 * 1024 * 1024;
const KIND_OF_EXTENSION = { glb: "glb", gltf: "gltf", obj: "obj", ply: "ply", png: "image", jpg: "image", jpeg: "image", gif: "image", webp: "image", svg: "image" };
const KIND_OF_TYPE = { "model/gltf-binary": "glb", "model/gltf+json": "gltf", "model/obj": "obj", "model/ply": "ply", "application/ply": "ply" };
const MIME_OF_EXTENSION = { png: "image/png", jpg: "image/jpeg", jpeg: "image/jpeg", gif: "image/gif", webp: "image/webp", svg: "image/svg+xml" };

// {"$artifact": id, "size_bytes": n} (the size when the worker stored it).
const isArtifact = (v) => v && typeof v === "object" && !Array.isArray(v) && typeof v.$artifact === "string";
const isBytes = (v) => v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 1 && typeof v.$bytes === "string";

function decodeBytes(base64) {
  const raw = atob(base64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// What the file is from its own first bytes: [kind, extension] or null.
function sniff(bytes) {
  const starts = (...b) => b.every((x, i) => bytes[i] === x);
  const ascii = (s, at = 0) => [...s].every((c, i) => bytes[at + i] === c.charCodeAt(0));
  if (starts(0x89, 0x50, 0x4e, 0x47)) return ["image", "png"];
  if (starts(0xff, 0xd8, 0xff)) return ["image", "jpg"];
  if (ascii("GIF8")) return ["image", "gif"];
  if (ascii("RIFF") && ascii("WEBP", 8)) return ["image", "webp"];
  if (ascii("glTF")) return ["glb", "glb"];
  if (ascii("ply\n") || ascii("ply\r")) return ["ply", "ply"];
  return null;
}

// What an output is from its name ("mesh.glb"), or, when it is the result's
// only file, from the result's `format` or `content_type`: [kind, extension] or null.
function hinted(key, values, files) {
  const extension = (/\.([a-z0-9]+)$/i.exec(key) || [])[1];
  if (extension && KIND_OF_EXTENSION[extension.toLowerCase()]) return [KIND_OF_EXTENSION[extension.toLowerCase()], extension.toLowerCase()];
  if (files !== 1 || !values) return null;
  const format = typeof values.format === "string" ? values.format.toLowerCase() : "";
  if (KIND_OF_EXTENSION[format]) return [KIND_OF_EXTENSION[format], format];
  const type = typeof values.content_type === "string" ? values.content_type.toLowerCase() : "";
  if (KIND_OF_TYPE[type]) return [KIND_OF_TYPE[type], KIND_OF_TYPE[type]];
  if (type.startsWith("image/")) return ["image", type.slice(6).replace("jpeg", "jpg").replace("svg+xml", "svg")];
  return null;
}

let viewerLoaded = null;
const loadViewer = () => (viewerLoaded ||= import(VIEWER_SCRIPT));

// Puts `bytes` (a Uint8Array) on the page as `kind`, inside `figure`.
async function show(figure, key, kind, extension, bytes) {
  if (kind === "image") {
    const url = URL.createObjectURL(new Blob([bytes], { type: MIME_OF_EXTENSION[extension] || "" }));
    figure.prepend(el("img", { src: url, alt: key, "data-output": key }));
    return;
  }
  await loadViewer();
  let glb = bytes;
  if (kind === "obj") glb = meshToGlb(parseObj(new TextDecoder().decode(bytes)));
  if (kind === "ply") glb = meshToGlb(parsePly(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
  const type = kind === "gltf" ? "model/gltf+json" : "model/gltf-binary";
  const viewer = el("model-viewer", { alt: key, loading: "eager", "camera-controls": true, "interaction-prompt": "none", "shadow-intensity": 0.6, "data-output": key, "data-format": kind });
  const state = el("span", { class: "viewer-state" }, " · loading…");
  viewer.addEventListener("load", () => { state.textContent = " · " + kind + " in the viewer (drag to turn)"; viewer.dataset.state = "loaded"; });
  viewer.addEventListener("error", (event) => {
    state.textContent = " · the viewer could not read it: " + ((event.detail && event.detail.type) || "error");
    viewer.dataset.state = "error";
  });
  figure.querySelector("figcaption").append(state);
  figure.prepend(viewer);
  viewer.src = URL.createObjectURL(new Blob([glb], { type }));
}

// A figure for one file output: shown when its kind is known, always with a link.
function fileOutput(key, value, values, files) {
  const caption = el("figcaption", {}, el("b", {}, key));
  const figure = el("figure", { "data-key": key }, caption);
  let kind = hinted(key, values, files);
  const render = async () => {
    let bytes;
    if (isBytes(value)) {
      bytes = decodeBytes(value.$bytes);
      kind = kind || sniff(bytes);
      const url = URL.createObjectURL(new Blob([bytes]));
      caption.append(" · " + formatBytes(bytes.length) + " · ", el("a", { href: url, download: key + (kind ? "." + kind[1] : "") }, "download"));
    } else {
      const path = "/v1/artifacts/" + encodeURIComponent(value.$artifact);
      const size = Number.isInteger(value.size_bytes) ? " · " + formatBytes(value.size_bytes) : "";
      caption.append(" · artifact " + value.$artifact + size + " · ", el("a", { href: withToken(path), download: key + (kind ? "." + kind[1] : "") }, "download"));
      if (!kind) return;
      const response = await api("GET", path);
      if (+response.headers.get("content-length") > MAX_SHOWN_BYTES) { caption.append(" · too big to show here"); return; }
      bytes = new Uint8Array(await response.arrayBuffer());
    }
    if (kind) await show(figure, key, kind[0], kind[1], bytes);
  };
  render().catch((error) => caption.append(el("span", { class: "failed" }, " · " + error.message)));
  return figure;
}

// A table of plain values and a row of file figures, for an object of outputs (or inputs).
function renderValues(container, values) {
  const entries = Object.entries(values || {});
  const files = entries.filter(([, v]) => isArtifact(v) || isBytes(v)).length;
  const rows = entries.filter(([, v]) => !isArtifact(v) && !isBytes(v)).map(([key, v]) => {
    const json = JSON.stringify(v, null, 1);
    return el("tr", {}, el("th", {}, key), el("td", {}, el("code", {}, json.length > 4000 ? json.slice(0, 4000) + " …" : json)));
  });
  const figures = entries.filter(([, v]) => isArtifact(v) || isBytes(v)).map(([key, v]) => fileOutput(key, v, values, files));
  container.replaceChildren(el("div", { class: "values" },
    figures.length ? el("div", { class: "outputs" }, figures) : "",
    rows.length ? el("table", {}, el("tbody", {}, rows)) : ""));
}
