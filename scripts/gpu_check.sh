#!/usr/bin/env bash
# One prepared GPU check (issue 12): install the carried wheels, build the deformable-attention CUDA
# kernel, run tests/test_gpu.py and a CUDA-relevant part of the suite, then the benchmarks
# (tools/benchmarks/bench_gpu.py), and print one summary table last.
#
#   scripts/gpu_wheels.sh                    # first, here (network): fills .gpu_wheels/
#   scripts/gpu_check.sh OUTDIR              # on the GPU machine, from the repository root (< 8 minutes)
#   scripts/gpu_check.sh OUTDIR --dry-run    # anywhere, no GPU: wheel folder, kernel build command,
#                                            # benchmark imports, versions/APIs; a few seconds
#
# OUTDIR gets gpu_check.log (everything printed), gpu_check.json (steps, test counts, versions, every
# benchmark figure) and parts/ (what the steps wrote). Every step runs under `timeout` within a total
# budget; a failed step is recorded and the next one runs (a failed kernel build leaves the benchmarks
# on the pure-torch path). Exit status: 0 when every step passed (a dry run: when nothing is broken;
# a missing wheel folder is only reported), else 1.
# Environment: PYTHON (default python3: on the GPU machine the one with torch), RASS_GPU_WHEELS
# (.gpu_wheels), RASS_GPU_BUDGET_S (total seconds, 460), RASS_GPU_SUITE ("subset", "all" or a list of
# test files).
set -uo pipefail  # no -e: failures are recorded per step
cd "$(dirname "$0")/.."
REPO=$(pwd)

usage() { echo "usage: scripts/gpu_check.sh OUTDIR [--dry-run]" >&2; exit 2; }
OUT="" DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -*) usage ;;
    *) [ -z "$OUT" ] || usage; OUT=$a ;;
  esac
done
[ -n "$OUT" ] || usage
mkdir -p "$OUT/parts" || { echo "gpu_check: cannot create $OUT/parts" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)

export PY=${PYTHON:-python3} PARTS=$OUT/parts WHEELS=${RASS_GPU_WHEELS:-.gpu_wheels}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1
BUDGET=${RASS_GPU_BUDGET_S:-460}
BENCH_RESERVE=210  # seconds kept for the benchmarks and the summary when the tests run
START=$(date +%s)
STEPS=$PARTS/steps.tsv
FAILED=0

left() { echo $((BUDGET - ($(date +%s) - START))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS"; }

# run_step NAME LIMIT_S COMMAND...: run under timeout, record ok / FAIL / TIMEOUT / skipped with its seconds.
run_step() {
  local name=$1 limit=$2 t0 rc status note=""
  shift 2
  if [ "$limit" -lt 5 ]; then
    echo "=== [$name] skipped: time budget ($(left) s left)"
    record "$name" skipped 0 "time budget"
    FAILED=1
    return 1
  fi
  echo "=== [$name] (at most ${limit} s)"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status=TIMEOUT; note="stopped after ${limit} s" ;;
    *) status=FAIL; note="exit code $rc" ;;
  esac
  [ $rc = 0 ] || FAILED=1
  record "$name" "$status" $(($(date +%s) - t0)) "$note"
  echo "=== [$name] $status in $(($(date +%s) - t0)) s $note"
  return $rc
}

# ------------------------------------------------------------------------------- step bodies
environment() {
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); torch.cuda.is_available() and print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))' || return 1
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  command -v nvcc >/dev/null && nvcc --version | tail -2
  echo "CPU cores: $(nproc)"
}

install_wheels() {  # the manifest's wheels into $SITE; detectron2's package dir from its cp310 wheel
  local wheels=() d2="" tmp kind name version file rest
  while IFS=$'\t' read -r kind name version file rest; do
    case "$kind" in wheel|built) wheels+=("$WHEELS/$file") ;; detectron2) d2="$WHEELS/$file" ;; esac
  done < "$WHEELS/MANIFEST.tsv"
  [ -n "$d2" ] && [ ${#wheels[@]} -gt 0 ] || { echo "no wheels listed in $WHEELS/MANIFEST.tsv"; return 1; }
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}" || return 1
  tmp=$(mktemp -d)
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --only-binary=:all: \
    --python-version 3.10 --implementation cp --target "$tmp" "$d2" || return 1
  cp -r "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$SITE/" || return 1
  rm -rf "$tmp"
  echo "installed into $SITE: $(ls "$SITE" | grep -v -c dist-info) packages"
}

