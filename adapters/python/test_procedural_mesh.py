"""Unit tests of the procedural_mesh model (no network, no broker).

Run with the project's interpreter, which has numpy and trimesh:

    .venv/bin/python -m unittest discover -s adapters/python -p 'test_*.py'

tests/tests/procedural_mesh.rs runs them too, and the model end to end.
"""

import base64
import json
import os
import struct
import subprocess
import sys
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import procedural_mesh  # noqa: E402
from gpuq_adapter import AdapterError  # noqa: E402


def glb_json(glb):
    """The JSON chunk of a GLB file, after checking its header."""
    magic, version, length = struct.unpack("<4sII", glb[:12])
    assert (magic, version, length) == (b"glTF", 2, len(glb)), (magic, version, length)
    chunk_length, chunk_type = struct.unpack("<I4s", glb[12:20])
    assert chunk_type == b"JSON", chunk_type
    return json.loads(glb[20 : 20 + chunk_length])


class GeneratedMesh(unittest.TestCase):
    def test_same_prompt_and_seed_give_identical_bytes_and_other_seeds_differ(self):
        first = procedural_mesh.generate({"prompt": "a red box", "seed": 7})["mesh"]
        again = procedural_mesh.generate({"prompt": "a red box", "seed": 7})["mesh"]
        other = procedural_mesh.generate({"prompt": "a red box", "seed": 8})["mesh"]
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)

    def test_the_output_is_a_glb_with_one_mesh_and_says_what_it_is(self):
        outputs = procedural_mesh.generate({"prompt": "a blue ball"})
        document = glb_json(outputs["mesh"])
        self.assertEqual(len(document["meshes"]), 1)
        positions = document["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
        self.assertEqual(document["accessors"][positions]["count"], outputs["vertex_count"])
        self.assertEqual(outputs["primitive"], "icosphere")
        self.assertEqual(outputs["content_type"], "model/gltf-binary")
        self.assertEqual(outputs["format"], "glb")
        self.assertEqual(outputs["seed"], 0)
        self.assertIn("not a generative model", outputs["generator"])
        self.assertIn("not a generative model", document["meshes"][0]["extras"]["generator"])

    def test_keywords_pick_the_primitive_and_other_prompts_a_stable_one(self):
        cases = {
            "two cubes": "box",
            "a shiny sphere": "icosphere",
            "a stone tower": "cylinder",
            "a glazed donut": "torus",
            "an onion ring": "torus",
        }
        for prompt, primitive in cases.items():
            with self.subTest(prompt=prompt):
                self.assertEqual(procedural_mesh.generate({"prompt": prompt})["primitive"], primitive)
        unknown = procedural_mesh.generate({"prompt": "something else"})["primitive"]
        self.assertIn(unknown, procedural_mesh.PRIMITIVES)
        self.assertEqual(procedural_mesh.generate({"prompt": "something else"})["primitive"], unknown)

    def test_colour_words_set_the_colour(self):
        words = procedural_mesh.words_of("A GREEN box")
        digest = procedural_mesh.digest_of("A GREEN box")
        self.assertEqual(procedural_mesh.pick_colour(words, digest), procedural_mesh.COLOURS["green"])

    def test_every_primitive_stays_under_the_vertex_cap(self):
        for name in procedural_mesh.PRIMITIVES:
            _, trimesh = procedural_mesh.require_mesh_libraries()
            mesh = procedural_mesh.primitive_mesh(trimesh, name)
            with self.subTest(primitive=name):
                self.assertLessEqual(len(mesh.vertices), procedural_mesh.MAX_VERTICES)


class Inputs(unittest.TestCase):
    def assert_invalid(self, inputs):
        with self.assertRaises(AdapterError) as caught:
            procedural_mesh.generate(inputs)
        self.assertEqual(caught.exception.code, "invalid_input")
        return str(caught.exception)

    def test_prompts_over_2000_characters_are_refused(self):
        procedural_mesh.generate({"prompt": "x" * procedural_mesh.MAX_PROMPT_CHARS})
        message = self.assert_invalid({"prompt": "x" * (procedural_mesh.MAX_PROMPT_CHARS + 1)})
        self.assertIn("2001 characters", message)

    def test_bad_prompts_and_seeds_are_refused(self):
        for inputs in [
            {},
            {"prompt": ""},
            {"prompt": 3},
            {"prompt": "box", "seed": -1},
            {"prompt": "box", "seed": 2**64},
            {"prompt": "box", "seed": 1.5},
            {"prompt": "box", "seed": True},
        ]:
            with self.subTest(inputs=inputs):
                self.assert_invalid(inputs)
        procedural_mesh.generate({"prompt": "box", "seed": 2**64 - 1})


class WithoutTrimesh(unittest.TestCase):
    def test_a_missing_trimesh_is_a_clear_model_error(self):
        with mock.patch.dict(sys.modules, {"trimesh": None}):
            with self.assertRaises(AdapterError) as caught:
                procedural_mesh.generate({"prompt": "box"})
        self.assertEqual(caught.exception.code, "model_failed")
        self.assertIn(".venv/bin/python", str(caught.exception))

    def test_the_adapter_reports_it_on_load_and_keeps_running(self):
        # The example adapter with trimesh hidden, speaking the protocol.
        script = os.path.join(HERE, "example_adapter.py")
        launcher = (
            "import runpy, sys; sys.modules['trimesh'] = None; "
            f"sys.argv = [{script!r}]; runpy.run_path({script!r}, run_name='__main__')"
        )
        requests = [
            {"op": "load", "id": "r1", "model": "procedural_mesh", "settings": {}},
            {"op": "unload", "id": "r2"},
        ]
        done = subprocess.run(
            [sys.executable, "-c", launcher],
            input="".join(json.dumps(r) + "\n" for r in requests),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        reply = json.loads(done.stdout.splitlines()[0])
        self.assertEqual((reply["type"], reply["id"]), ("error", "r1"))
        self.assertIn("needs numpy and trimesh", reply["message"])


class ThroughTheProtocol(unittest.TestCase):
    def test_the_example_adapter_serves_procedural_mesh(self):
        requests = [
            {"op": "load", "id": "r1", "model": "procedural_mesh", "settings": {}},
            {"op": "run", "id": "r2", "inputs": {"prompt": "a tower", "seed": 3}},
            {"op": "unload", "id": "r3"},
        ]
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "example_adapter.py")],
            input="".join(json.dumps(r) + "\n" for r in requests),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual(replies[0]["type"], "ready")
        result = replies[-1]
        self.assertEqual((result["type"], result["id"]), ("result", "r2"))
        glb = base64.b64decode(result["outputs"]["mesh"]["$bytes"])
        self.assertEqual(glb, procedural_mesh.generate({"prompt": "a tower", "seed": 3})["mesh"])
        self.assertEqual(len(glb_json(glb)["meshes"]), 1)


if __name__ == "__main__":
    unittest.main()
