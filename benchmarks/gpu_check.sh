#!/usr/bin/env bash
# The GPU check, for an offline GPU machine and a budget of minutes: the `gpu` tests against the CPU
# references, then the throughput benchmarks, each step with its own time limit (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh [STEPS]        # STEPS: comma-separated groups or step names of gpu_check.py
#                                               # (default checks,filter,cpu-filter,selection)
#   BASELINE=path/to/older/tree bash benchmarks/gpu_check.sh filter   # before/after on one machine
#   BUDGET=300 bash benchmarks/gpu_check.sh    # seconds for all steps (default 330): the script ends by itself
#   DOWNSTREAM=x.npz bash benchmarks/gpu_check.sh checks,downstream   # + the SSL table (selection_quality.py)
#
# Results: $OUT (default ./gpu-check-out) gets gpu_check.json (every figure; rewritten after each step)
# and gpu_check.log (all output): two files, whatever fails. Wheels carried under .whl/ (see
# fetch_gpu_wheels.sh) are installed into a temporary folder for the distributions the machine lacks;
# the package is mapped from engine/ and kernels/ without installing it.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
steps="${1:-checks,filter,cpu-filter,selection}"
out="${OUT:-$repo/gpu-check-out}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1
log="$out/gpu_check.log"

{
    echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, python $("$python" -c 'import sys; print(sys.version.split()[0])')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: absent"
} | tee -a "$log"

# --- wheels for what the machine lacks ---------------------------------------------------------------
site="$work/site"
mkdir -p "$site"
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
    missing=()
    for wheel in "$repo"/.whl/*.whl; do
        dist="$(basename "$wheel" | cut -d- -f1)"
        if ! "$python" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null; then
            missing+=("$wheel")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "wheels: installing ${missing[*]##*/}" | tee -a "$log"
        timeout 120 "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${missing[@]}" 2>&1 | tee -a "$log"
    fi
else
    echo "wheels: none under $repo/.whl (run benchmarks/fetch_gpu_wheels.sh where there is network);" \
        "a machine without kornia or zarr will fail to import the package" | tee -a "$log"
fi

# --- the package, mapped without installing -----------------------------------------------------------
map_package() {  # map_package TREE DEST: DEST/activessf_engine -> TREE/engine, with kernels/ inside
    mkdir -p "$2/activessf_engine"
    for entry in "$1"/engine/*; do ln -s "$entry" "$2/activessf_engine/"; done
    ln -s "$1/kernels" "$2/activessf_engine/kernels"
}
map_package "$repo" "$work/pkg"
export PYTHONPATH="$work/pkg:$site${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c 'import activessf_engine.filter.run, activessf_engine.kernels' 2>&1 | tee -a "$log"; then
    echo "gpu_check: the package does not import (see above); nothing else can run" | tee -a "$log"
    exit 1
fi
baseline=()
if [ -n "${BASELINE:-}" ]; then
    map_package "$(cd "$BASELINE" && pwd)" "$work/baseline"
    baseline=(--baseline-path "$work/baseline")
fi

cd "$repo"
"$python" benchmarks/gpu_check.py --out "$out" --steps "$steps" --pythonpath "$PYTHONPATH" --budget "${BUDGET:-330}" \
    --downstream-inputs "${DOWNSTREAM:-}" "${baseline[@]}" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
