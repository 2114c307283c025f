#!/usr/bin/env bash
# Create or update the project environment in .venv/ (idempotent).
#
# A second run with unchanged requirements does nothing; a changed requirements.txt,
# constraints.txt or this script updates the environment. Everything installed is pinned.
#   PYTHON=python3.11 scripts/setup_env.sh     # choose the interpreter for a new .venv
#   RASS_MSDA_FORCE_CUDA=1 scripts/setup_env.sh  # GPU box: build the CUDA deformable-attention kernel
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
MSDA_VERSION="0.1.1"
D2_VERSION="0.7.2"

stamp_of() {  # the inputs that define the environment
  cat requirements.txt constraints.txt scripts/setup_env.sh pyproject.toml | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.rass-env-stamp"
want=$(stamp_of)
if [ -x "$PY" ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$want" ] \
   && [ "${RASS_MSDA_FORCE_CUDA:-0}" != "1" ]; then
  exit 0
fi

if [ ! -x "$PY" ]; then
  echo "[setup_env] creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

echo "[setup_env] installing pinned requirements (first run: a few minutes)"
pip_install -r requirements.txt -c constraints.txt

# Deformable attention kernel (CPU, plus CUDA when a GPU and nvcc are visible, or forced with
# RASS_MSDA_FORCE_CUDA=1). Built here against the installed torch, never taken from pip's cache.
# RASS falls back to pure PyTorch if it cannot be built, so a failure is only a warning.
msda_ok='import torch_ms_deform_attn._C'
if [ "${RASS_MSDA_FORCE_CUDA:-0}" = "1" ]; then
  msda_ok='from torch_ms_deform_attn import _C; assert _C.with_cuda'
fi
if ! "$PY" -c "$msda_ok" 2>/dev/null; then
  echo "[setup_env] building torch-ms-deform-attn==$MSDA_VERSION (one to several minutes)"
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # cuBLAS/cuSPARSE headers of the CUDA toolkit ship inside the torch wheels' nvidia packages
  export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
  if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
  if [ -n "${CUDA_HOME:-}" ]; then export LIBRARY_PATH="$CUDA_HOME/lib64:$CUDA_HOME/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"; fi
  if [ "${RASS_MSDA_FORCE_CUDA:-0}" = "1" ]; then export FORCE_CUDA=1; fi
  pip_install --no-build-isolation --no-cache-dir --force-reinstall --no-deps "torch-ms-deform-attn==$MSDA_VERSION" \
    || echo "[setup_env] WARNING: torch-ms-deform-attn did not build; the pure-PyTorch path will be used"
fi

# detectron2: keep an importable one (e.g. an upstream source build with compiled ops);
# otherwise install the Python code of the registry distribution sal-detectron2 (its only wheel
# is tagged cp310, its compiled _C is not needed for semantic segmentation).
if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[setup_env] keeping installed detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
else
  echo "[setup_env] installing detectron2 (sal-detectron2==$D2_VERSION)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip_install --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    --target "$tmp" "sal-detectron2==$D2_VERSION"
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # only the detectron2 package and its metadata (the wheel also ships a top-level `tools`)
  cp -r "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$site/"
fi

# pysodmetrics (the SOD / DIS metrics of MGD-SAM2's evaluation) pins numpy<2.3.5 and opencv<5, which exclude
# the numpy 2.4 / opencv 5 above; its code runs with them (tests/test_sod_metrics.py), so it is installed
# without its pins; its other dependencies (scikit-image, scikit-learn) are in requirements.txt.
if ! "$PY" -c "import py_sod_metrics" 2>/dev/null; then
  pip_install --no-deps "pysodmetrics==1.6.2"
fi

echo "[setup_env] installing the rass package (editable)"
pip_install --no-deps --no-build-isolation -e .

"$PY" -c "import detectron2, torch, diffusers, transformers, peft, rass" \
  || { echo "[setup_env] ERROR: the environment does not import" >&2; exit 1; }
echo "$want" > "$STAMP_FILE"
echo "[setup_env] environment ready: $VENV"
