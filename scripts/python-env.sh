#!/usr/bin/env bash
# Creates the project's Python environment (.venv) once, for the documented
# pika example that the tests run. Skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import pika" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "pika==1.3.2"
echo "python-env: $VENV ready"
