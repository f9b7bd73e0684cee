#!/usr/bin/env bash
# Install what the tests need and run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh pytest
.venv/bin/python -m pytest -q tests "$@"
