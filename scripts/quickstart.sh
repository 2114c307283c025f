#!/usr/bin/env bash
# CPU quickstart: generate synthetic ADE20K-format data (if absent), train the tiny configuration,
# evaluate it and write results, overlays and the checkpoint under output/quickstart/ (of the repository);
# then train a tiny promptable SAM on generated one-object images (output/quickstart/promptable/;
# --skip-promptable leaves it out). `scripts/quickstart.sh --help` lists the options.
# Runs from any folder; relative paths given as arguments (--output, --config-file) are relative to it.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
"$REPO/scripts/setup_env.sh"
exec "$REPO/.venv/bin/python" "$REPO/tools/quickstart.py" "$@"
