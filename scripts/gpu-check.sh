#!/usr/bin/env bash
# One short check on a machine with an NVIDIA GPU (run through the device tool):
#  1. real NVML discovery and the VRAM plan (gpuq-dispatcher --print-plan);
#  2. measured VRAM (issue 17): the worker's NVML reading, residency pool and
#     per-job sampler on a TorchScript module loaded on cuda:0, with inputs of
#     three sizes, printed beside nvidia-smi (gpu-worker/src/vram/gpu_check.rs).
# Neither needs RabbitMQ or Redis.
#
# Here, first:  scripts/gpu-check.sh --prepare
#   puts stripped copies of gpuq-dispatcher and of the worker's test binary
#   (feature torch) in target/gpu-check/ (about 25 MiB; debug builds are
#   over 200 MiB each): carry target/gpu-check. Step 2 also needs libtorch with CUDA on the GPU machine
#   (LIBTORCH=/path, with lib/ inside; it is GiBs, too big to carry): without
#   it, step 2 says so and is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
    set -e
    scripts/cargo.sh build --bins
    bin=$(scripts/cargo.sh test --lib -p gpuq-worker --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpuq_worker" and m["profile"]["test"]:
        print(m["executable"])')
    mkdir -p target/gpu-check
    strip -o target/gpu-check/gpuq-worker-tests "$bin"
    strip -o target/gpu-check/gpuq-dispatcher target/debug/gpuq-dispatcher
    ls -la target/gpu-check/
    exit 0
fi
echo "== nvidia-smi"
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu --format=csv 2>&1 | head -20
echo "== gpuq-dispatcher --print-plan (NVML discovery)"
RUST_LOG=info target/gpu-check/gpuq-dispatcher --config config/gpuq.example.toml --print-plan 2>&1
echo "== with CUDA_VISIBLE_DEVICES=0"
CUDA_VISIBLE_DEVICES=0 target/gpu-check/gpuq-dispatcher --config config/gpuq.example.toml --print-plan 2>&1
echo "== measured VRAM on cuda:0 (worker's NVML sampler, affine.pt, three input sizes)"
LIBTORCH=${LIBTORCH:-}
if [[ -z "$LIBTORCH" ]]; then
    for candidate in /opt/libtorch /usr/local/libtorch "$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)"; do
        [[ -n "$candidate" && -d "$candidate/lib" ]] && LIBTORCH=$candidate && break
    done
fi
if [[ ! -x target/gpu-check/gpuq-worker-tests ]]; then
    echo "skipped: target/gpu-check/gpuq-worker-tests is missing (scripts/gpu-check.sh --prepare, then carry it)"
elif [[ -z "$LIBTORCH" ]]; then
    echo "skipped: no libtorch with CUDA on this machine (set LIBTORCH; it cannot be carried)"
else
    LD_LIBRARY_PATH="$LIBTORCH/lib:${LD_LIBRARY_PATH:-}" CUDA_VISIBLE_DEVICES=0 \
        GPUQ_GPU_CHECK_MODEL="$PWD/tests/fixtures/affine.pt" \
        timeout 300 target/gpu-check/gpuq-worker-tests --ignored --exact \
        vram::gpu_check::measured_vram_on_a_real_gpu --nocapture 2>&1 | tail -20
fi
