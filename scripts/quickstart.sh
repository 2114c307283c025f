#!/usr/bin/env bash
# CPU quickstart: generate synthetic ADE20K-format data (if absent), train the tiny configuration,
# evaluate it and write results, overlays and the checkpoint under output/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python tools/quickstart.py "$@"
