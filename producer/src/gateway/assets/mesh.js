// OBJ and PLY meshes to binary glTF (GLB), in the browser, so that the job
// page's one viewer (model-viewer, which reads only glTF) shows them too.
// Only geometry is kept: positions, faces (polygons as triangle fans) and
// vertex colours; no normals (the viewer shades flat), UVs or materials.
"use strict";

// OBJ text: "v x y z [r g b]" and "f a b c ..." (1-based or negative indices,
// "a/t/n" forms); other statements are ignored.
function parseObj(text) {
  const positions = [], colors = [], indices = [];
  let coloured = true;
  for (const line of text.split(/\r?\n/)) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] === "v") {
      positions.push(+parts[1], +parts[2], +parts[3]);
      if (parts.length >= 7) colors.push(+parts[4], +parts[5], +parts[6]); else coloured = false;
    } else if (parts[0] === "f") {
      const count = positions.length / 3;
      const ids = parts.slice(1).map((p) => { const i = parseInt(p.split("/")[0], 10); return i < 0 ? count + i : i - 1; });
      for (let k = 1; k + 1 < ids.length; k++) indices.push(ids[0], ids[k], ids[k + 1]);
    }
  }
  return { positions, indices, colors: coloured && colors.length ? colors : null };
}

const PLY_TYPES = {
  char: ["Int8", 1], int8: ["Int8", 1], uchar: ["Uint8", 1], uint8: ["Uint8", 1],
  short: ["Int16", 2], int16: ["Int16", 2], ushort: ["Uint16", 2], uint16: ["Uint16", 2],
  int: ["Int32", 4], int32: ["Int32", 4], uint: ["Uint32", 4], uint32: ["Uint32", 4],
  float: ["Float32", 4], float32: ["Float32", 4], double: ["Float64", 8], float64: ["Float64", 8],
};

// The PLY header: format, elements with their properties, and where data starts.
function plyHeader(bytes) {
  const head = new TextDecoder("latin1").decode(bytes.subarray(0, Math.min(bytes.length, 65536)));
  const end = head.indexOf("end_header");
  if (!head.startsWith("ply") || end < 0) throw new Error("not a PLY file");
  const newline = head.indexOf("\n", end);
  const header = { format: "", elements: [], dataStart: newline + 1 };
  for (const line of head.slice(0, end).split(/\r?\n/)) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] === "format") header.format = parts[1];
    else if (parts[0] === "element") header.elements.push({ name: parts[1], count: +parts[2], properties: [] });
    else if (parts[0] === "property") {
      const element = header.elements[header.elements.length - 1];
      if (parts[1] === "list") element.properties.push({ name: parts[4], list: true, countType: parts[2], type: parts[3] });
      else element.properties.push({ name: parts[2], type: parts[1] });
    }
  }
  return header;
}

// A reader of the PLY body's values, ASCII or binary.
function plyReader(bytes, header) {
  if (header.format === "ascii") {
    const tokens = new TextDecoder("latin1").decode(bytes.subarray(header.dataStart)).trim().split(/\s+/);
    let at = 0;
    return () => +tokens[at++];
  }
  const little = header.format === "binary_little_endian";
  if (!little && header.format !== "binary_big_endian") throw new Error("unknown PLY format " + header.format);
  const view = new DataView(bytes.buffer, bytes.byteOffset + header.dataStart);
  let at = 0;
  return (type) => {
    const [getter, size] = PLY_TYPES[type] || [];
    if (!getter) throw new Error("unknown PLY type " + type);
    const value = view["get" + getter](at, little);
    at += size;
    return value;
  };
}

// PLY (ascii or binary): vertex x, y, z (and red, green, blue) and face lists.
function parsePly(buffer) {
  const bytes = new Uint8Array(buffer);
  const header = plyHeader(bytes);
  const read = plyReader(bytes, header);
  const positions = [], colors = [], indices = [];
  for (const element of header.elements) {
    for (let row = 0; row < element.count; row++) {
      const values = {};
      for (const property of element.properties) {
        if (property.list) {
          const n = read(property.countType);
          values[property.name] = Array.from({ length: n }, () => read(property.type));
        } else values[property.name] = read(property.type);
      }
      if (element.name === "vertex") {
        positions.push(values.x, values.y, values.z);
        if (values.red !== undefined) colors.push(values.red / 255, values.green / 255, values.blue / 255);
      } else if (element.name === "face") {
        const ids = values.vertex_indices || values.vertex_index || [];
        for (let k = 1; k + 1 < ids.length; k++) indices.push(ids[0], ids[k], ids[k + 1]);
      }
    }
  }
  return { positions, indices, colors: colors.length === positions.length ? colors : null };
}

// Positions (and colours, 0 to 1) and triangle indices as a GLB file; faces
// that name a missing vertex are dropped; without faces, points.
function meshToGlb({ positions, indices, colors }) {
  const count = positions.length / 3;
  if (!count) throw new Error("the mesh has no vertices");
  const triangles = [];
  for (let i = 0; i + 2 < indices.length; i += 3) {
    const t = indices.slice(i, i + 3);
    if (t.every((v) => Number.isInteger(v) && v >= 0 && v < count)) triangles.push(...t);
  }
  const pos = new Float32Array(positions);
  const min = [Infinity, Infinity, Infinity], max = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < pos.length; i++) { min[i % 3] = Math.min(min[i % 3], pos[i]); max[i % 3] = Math.max(max[i % 3], pos[i]); }
  const parts = [pos];
  const accessors = [{ bufferView: 0, componentType: 5126, count, type: "VEC3", min, max }];
  const attributes = { POSITION: 0 };
  if (colors) { parts.push(new Float32Array(colors)); attributes.COLOR_0 = accessors.length; accessors.push({ bufferView: 1, componentType: 5126, count, type: "VEC3" }); }
  const primitive = { attributes, material: 0, mode: triangles.length ? 4 : 0 };
  if (triangles.length) {
    primitive.indices = accessors.length;
    accessors.push({ bufferView: parts.length, componentType: 5125, count: triangles.length, type: "SCALAR" });
    parts.push(new Uint32Array(triangles));
  }
  let offset = 0;
  const bufferViews = parts.map((part) => { const view = { buffer: 0, byteOffset: offset, byteLength: part.byteLength }; offset += part.byteLength; return view; });
  const gltf = {
    asset: { version: "2.0", generator: "gpuq dashboard (mesh.js)" }, scene: 0, scenes: [{ nodes: [0] }], nodes: [{ mesh: 0 }],
    meshes: [{ primitives: [primitive] }], accessors, bufferViews, buffers: [{ byteLength: offset }],
    materials: [{ pbrMetallicRoughness: { baseColorFactor: [0.8, 0.8, 0.82, 1], metallicFactor: 0, roughnessFactor: 0.8 }, doubleSided: true }],
  };
  let json = new TextEncoder().encode(JSON.stringify(gltf));
  const jsonLength = Math.ceil(json.length / 4) * 4;
  const total = 12 + 8 + jsonLength + 8 + offset;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  view.setUint32(0, 0x46546c67, true); view.setUint32(4, 2, true); view.setUint32(8, total, true);
  view.setUint32(12, jsonLength, true); view.setUint32(16, 0x4e4f534a, true);
  out.fill(0x20, 20, 20 + jsonLength); out.set(json, 20);
  view.setUint32(20 + jsonLength, offset, true); view.setUint32(24 + jsonLength, 0x004e4942, true);
  let at = 28 + jsonLength;
  for (const part of parts) { out.set(new Uint8Array(part.buffer, part.byteOffset, part.byteLength), at); at += part.byteLength; }
  return out;
}
