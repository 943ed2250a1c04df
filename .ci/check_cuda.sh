#!/usr/bin/env bash
# Compile every kernels/cuda/*.cu with `nvcc -ptx`, after the same generated #define preamble that
# CuPy's loader prepends (kernels/cupy_source.py). Warnings are errors. Without nvcc: skip, exit 0.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"

if ! command -v nvcc >/dev/null 2>&1; then
    echo "check_cuda: SKIP: nvcc is not on PATH, CUDA sources not compiled"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

status=0
for source in "$repo"/kernels/cuda/*.cu; do
    name="$(basename "$source" .cu)"
    # the preamble comes from the installed package, so this checks what CuPy would compile
    "$python" -c 'import sys; from activessf_engine.kernels import cupy_source; sys.stdout.write(cupy_source.source_text(sys.argv[1]))' \
        "$name" >"$work/$name.cu"
    if nvcc -ptx -Werror all-warnings "$work/$name.cu" -o "$work/$name.ptx"; then
        echo "check_cuda: compiled kernels/cuda/$name.cu ($(grep -c '^.visible .entry' "$work/$name.ptx") kernels)"
    else
        echo "check_cuda: FAILED kernels/cuda/$name.cu" >&2
        status=1
    fi
done
exit "$status"
