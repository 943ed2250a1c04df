#!/usr/bin/env bash
# One check for a GPU machine without network access: GPU kernel tests against the CPU references, then
# the throughput benchmarks on cuda. Run from anywhere; results go to $OUT (default ./gpu-check-out).
#
# - Wheels carried in the tree under .whl/ are installed (to a temporary --target) only for distributions
#   the machine lacks.
# - The package is not pip-installed: a temporary folder mirrors its layout with symlinks
#   (activessf_engine/* -> engine/*, activessf_engine/kernels -> kernels/) and goes first on PYTHONPATH.
# - Every step runs even if an earlier one failed; the summary says which failed, and so does the exit code.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
OUT_DIR="${OUT:-./gpu-check-out}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- wheels for what is missing -------------------------------------------------------------------
site="$work/site"
mkdir -p "$site"
installed=()
if [ -d "$repo/.whl" ]; then
    missing=()
    for wheel in "$repo"/.whl/*.whl; do
        [ -e "$wheel" ] || continue
        dist="$(basename "$wheel" | cut -d- -f1)"
        if ! "$python" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null; then
            missing+=("$wheel")
            installed+=("$dist")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        "$python" -m pip install --quiet --no-index --no-deps --target "$site" "${missing[@]}"
    fi
fi

# --- the package, mapped without installing ----------------------------------------------------------
mkdir -p "$work/pkg/activessf_engine"
for entry in "$repo"/engine/*; do
    ln -s "$entry" "$work/pkg/activessf_engine/"
done
ln -s "$repo/kernels" "$work/pkg/activessf_engine/kernels"
export PYTHONPATH="$work/pkg:$site${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c 'import activessf_engine.device, activessf_engine.kernels'

cd "$repo"
failed=()

# --- which device, and why ---------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L | tee "$OUT_DIR/nvidia-smi.txt" || true
fi
"$python" -c 'import json, sys; from activessf_engine.device import resolve_device
json.dump(resolve_device("auto").describe(), sys.stdout, indent=1)' | tee "$OUT_DIR/device.json"
echo

# --- GPU kernels against the CPU references ---------------------------------------------------------------
if "$python" -m pytest -p no:cacheprovider -m gpu -q tests/test_gpu_kernels.py tests/test_gpu_stages.py \
    --junitxml "$OUT_DIR/pytest-gpu.xml" 2>&1 | tee "$OUT_DIR/pytest-gpu.txt"; then
    if grep -qE '[0-9]+ passed' "$OUT_DIR/pytest-gpu.txt"; then
        tests="ok"
    else
        tests="NOT RUN (every test skipped: no usable GPU + CuPy)"
        failed+=("gpu tests (skipped)")
    fi
else
    tests="FAILED"
    failed+=("gpu tests")
fi

# --- throughput benchmarks (written by the lead; each reports its own decoder) ----------------------------
benchmarks=()
for bench in filter feature; do
    script="benchmarks/${bench}_throughput.py"
    if [ ! -f "$script" ]; then
        benchmarks+=("$bench: absent, skipped")
        continue
    fi
    if "$python" "$script" --device cuda --json "$OUT_DIR/${bench}_gpu.json" 2>&1 | tee "$OUT_DIR/${bench}_gpu.txt"; then
        benchmarks+=("$bench: ok -> $OUT_DIR/${bench}_gpu.json")
    else
        benchmarks+=("$bench: FAILED (see $OUT_DIR/${bench}_gpu.txt)")
        failed+=("$bench benchmark")
    fi
done

# --- summary -----------------------------------------------------------------------------------------------
echo
echo "=== gpu_check summary ==="
echo "device:     $("$python" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["kind"], "-", d["reason"])' "$OUT_DIR/device.json")"
echo "wheels:     ${installed[*]:-none installed}"
echo "gpu tests:  $tests ($(grep -E '[0-9]+ (passed|failed|skipped|error)' "$OUT_DIR/pytest-gpu.txt" | tail -n 1))"
for line in "${benchmarks[@]}"; do
    echo "benchmark:  $line"
done
echo "outputs:    $OUT_DIR"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
