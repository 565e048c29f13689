"""gpuq adapter helper: run any Python model as a gpuq `adapter` runtime.

Standard library only. Subclass `Adapter`, then call `serve(MyAdapter())`:

    from gpuq_adapter import Adapter, AdapterError, serve

    class MyModel(Adapter):
        def load(self, model_id, settings):
            self.pipeline = load_weights(settings["checkpoint"])   # once per process
        def run(self, inputs, progress):
            progress(0.1)
            mesh_path = self.pipeline(inputs["prompt"])
            return {"mesh": open(mesh_path, "rb").read()}           # bytes are fine
        def unload(self):
            del self.pipeline

    if __name__ == "__main__":
        serve(MyModel())

The protocol (docs/adapters.md) is JSON lines on stdin/stdout; every reply
echoes the `id` of the request it answers (`serve` does it for you). `serve` keeps the
real stdout for the protocol and points `sys.stdout` (and file descriptor 1) at
stderr, so a stray `print()` or a chatty C library cannot corrupt it; stderr
goes to the worker's log. Bytes travel as {"$bytes": "<base64>"} and are
converted both ways for you.
"""

import base64
import json
import os
import sys
import traceback

BYTES_KEY = "$bytes"

_protocol_out = None


class AdapterError(Exception):
    """A job error with a code the worker records: invalid_input, out_of_memory or model_failed."""

    def __init__(self, message, code="model_failed"):
        super().__init__(message)
        self.code = code


class Adapter:
    """Override `load`, `run` and, if needed, `unload`."""

    def load(self, model_id, settings):
        """Load weights; called once before any job. `settings` is the model's params.settings."""

    def run(self, inputs, progress):
        """Run one job: return a dict of outputs. Call progress(fraction) as it goes."""
        raise NotImplementedError

    def unload(self):
        """Free resources before the process exits."""


def encode(value):
    """Python values to protocol JSON: bytes become {"$bytes": base64}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def decode(value):
    """Protocol JSON to Python values: {"$bytes": base64} becomes bytes."""
    if isinstance(value, dict):
        if len(value) == 1 and BYTES_KEY in value:
            return base64.b64decode(value[BYTES_KEY])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _send(message, request_id):
    """Writes one reply line, echoing the id of the request it answers."""
    message["id"] = request_id
    _protocol_out.write(json.dumps(message) + "\n")
    _protocol_out.flush()


def debug_write_raw_line(text):
    """Writes a raw line on the protocol channel. Only for testing how the worker
    handles a misbehaving adapter; a real adapter never needs it."""
    _protocol_out.write(text + "\n")
    _protocol_out.flush()


def _describe(error):
    return f"{type(error).__name__}: {error}"


def serve(adapter):
    """Speak the adapter protocol until `unload` or the end of stdin."""
    global _protocol_out
    _protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        message = json.loads(line)
        op = message.get("op")
        request_id = message.get("id")
        if op == "load":
            try:
                adapter.load(message.get("model"), message.get("settings") or {})
            except Exception as error:  # report, then let the worker decide
                traceback.print_exc()
                _send({"type": "error", "message": _describe(error)}, request_id)
                continue
            _send({"type": "ready"}, request_id)
        elif op == "run":
            def progress(fraction, request_id=request_id):
                _send({"type": "progress", "progress": max(0.0, min(1.0, float(fraction)))}, request_id)

            try:
                outputs = adapter.run(decode(message.get("inputs") or {}), progress)
                if not isinstance(outputs, dict):
                    raise AdapterError(f"run() must return a dict, got {type(outputs).__name__}")
                _send({"type": "result", "outputs": encode(outputs)}, request_id)
            except AdapterError as error:
                _send({"type": "error", "code": error.code, "message": str(error)}, request_id)
            except MemoryError as error:
                _send({"type": "error", "code": "out_of_memory", "message": _describe(error)}, request_id)
            except Exception as error:
                traceback.print_exc()
                code = "out_of_memory" if "out of memory" in str(error).lower() else "model_failed"
                _send({"type": "error", "code": code, "message": _describe(error)}, request_id)
        elif op == "unload":
            adapter.unload()
            return
        else:
            print(f"gpuq_adapter: ignoring unknown op {op!r}", file=sys.stderr)
