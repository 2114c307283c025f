#!/usr/bin/env bash
# Fetch, pinned, the Python packages that the GPU check machine lacks into .gpu_wheels/ (ignored).
#
#   scripts/gpu_wheels.sh            # download (here, with network) into .gpu_wheels/, then --check it
#   scripts/gpu_wheels.sh --check    # only check an existing .gpu_wheels/ (manifest, pins, install test)
#   scripts/gpu_wheels.sh --verify   # only the manifest: files, sizes, sha256, pins (fast; gpu_check.sh)
#   RASS_GPU_WHEELS=DIR scripts/gpu_wheels.sh   # another folder
#
# The GPU machine (see scripts/gpu_check.sh) runs Python 3.12 on manylinux x86_64 with torch,
# transformers, peft, timm, safetensors, opencv, pytest, tabulate, matplotlib, portalocker, cloudpickle,
# pyyaml, tensorboard, ... preinstalled and no network. What `import rass`, train_net.py and the tests
# need beyond that travels in the folder, pinned to constraints.txt (scripts/setup_env.sh for
# detectron2 and the kernel):
#   wheels      diffusers omegaconf hydra-core pycocotools termcolor yacs   (cp312 / pure Python)
#   built here  fvcore iopath antlr4-python3-runtime   (PyPI has only sdists; pure Python -> py3-none-any)
#   detectron2  sal-detectron2 (its only wheel is tagged cp310: only its detectron2/ package is installed)
#   kernel      torch-ms-deform-attn sdist (built on the GPU machine with nvcc)
#   fallback    setuptools (used there only when the machine's setuptools is too old for the kernel build)
# MANIFEST.tsv in the folder lists kind, name, version, file, bytes and sha256 of each file.
# The whole set must stay under 60 MiB (the device tool carries 64 MiB in all); the script fails if not.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${RASS_GPU_WHEELS:-.gpu_wheels}
LIMIT_MIB=60
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

die() { echo "[gpu_wheels] ERROR: $*" >&2; exit 1; }
CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT

pin() {  # version of a package in constraints.txt (the project's single source of pins)
  local v
  v=$(grep -i -E "^$1==" constraints.txt | head -1 | cut -d= -f3) || true
  [ -n "$v" ] || die "constraints.txt has no pin for $1"
  echo "$v"
}
script_pin() {  # NAME_VERSION="x" in scripts/setup_env.sh
  local v
  v=$(sed -n -E "s/^$1=\"([^\"]+)\".*/\1/p" scripts/setup_env.sh | head -1)
  [ -n "$v" ] || die "scripts/setup_env.sh defines no $1"
  echo "$v"
}

BINARY="diffusers omegaconf hydra-core pycocotools termcolor yacs"
SDIST_PURE="fvcore iopath antlr4-python3-runtime"
D2_VERSION=$(script_pin D2_VERSION)
MSDA_VERSION=$(script_pin MSDA_VERSION)
TARGET_TAGS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
             --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

# ------------------------------------------------------------------ verify / check
# verify: the manifest matches the files (names, sizes, sha256) and the pins; the total is < LIMIT_MIB.
verify() {
  local dir=$1 total=0 errors=0
  [ -d "$dir" ] || die "$dir does not exist: run scripts/gpu_wheels.sh (here, with network)"
  [ -f "$dir/MANIFEST.tsv" ] || die "$dir/MANIFEST.tsv missing: run scripts/gpu_wheels.sh"
  while IFS=$'\t' read -r kind name version file bytes sha; do
    [ "$kind" = kind ] && continue
    [ -f "$dir/$file" ] || { echo "[gpu_wheels] missing $dir/$file ($name $version)" >&2; errors=1; continue; }
    [ "$(stat -c %s "$dir/$file")" = "$bytes" ] || { echo "[gpu_wheels] size of $file differs from MANIFEST.tsv" >&2; errors=1; }
    [ "$(sha256sum "$dir/$file" | cut -d' ' -f1)" = "$sha" ] || { echo "[gpu_wheels] sha256 of $file differs from MANIFEST.tsv" >&2; errors=1; }
    total=$((total + bytes))
  done < "$dir/MANIFEST.tsv"
  for name in $BINARY $SDIST_PURE; do
    grep -q -P "^\\w+\t$name\t$(pin "$name")\t" "$dir/MANIFEST.tsv" \
      || { echo "[gpu_wheels] $name==$(pin "$name") (constraints.txt) is not in MANIFEST.tsv" >&2; errors=1; }
  done
  grep -q -P "\tsal-detectron2\t$D2_VERSION\t" "$dir/MANIFEST.tsv" || { echo "[gpu_wheels] sal-detectron2==$D2_VERSION missing" >&2; errors=1; }
  grep -q -P "\ttorch-ms-deform-attn\t$MSDA_VERSION\t" "$dir/MANIFEST.tsv" || { echo "[gpu_wheels] torch-ms-deform-attn==$MSDA_VERSION missing" >&2; errors=1; }
  [ $((total)) -lt $((LIMIT_MIB * 1024 * 1024)) ] || { echo "[gpu_wheels] $total bytes: over the ${LIMIT_MIB} MiB limit" >&2; errors=1; }
  [ $errors = 0 ] || die "$dir does not match its manifest / the pins"
  echo "[gpu_wheels] verify OK: $dir holds the $(($(wc -l < "$dir/MANIFEST.tsv") - 1)) files of MANIFEST.tsv, pinned, $((total / 1024)) KiB (limit ${LIMIT_MIB} MiB)"
}

