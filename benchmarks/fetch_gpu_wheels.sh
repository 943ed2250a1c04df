#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh installs on an offline
# GPU machine whose Python (3.12) has torch, torchvision, timm, numba, scipy, scikit-learn and cupy but not
# kornia, zarr, imagecodecs or OpenSlide. The versions are those the CPU tests ran with. They go to .whl/
# (git-ignored), emptied first. DALI and cuML are too large to carry (the device tool takes 64 MiB): gpu_check then decodes with
# torchvision and fits prototypes with scikit-learn, and its preflight says so.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    kornia==0.9.0 kornia-rs==0.2.0 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
    tifffile==2026.3.3 imagecodecs==2026.3.6 openslide-python==1.4.7 openslide-bin==4.0.1.2
du -sh .whl
