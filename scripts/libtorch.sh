#!/usr/bin/env bash
# Installs libtorch for the `torch` feature (tch 0.26 expects PyTorch 2.13.0),
# once, into a cached virtualenv outside the checkout, and prints the
# environment to build with. Skipped when already installed.
#
#   eval "$(scripts/libtorch.sh)"   # then: cargo build --features torch ...
#
# The only route to libtorch on these machines is the PyPI wheel (about 2.7 GB
# download, 4.7 GB installed); it pulls its nvidia-* wheels even for CPU use.
set -euo pipefail

TORCH_VERSION=2.13.0
VENV="${GPUQ_TORCH_VENV:-$HOME/.cache/gpuq/torch-$TORCH_VERSION}"

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "libtorch: installing torch==$TORCH_VERSION into $VENV (one time, a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" >&2
fi

echo "export LIBTORCH_USE_PYTORCH=1"
echo "export PATH=\"$VENV/bin:\$PATH\""
