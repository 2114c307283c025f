#!/usr/bin/env bash
# Run the whole test suite on CPU (creates/updates .venv first). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