# The kernel build: KERNEL_CMD (an array) and the environment it runs with.
kernel_command() {
  local arch purelib cpath="" sdist
  sdist=$(awk -F'\t' '$1 == "sdist" && $2 == "torch-ms-deform-attn" {print $4}' "$WHEELS/MANIFEST.tsv" 2>/dev/null)
  sdist="$WHEELS/${sdist:-torch_ms_deform_attn-0.1.1.tar.gz}"
  arch=$("$PY" -c 'import torch; print("%d.%d" % (torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)))' 2>/dev/null || echo 9.0)
  purelib=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
  # As scripts/setup_env.sh: the toolkit folder (torch would take nvcc's parent folder, which need not hold
  # lib64/libcudart.so), its libraries for the link, and cuBLAS/cuSPARSE headers (toolkit or torch's wheels).
  local cuda_home=${CUDA_HOME:-}
  if [ -z "$cuda_home" ] && [ -d /usr/local/cuda ]; then cuda_home=/usr/local/cuda; fi
  for d in ${cuda_home:+"$cuda_home/include"} "$purelib/nvidia/cu13/include"; do
    [ -d "$d" ] && cpath="$cpath${cpath:+:}$d"
  done
  KERNEL_CMD=(env FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=$arch" "MAX_JOBS=$(nproc)" "CPATH=$cpath${CPATH:+:$CPATH}")
  if [ -n "$cuda_home" ]; then
    KERNEL_CMD+=("CUDA_HOME=$cuda_home" "LIBRARY_PATH=$cuda_home/lib64:$cuda_home/lib${LIBRARY_PATH:+:$LIBRARY_PATH}")
  fi
  KERNEL_CMD+=(
              "PYTHONPATH=${BUILD_TOOLS:+$BUILD_TOOLS:}${PYTHONPATH:-}"
              "$PY" -m pip install --disable-pip-version-check --no-index --no-deps --no-build-isolation
              --no-cache-dir --target "$MSDA_SITE" "$sdist")
}

build_kernel() {
  # The sdist needs setuptools >= 77 (PEP 639 metadata, setuptools.command.bdist_wheel); the carried one
  # is used only when the machine's is older.
  if ! "$PY" -c 'import sys, setuptools; from setuptools.command.bdist_wheel import bdist_wheel; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
    local fb
    fb=$(awk -F'\t' '$1 == "fallback" && $2 == "setuptools" {print $4}' "$WHEELS/MANIFEST.tsv")
    echo "the machine's setuptools is too old for the kernel build: using the carried $fb"
    BUILD_TOOLS=$(mktemp -d)
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$BUILD_TOOLS" "$WHEELS/$fb" || return 1
  fi
  kernel_command
  echo "+ ${KERNEL_CMD[*]}"
  "${KERNEL_CMD[@]}" || return 1
  PYTHONPATH="$MSDA_SITE:$PYTHONPATH" "$PY" -c 'from torch_ms_deform_attn import _C; assert _C.with_cuda, "built without CUDA"; print("kernel built with CUDA")'
}

suite_files() {
  case "${RASS_GPU_SUITE:-subset}" in
    all) ls tests/test_*.py | grep -v -x tests/test_gpu.py; return ;;
    subset) ;;
    *) printf '%s\n' $RASS_GPU_SUITE; return ;;  # an explicit list of test files
  esac
  # CUDA-relevant and library-version-sensitive tests (torch, diffusers, transformers, peft, the kernel)
  ls tests/test_ms_deform_attn.py tests/test_degradation_*.py tests/test_backbone*.py tests/test_tagging_*.py \
     tests/test_mask_former_*.py tests/test_criterion.py tests/test_matcher.py tests/test_predictor.py \
     tests/test_release_checkpoint.py tests/test_sam*.py tests/test_glesam*.py tests/test_enhancement*.py \
     tests/test_diffusion*.py 2>/dev/null | sort -u
}

