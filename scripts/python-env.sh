#!/usr/bin/env bash
# Creates the project's Python environment (.venv) once: pika for the documented
# example the tests run, moto's S3 server for the S3 artifact-store test,
# kubernetes-validate (offline schemas) for the Kubernetes manifests' test,
# standardwebhooks to verify webhook signatures as any receiver would, and
# trimesh (with numpy) for the example adapter's procedural mesh model.
# Skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pika, moto, kubernetes_validate, standardwebhooks, trimesh, numpy" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "pika==1.3.2" "moto[server]==5.1.18" \
  "kubernetes-validate==1.37.0" "standardwebhooks==1.1.0" "trimesh==5.2.0" "numpy==2.4.6"
echo "python-env: $VENV ready"
