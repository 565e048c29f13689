"""The `procedural_mesh` model of the example adapter: a procedural stand-in,
not a generative model.

It gives demos and tests a real mesh job without weights or a GPU: the
prompt's words pick a primitive (box, icosphere, cylinder or torus) and a
colour, the seed scales, twists and roughens it, and the result is a binary
glTF (GLB) file. It understands nothing of the prompt beyond those keywords.

Inputs: prompt (string, 1 to 2000 characters), seed (integer, 0 to 2**64 - 1,
default 0). The same prompt and seed give byte-identical GLB bytes.
Outputs: mesh (GLB bytes), format ("glb"), content_type ("model/gltf-binary"),
primitive, vertex_count, face_count, seed, generator.

The work is bounded whatever the prompt: every primitive has a fixed
resolution (at most MAX_VERTICES vertices, a GLB of a few tens of kB) and the
prompt is only hashed and split into words.

Needs numpy and trimesh (the project's .venv has both); without them the model
fails to load with a message saying so, and the adapter process stays healthy.
"""

import hashlib
import re

from gpuq_adapter import AdapterError

MODEL_ID = "procedural_mesh"
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**64 - 1
MAX_VERTICES = 5000
GENERATOR = "gpuq procedural_mesh: a procedural stand-in, not a generative model"

# Keywords per primitive, checked in this order; a word matches when it
# contains the keyword ("boxes", "tower-like").
KEYWORDS = [
    ("box", ("box", "cube", "crate", "block")),
    ("icosphere", ("ball", "sphere", "orb", "globe")),
    ("cylinder", ("tower", "cylinder", "pillar", "column")),
    ("torus", ("donut", "doughnut", "ring", "torus")),
]
PRIMITIVES = [name for name, _ in KEYWORDS]

COLOURS = {
    "red": (200, 40, 40),
    "orange": (230, 130, 30),
    "yellow": (230, 200, 40),
    "green": (50, 160, 70),
    "blue": (40, 90, 200),
    "purple": (130, 60, 170),
    "pink": (230, 120, 170),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "gold": (212, 175, 55),
    "silver": (190, 190, 200),
}


def require_mesh_libraries():
    """Imports numpy and trimesh, or raises an AdapterError that says how to get them."""
    try:
        import numpy
        import trimesh
    except ImportError as error:
        raise AdapterError(
            f"{MODEL_ID} needs numpy and trimesh ({error}); run the adapter with the "
            "project's .venv/bin/python (scripts/python-env.sh installs them)",
            code="model_failed",
        ) from error
    return numpy, trimesh


def check_inputs(inputs):
    """The prompt and seed, checked: AdapterError(invalid_input) otherwise."""
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise AdapterError("input 'prompt' must be a non-empty string", code="invalid_input")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise AdapterError(
            f"input 'prompt' has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}",
            code="invalid_input",
        )
    seed = inputs.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise AdapterError(
            f"input 'seed' must be an integer from 0 to {MAX_SEED}", code="invalid_input"
        )
    return prompt, seed


def words_of(prompt):
    return re.findall(r"[a-z0-9]+", prompt.lower())


def digest_of(prompt):
    """A stable digest of the prompt (Python's hash() differs between processes)."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()


def pick_primitive(words, digest):
    """The first primitive whose keyword a word contains, else one chosen by the digest."""
    for name, keywords in KEYWORDS:
        if any(keyword in word for word in words for keyword in keywords):
            return name
    return PRIMITIVES[digest[0] % len(PRIMITIVES)]


def pick_colour(words, digest):
    """The first colour word of the prompt, else a colour from the digest."""
    for word in words:
        if word in COLOURS:
            return COLOURS[word]
    return tuple(60 + byte % 180 for byte in digest[1:4])


def primitive_mesh(trimesh, name):
    """The primitive at its fixed resolution, centred on the origin."""
    if name == "box":
        return trimesh.creation.box(extents=(1.6, 1.6, 1.6)).subdivide().subdivide().subdivide()
    if name == "icosphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    if name == "cylinder":
        return trimesh.creation.cylinder(radius=0.6, height=2.0, sections=48)
    return trimesh.creation.torus(
        major_radius=0.8, minor_radius=0.3, major_sections=48, minor_sections=24
    )


def vertex_normals(numpy, vertices, faces):
    """Area-weighted vertex normals (trimesh's own want scipy, which is not installed)."""
    corners = vertices[faces]
    face_normals = numpy.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = numpy.zeros_like(vertices)
    for corner in range(3):
        numpy.add.at(normals, faces[:, corner], face_normals)
    lengths = numpy.linalg.norm(normals, axis=1, keepdims=True)
    return normals / numpy.maximum(lengths, 1e-12)


def deform(numpy, mesh, rng):
    """Vertices scaled per axis, twisted about z and pushed along their normals."""
    vertices = numpy.array(mesh.vertices, dtype=numpy.float64)
    normals = vertex_normals(numpy, vertices, numpy.array(mesh.faces))
    vertices *= rng.uniform(0.7, 1.3, size=3)
    angle = rng.uniform(-0.6, 0.6) * vertices[:, 2]
    cos, sin = numpy.cos(angle), numpy.sin(angle)
    x, y = vertices[:, 0].copy(), vertices[:, 1].copy()
    vertices[:, 0] = cos * x - sin * y
    vertices[:, 1] = sin * x + cos * y
    roughness = rng.uniform(0.01, 0.06)
    vertices += normals * rng.normal(0.0, roughness, size=(len(vertices), 1))
    return vertices


def shaded_colours(numpy, vertices, colour):
    """The base colour, darker towards the bottom, one RGBA row per vertex."""
    z = vertices[:, 2]
    span = max(float(z.max() - z.min()), 1e-9)
    shade = 0.6 + 0.4 * (z - z.min()) / span
    rgb = numpy.clip(numpy.outer(shade, colour), 0, 255).astype(numpy.uint8)
    alpha = numpy.full((len(vertices), 1), 255, dtype=numpy.uint8)
    return numpy.hstack([rgb, alpha])


def generate(inputs, progress=lambda fraction: None):
    """Runs one job: the outputs dict, with the GLB bytes under `mesh`."""
    prompt, seed = check_inputs(inputs)
    numpy, trimesh = require_mesh_libraries()
    words, digest = words_of(prompt), digest_of(prompt)
    name = pick_primitive(words, digest)
    # Seeded by the seed and the prompt, so two prompts with one seed differ too.
    entropy = [seed & 0xFFFFFFFF, seed >> 32] + list(digest[:16])
    rng = numpy.random.default_rng(numpy.random.SeedSequence(entropy))
    base = primitive_mesh(trimesh, name)
    progress(0.3)
    vertices = deform(numpy, base, rng)
    mesh = trimesh.Trimesh(
        vertices=vertices,
        faces=numpy.array(base.faces),
        vertex_colors=shaded_colours(numpy, vertices, pick_colour(words, digest)),
        metadata={"name": MODEL_ID, "generator": GENERATOR},
        process=False,
    )
    if len(mesh.vertices) > MAX_VERTICES:
        raise AdapterError(f"{name} has {len(mesh.vertices)} vertices, over {MAX_VERTICES}")
    progress(0.7)
    glb = mesh.export(file_type="glb")
    return {
        "mesh": glb,
        "format": "glb",
        "content_type": "model/gltf-binary",
        "primitive": name,
        "vertex_count": len(mesh.vertices),
        "face_count": len(mesh.faces),
        "seed": seed,
        "generator": GENERATOR,
    }