pytest_args() {  # LIMIT_S: parallel where pytest-xdist is there; a graceful session timeout where supported
  if "$PY" -c 'import xdist' 2>/dev/null; then
    local n=$(($(nproc) - 4))
    [ $n -ge 1 ] || n=1
    echo "-n $n"
  fi
  if "$PY" -m pytest --help 2>/dev/null | grep -q -- --session-timeout; then
    echo "--session-timeout=$(($1 - 20))"
  fi
}

export -f environment install_wheels kernel_command build_kernel

summary() {
  timeout 60 "$PY" tools/benchmarks/gpu_report.py summary "$OUT" || echo "gpu_check: the summary failed (see above)"
}

# ------------------------------------------------------------------------------------- main
main() {
  echo "gpu_check $( [ $DRY = 1 ] && echo '(dry run) ')at $(date -u +%FT%TZ) in $REPO, OUTDIR $OUT, budget ${BUDGET} s"
  : > "$STEPS"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  run_step "environment" 60 bash -c environment
  if [ $DRY = 1 ]; then
    if [ -d "$WHEELS" ]; then
      run_step "wheel folder $WHEELS" 60 scripts/gpu_wheels.sh --verify
    else
      echo "=== [wheel folder] $WHEELS is absent: run scripts/gpu_wheels.sh here before the GPU run"
      record "wheel folder $WHEELS" absent 0 "run scripts/gpu_wheels.sh before the GPU run"
    fi
    export MSDA_SITE='$MSDA_SITE'
    kernel_command
    echo "=== [kernel build command] (run on the GPU machine)"
    printf '%q ' "${KERNEL_CMD[@]}"; echo
    record "kernel build command" printed 0 "FORCE_CUDA=1 pip install --no-build-isolation --target ... (see the log)"
    run_step "benchmark imports, versions, APIs" 120 "$PY" tools/benchmarks/gpu_report.py env "$PARTS/env.json"
    summary
    return $FAILED
  fi

  export SITE MSDA_SITE BUILD_TOOLS=""
  SITE=$(mktemp -d -t rass_gpu_site.XXXXXX) MSDA_SITE=$(mktemp -d -t rass_gpu_msda.XXXXXX)
  run_step "wheel folder $WHEELS" 60 scripts/gpu_wheels.sh --verify
  if run_step "install wheels" 120 bash -c install_wheels; then
    export PYTHONPATH="$SITE:$PYTHONPATH"
  fi
  run_step "import rass" 120 "$PY" -c 'import detectron2, diffusers, fvcore, rass; print("rass imports; detectron2", detectron2.__version__, "diffusers", diffusers.__version__)'
  run_step "benchmark imports, versions, APIs" 120 "$PY" tools/benchmarks/gpu_report.py env "$PARTS/env.json"
  # The kernel builds (a few CPU cores, nvcc) while the CPU test subset runs; its log joins the main log after.
  (run_step "kernel build" 240 bash -c build_kernel) > "$PARTS/kernel_build.log" 2>&1 &
  local kpid=$! limit
  mapfile -t files < <(suite_files)
  limit=$(min 200 $(($(left) - BENCH_RESERVE - 60)))
  # shellcheck disable=SC2046
  run_step "test suite subset" "$limit" "$PY" -m pytest -q -p no:cacheprovider $(pytest_args "$limit") \
    --junitxml="$PARTS/junit_suite.xml" "${files[@]}"
  echo "=== waiting for the kernel build"
  wait $kpid
  cat "$PARTS/kernel_build.log" && rm -f "$PARTS/kernel_build.log"
  if PYTHONPATH="$MSDA_SITE:$PYTHONPATH" "$PY" -c 'from torch_ms_deform_attn import _C; assert _C.with_cuda' 2>/dev/null; then
    export PYTHONPATH="$MSDA_SITE:$PYTHONPATH"
  else
    FAILED=1
    echo "=== no CUDA kernel: the tests and benchmarks use the pure-torch path"
  fi
  run_step "tests/test_gpu.py" "$(min 150 $(($(left) - BENCH_RESERVE + 30)))" \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py --junitxml="$PARTS/junit_gpu.xml"
  run_step "benchmarks" $(($(left) - 20)) "$PY" tools/benchmarks/bench_gpu.py --device cuda \
    --json "$PARTS/bench_gpu.json" --budget-s $(($(left) - 35))
  summary
  rm -rf "$SITE" "$MSDA_SITE" ${BUILD_TOOLS:+"$BUILD_TOOLS"}
  return $FAILED
}

main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
