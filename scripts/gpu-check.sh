#!/usr/bin/env bash
# One short check on a machine with an NVIDIA GPU (run through the device tool):
# real NVML discovery and the VRAM plan, without RabbitMQ or Redis.
# Needs target/debug/gpuq-dispatcher built here (x86-64) and carried along.
set -uo pipefail
cd "$(dirname "$0")/.."
echo "== nvidia-smi"
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu --format=csv 2>&1 | head -20
echo "== gpuq-dispatcher --print-plan (NVML discovery)"
RUST_LOG=info target/debug/gpuq-dispatcher --config config/gpuq.example.toml --print-plan 2>&1
echo "== with CUDA_VISIBLE_DEVICES=0"
CUDA_VISIBLE_DEVICES=0 target/debug/gpuq-dispatcher --config config/gpuq.example.toml --print-plan 2>&1
