// Line and stacked-area charts as plain inline SVG: one <polyline> (lines) or
// <path> (stacked areas) per series, each with data-series="<name>", and an
// HTML legend. No library: the gateway serves every script itself.
"use strict";

const PALETTE = ["#3b7ddd", "#e0a030", "#1a7f37", "#c62828", "#7b4fc9", "#00838f", "#ad1457", "#6d4c41", "#546e7a", "#9e9d24"];
const CHART = { width: 460, height: 150, left: 46, right: 10, top: 10, bottom: 22 };

// A round number at or above `value` (1, 2, 2.5, 5 × 10^n), at least `floor`.
function niceMax(value, floor) {
  const v = Math.max(value, floor);
  const magnitude = Math.pow(10, Math.floor(Math.log10(v)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= v) return step * magnitude;
  return 10 * magnitude;
}

function formatValue(v) {
  if (v >= 10000) return (v / 1000).toFixed(v % 1000 ? 1 : 0) + "k";
  if (v >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(v >= 10 ? 1 : 2);
}

// The axes, grid and labels of a chart over [t0, t1] and [0, max].
function chartFrame(svg, t0, t1, max, unit) {
  const { width, height, left, right, top, bottom } = CHART;
  const plotHeight = height - top - bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotHeight - fraction * plotHeight;
    svg.append(el("line", { x1: left, x2: width - right, y1: y, y2: y, class: fraction ? "grid" : "axis" }));
    svg.append(el("text", { x: left - 5, y: y + 4, "text-anchor": "end", class: "label" }, formatValue(fraction * max)));
  }
  const ago = (ms) => (ms < 120000 ? Math.round(ms / 1000) + " s" : Math.round(ms / 60000) + " min");
  for (const fraction of [0, 1 / 3, 2 / 3, 1]) {
    const x = left + fraction * (width - left - right);
    const label = fraction === 1 ? "now" : "-" + ago((t1 - t0) * (1 - fraction));
    svg.append(el("text", { x, y: height - 6, "text-anchor": fraction === 0 ? "start" : fraction === 1 ? "end" : "middle", class: "label" }, label));
  }
  if (unit) svg.append(el("text", { x: left + 4, y: top + 10, class: "label unit" }, unit));
}

// Maps (t, v) to SVG coordinates.
function scales(t0, t1, max) {
  const { width, height, left, right, top, bottom } = CHART;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  return {
    x: (t) => (left + ((t - t0) / Math.max(1, t1 - t0)) * plotWidth).toFixed(1),
    y: (v) => (top + plotHeight - (v / max) * plotHeight).toFixed(1),
  };
}

function legend(series) {
  return el("div", { class: "legend" }, series.map((s) => {
    const last = s.values.length ? s.values[s.values.length - 1][1] : null;
    return el("span", { class: "key", "data-series": s.name },
      el("span", { class: "swatch", style: "background:" + s.color }), s.name,
      last == null ? "" : el("b", {}, " " + formatValue(last)));
  }));
}

// Replaces `host`'s content with a chart. spec: {id, title, unit, t0, t1,
// stacked, floor, series: [{name, color?, values: [[t_ms, value], ...]}]}.
function drawChart(host, spec) {
  const series = spec.series.map((s, i) => ({ ...s, color: s.color || PALETTE[i % PALETTE.length] }));
  let max = 0;
  if (spec.stacked) {
    const totals = new Map();
    for (const s of series) for (const [t, v] of s.values) totals.set(t, (totals.get(t) || 0) + v);
    for (const total of totals.values()) max = Math.max(max, total);
  } else {
    for (const s of series) for (const [, v] of s.values) max = Math.max(max, v);
  }
  max = niceMax(max, spec.floor || 1);
  const svg = el("svg", { id: "chart-" + spec.id, class: "chart", viewBox: `0 0 ${CHART.width} ${CHART.height}`, role: "img", "aria-label": spec.title, "data-max": max });
  chartFrame(svg, spec.t0, spec.t1, max, spec.unit);
  const { x, y } = scales(spec.t0, spec.t1, max);
  if (spec.stacked) {
    // Each series is an area between the running total below it and its top.
    const below = new Map();
    for (const s of series) {
      const top = s.values.map(([t, v]) => [t, (below.get(t) || 0) + v]);
      const bottom = s.values.map(([t]) => [t, below.get(t) || 0]).reverse();
      for (const [t, v] of top) below.set(t, v);
      if (!top.length) continue;
      const d = "M" + top.concat(bottom).map(([t, v]) => x(t) + "," + y(v)).join("L") + "Z";
      svg.append(el("path", { d, fill: s.color, "fill-opacity": 0.75, stroke: s.color, "data-series": s.name }, el("title", {}, s.name)));
    }
  } else {
    for (const s of series) {
      const points = s.values.map(([t, v]) => x(t) + "," + y(v)).join(" ");
      svg.append(el("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 1.8, "data-series": s.name }, el("title", {}, s.name)));
    }
  }
  host.replaceChildren(el("div", { class: "chart-title" }, spec.title), svg, legend(series));
}
