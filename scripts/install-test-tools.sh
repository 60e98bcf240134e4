#!/usr/bin/env bash
# Installs the independent readers some tests check rotor's files with, into .venv-tools/ (from
# PyPI, pinned): TensorBoard's own event-file reader (the TensorBoard events test). Does nothing
# when they are already installed. Needs python3 with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tools
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import tensorboard" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv "$VENV" 2>/dev/null; then
  echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)" >&2
  exit 1
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "tensorboard==2.21.0"
echo "installed TensorBoard 2.21.0 into $VENV for the event-file test"
