"""Example gpuq adapter: a toy text-to-mesh model (no GPU, no weights).

It turns a prompt into a cube mesh (Wavefront OBJ) whose size comes from the
`size` input, reporting progress as a real generator would. Register it as:

    [[models]]
    id = "toy_text_to_mesh"
    feature = "text_to_mesh"
    runtime = "adapter"
    vram_mib = 512
    [models.params]
    command = ["python3", "adapters/python/example_adapter.py"]
    settings = { load_seconds = 0.2 }

Inputs: prompt (string, required), size (number, default 1.0).
Outputs: mesh (OBJ file bytes), format, vertex_count, face_count, prompt, pid.

Registered under the id `procedural_mesh` (and run by an interpreter with
numpy and trimesh, such as the project's .venv/bin/python), it serves the
procedural stand-in of procedural_mesh.py instead: a GLB mesh from a prompt
and a seed. It is not a generative model.

For gpuq's own failure tests only, the `fault` input makes it misbehave on
purpose: "crash" (exit mid-job), "hang", "garbage" (invalid protocol output) or
"error" (a reported input error); settings `crash_on_load` / `fail_load` make
loading fail.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpuq_adapter import Adapter, AdapterError, debug_write_raw_line, serve  # noqa: E402
import procedural_mesh  # noqa: E402

CUBE_VERTICES = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
CUBE_FACES = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]


class ToyTextToMesh(Adapter):
    def load(self, model_id, settings):
        if settings.get("crash_on_load"):
            os._exit(4)
        if settings.get("fail_load"):
            raise RuntimeError("checkpoint not found (fail_load is set)")
        if model_id == procedural_mesh.MODEL_ID:
            procedural_mesh.require_mesh_libraries()
        time.sleep(float(settings.get("load_seconds", 0)))
        self.model_id = model_id
        print(f"toy adapter: loaded {model_id} in pid {os.getpid()}", file=sys.stderr)

    def run(self, inputs, progress):
        fault = inputs.get("fault")
        if fault == "crash":
            os._exit(3)
        if fault == "hang":
            time.sleep(3600)
        if fault == "garbage":
            debug_write_raw_line("this is not a protocol message")
            return {}
        if fault == "error":
            raise AdapterError("the toy model refuses this prompt", code="invalid_input")
        if self.model_id == procedural_mesh.MODEL_ID:
            return procedural_mesh.generate(inputs, progress)
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise AdapterError("input 'prompt' must be a non-empty string", code="invalid_input")
        size = inputs.get("size", 1.0)
        if not isinstance(size, (int, float)) or size <= 0:
            raise AdapterError("input 'size' must be a positive number", code="invalid_input")
        progress(0.25)
        half = float(size) / 2
        lines = [f"# {prompt}"]
        lines += [f"v {x * half} {y * half} {z * half}" for x, y, z in CUBE_VERTICES]
        progress(0.75)
        lines += ["f " + " ".join(str(i) for i in face) for face in CUBE_FACES]
        mesh = ("\n".join(lines) + "\n").encode()
        return {
            "mesh": mesh,
            "format": "obj",
            "vertex_count": len(CUBE_VERTICES),
            "face_count": len(CUBE_FACES),
            "prompt": prompt,
            "pid": os.getpid(),
        }


if __name__ == "__main__":
    serve(ToyTextToMesh())
