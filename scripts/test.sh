#!/usr/bin/env bash
# Install what the tests need and run the whole suite on CPU. Ray
# (requirements-cluster.txt) too: a test runs compare.py --backend=ray.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh pytest -r requirements-cluster.txt
.venv/bin/python -m pytest -q tests "$@"