# check: verify, then the wheels install with `pip install --no-index --no-deps --target EMPTY` for
# CPython 3.12 manylinux x86_64 (with a real Python 3.12 when one is found, else pip's --python-version
# 3.12 tag matching); detectron2's cp310 wheel installs (tag 3.10) and has the detectron2/ package; every
# expected top-level package lands in the target; the setuptools fallback installs; the modules that need
# nothing outside the standard library (termcolor, antlr4) import under that Python 3.12. Not verified
# here: importing the others (they need torch/numpy/yaml, which the GPU machine has) and the kernel
# build (scripts/gpu_check.sh does it there, with nvcc).
check() {
  local dir=$1 tmp py312
  verify "$dir"
  tmp=$(mktemp -d)
  CLEANUP+=("$tmp")
  py312=""
  local candidates=("${PYTHON312:-}" python3.12 /opt/torch/.venv/bin/python3)
  if command -v pyenv >/dev/null 2>&1; then candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12); fi
  for c in "${candidates[@]}"; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
       && "$c" -m pip --version >/dev/null 2>&1; then py312=$c; break; fi
  done
  mapfile -t wheels < <(awk -F'\t' '$1 == "wheel" || $1 == "built" {print $4}' "$dir/MANIFEST.tsv")
  local paths=() w
  for w in "${wheels[@]}"; do paths+=("$dir/$w"); done
  mkdir -p "$tmp/site"
  if [ -n "$py312" ]; then
    echo "[gpu_wheels] check: installing ${#paths[@]} wheels with $py312 ($("$py312" -c 'import sys; print(sys.version.split()[0])')) into an empty --target"
    "$py312" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$tmp/site" "${paths[@]}"
  else
    echo "[gpu_wheels] check: no Python 3.12 here; pip tag matching for CPython 3.12 manylinux x86_64 (--python-version 3.12)"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --only-binary=:all: \
      "${TARGET_TAGS[@]}" --target "$tmp/site" "${paths[@]}"
  fi
  local d2 fb
  fb=$(awk -F'\t' '$1 == "fallback" {print $4}' "$dir/MANIFEST.tsv")
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --only-binary=:all: \
    "${TARGET_TAGS[@]}" --target "$tmp/fallback" "$dir/$fb"
  [ -f "$tmp/fallback/setuptools/__init__.py" ] || die "$fb has no setuptools/ package"
  d2=$(awk -F'\t' '$1 == "detectron2" {print $4}' "$dir/MANIFEST.tsv")
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --only-binary=:all: \
    --python-version 3.10 --implementation cp --target "$tmp/d2" "$dir/$d2"
  [ -f "$tmp/d2/detectron2/__init__.py" ] || die "$d2 has no detectron2/ package"
  cp -r "$tmp/d2/detectron2" "$tmp"/d2/sal_detectron2-*.dist-info "$tmp/site/"
  for mod in diffusers omegaconf hydra pycocotools termcolor yacs fvcore iopath antlr4 detectron2; do
    [ -d "$tmp/site/$mod" ] || die "package $mod/ is not in the installed set"
  done
  if [ -n "$py312" ]; then
    PYTHONPATH="$tmp/site" "$py312" -c 'import termcolor, antlr4' || die "termcolor/antlr4 do not import under Python 3.12"
    echo "[gpu_wheels] check: termcolor and antlr4 import under Python 3.12 from the target"
  fi
  echo "[gpu_wheels] check OK: $(( ${#paths[@]} + 1 )) wheels install into an empty target (10 packages present), the setuptools fallback into another; $(awk -F'\t' '$1 == "sdist" {print $4}' "$dir/MANIFEST.tsv") is built on the GPU machine"
}

