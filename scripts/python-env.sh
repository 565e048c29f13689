#!/usr/bin/env bash
# Creates the project's Python environment (.venv) once: pika for the documented
# example the tests run, and moto's S3 server for the S3 artifact-store test.
# Skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pika, moto" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "pika==1.3.2" "moto[server]==5.1.18"
echo "python-env: $VENV ready"
