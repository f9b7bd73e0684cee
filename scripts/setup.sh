#!/usr/bin/env bash
# Create .venv once and install requirements.txt (plus any extra packages given
# as arguments) into it. Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
GIVEN=${PYTHON:-}
PYTHON=${PYTHON:-python3}
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # no .venv yet, or one that a failed `python -m venv` left without pip (Debian/Ubuntu without python3-venv)
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: no interpreter '$PYTHON' on PATH; set PYTHON to an installed Python 3 (e.g. PYTHON=python3.11)" >&2
    exit 2
  fi
  echo "creating .venv with $("$PYTHON" --version)"
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv
    echo "error: '$PYTHON -m venv .venv' failed (on Debian/Ubuntu: apt-get install python3-venv), then run this again" >&2
    exit 1
  fi
elif [ -n "$GIVEN" ] && [ "$(.venv/bin/python --version 2>&1)" != "$("$PYTHON" --version 2>&1)" ]; then
  echo "note: .venv already exists with $(.venv/bin/python --version 2>&1); PYTHON=$GIVEN is not used (delete .venv to change it)" >&2
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt "$@"