case "${1:-}" in
  --check) check "$DEST"; exit 0;;
  --verify) verify "$DEST"; exit 0;;
  "") ;;
  *) die "usage: scripts/gpu_wheels.sh [--check | --verify]";;
esac

# ------------------------------------------------------------------ download
tmp=$(mktemp -d "${DEST%/}.tmp.XXXXXX")
CLEANUP+=("$tmp")
pipq() {  # pip, quiet; its output only when it fails
  if ! "$PY" -m pip "$@" --disable-pip-version-check -q > "$tmp/pip.log" 2>&1; then
    grep -v "WARNING: Location" "$tmp/pip.log" >&2 || true
    die "pip $* failed"
  fi
}
mkdir -p "$tmp/files" "$tmp/build"
manifest="$tmp/files/MANIFEST.tsv"
printf 'kind\tname\tversion\tfile\tbytes\tsha256\n' > "$manifest"
add() {  # kind name version file
  local f="$tmp/files/$4"
  [ -f "$f" ] || die "expected $4 for $2==$3 was not fetched"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)" >> "$manifest"
}
one_file() {  # the single file in $tmp/build matching a glob, moved to files/
  local matches=("$tmp"/build/$1)
  [ ${#matches[@]} = 1 ] && [ -f "${matches[0]}" ] || die "expected one file $1, got: ${matches[*]}"
  mv "${matches[0]}" "$tmp/files/"
  basename "${matches[0]}"
}
norm() { echo "$1" | tr '-' '_'; }

for name in $BINARY; do
  v=$(pin "$name")
  pipq download --no-deps --only-binary=:all: "${TARGET_TAGS[@]}" -d "$tmp/build" "$name==$v"
  add wheel "$name" "$v" "$(one_file "$(norm "$name")-$v-*.whl")"
done
for name in $SDIST_PURE; do
  v=$(pin "$name")
  pipq wheel --no-deps --no-binary="$name" -w "$tmp/build" "$name==$v"
  f=$(one_file "$(norm "$name")-$v-*.whl")
  case "$f" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;; *) die "$f is not a pure-Python wheel";; esac
  add built "$name" "$v" "$f"
done
pipq download --no-deps --only-binary=:all: --python-version 3.10 --implementation cp -d "$tmp/build" "sal-detectron2==$D2_VERSION"
add detectron2 sal-detectron2 "$D2_VERSION" "$(one_file "sal_detectron2-$D2_VERSION-*.whl")"
# the sdist itself (pip prepares its metadata with this environment's torch: --no-build-isolation)
pipq download --no-deps --no-binary=:all: --no-build-isolation -d "$tmp/build" "torch-ms-deform-attn==$MSDA_VERSION"
add sdist torch-ms-deform-attn "$MSDA_VERSION" "$(one_file "torch_ms_deform_attn-$MSDA_VERSION.tar.gz")"
v=$(pin setuptools)
pipq download --no-deps --only-binary=:all: "${TARGET_TAGS[@]}" -d "$tmp/build" "setuptools==$v"
add fallback setuptools "$v" "$(one_file "setuptools-$v-*.whl")"

echo "[gpu_wheels] fetched into $DEST/:"
awk -F'\t' 'NR > 1 {printf "  %-10s %-24s %-22s %8.2f MiB  %s\n", $1, $2, $3, $5 / 1048576, $4; t += $5}
            END {printf "  total %.2f MiB (limit '"$LIMIT_MIB"' MiB)\n", t / 1048576}' "$manifest"
total=$(awk -F'\t' 'NR > 1 {t += $5} END {print t}' "$manifest")
[ "$total" -lt $((LIMIT_MIB * 1024 * 1024)) ] || die "the set is $total bytes, over the $LIMIT_MIB MiB limit"
rm -rf "$DEST"
mv "$tmp/files" "$DEST"
check "$DEST"
