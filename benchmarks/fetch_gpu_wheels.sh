#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh installs on an
# offline GPU machine whose Python (3.12) has torch, timm, numba and cupy but not kornia or zarr.
# They go to .whl/ (git-ignored). DALI is too large to carry: gpu_check then decodes with torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    kornia kornia-rs zarr numcodecs donfig google-crc32c
du -sh .whl
