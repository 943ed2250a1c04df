"""The one place that decides whether a run computes on the CPU or on a CUDA GPU.

Capability checks return ``(ok, reason)``. ``resolve_device("auto")`` takes CUDA only when torch sees a
GPU and the CuPy kernels can run on it, and logs why when it falls back to the CPU; an explicit
``"cuda"`` that cannot run raises RuntimeError with the reason and the fix. Nothing here touches CUDA
at import: the checks run when called (and CUDA is then initialised in the calling process, so call
them in the process that computes, or start workers with ``spawn``, never ``fork`` after them).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

KINDS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    """Where a run computes, why, and which optional GPU libraries it may use."""

    kind: str  # "cpu" or "cuda"
    torch_device: torch.device  # where tensors of the run live
    reason: str  # why this kind was chosen, in words for a run summary
    requested: str = "auto"  # what the caller asked for
    cupy: bool = False  # CuPy kernels usable (always True on "cuda": the GPU path needs them)
    dali_gpu: bool = False  # DALI's GPU decoder usable
    cuml: bool = False  # cuML usable
    notes: tuple[str, ...] = ()  # why each optional library is or is not used

    def describe(self) -> dict[str, object]:
        """JSON-serialisable summary for run records: which path, and why."""
        return {
            "requested": self.requested,
            "kind": self.kind,
            "torch_device": str(self.torch_device),
            "reason": self.reason,
            "cupy": self.cupy,
            "dali_gpu": self.dali_gpu,
            "cuml": self.cuml,
            "notes": list(self.notes),
        }


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def cuda_available() -> tuple[bool, str]:
    """Whether torch sees a CUDA GPU."""
    if not torch.backends.cuda.is_built():
        return False, f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA GPU (no device, no driver, or CUDA_VISIBLE_DEVICES hides them)"
    return True, f"torch sees {torch.cuda.device_count()} CUDA GPU(s)"


@functools.cache
def _cupy_runs(index: int) -> tuple[bool, str]:
    try:
        import cupy
    except ImportError as exc:
        return False, f"cupy is not installed ({_error_text(exc)}); install the cuda13 or cuda12 extra"
    try:
        with cupy.cuda.Device(index):
            value = int((cupy.arange(4, dtype=cupy.int32) * 2).sum())  # compiles and runs two kernels
    except Exception as exc:  # any failure (driver, NVRTC, out of memory) means the GPU path cannot run
        return False, f"cupy {cupy.__version__} cannot run a kernel on GPU {index}: {_error_text(exc)}"
    if value != 12:
        return False, f"cupy {cupy.__version__} computed a wrong test result on GPU {index}"
    return True, f"cupy {cupy.__version__} runs kernels on GPU {index}"


def cupy_usable(index: int = 0) -> tuple[bool, str]:
    """Whether CuPy imports and can compile and run a trivial kernel on GPU `index` (cached per process)."""
    ok, reason = cuda_available()
    if not ok:
        return False, reason
    return _cupy_runs(index)


def cuml_usable() -> tuple[bool, str]:
    """Whether cuML imports on a machine where torch sees a GPU."""
    ok, reason = cuda_available()
    if not ok:
        return False, reason
    try:
        import cuml
    except Exception as exc:  # cuML raises more than ImportError when its CUDA libraries do not load
        return False, f"cuml is not usable: {_error_text(exc)}"
    return True, f"cuml {cuml.__version__} imports"


def dali_gpu_usable() -> tuple[bool, str]:
    """Whether DALI imports and sees a CUDA device for its GPU decoder."""
    try:
        from nvidia.dali import backend
    except Exception as exc:
        return False, f"DALI is not usable: {_error_text(exc)}"
    devices = backend.GetCUDADeviceCount()
    if devices < 1:
        return False, "DALI sees no CUDA device"
    return True, f"DALI sees {devices} CUDA device(s)"


def _parse_request(requested: str) -> tuple[str, int | None]:
    kind, _, index = requested.strip().lower().partition(":")
    if kind not in KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {requested!r}; valid: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return kind, int(index) if index else None


def resolve_device(requested: str = "auto") -> DeviceChoice:
    """Decide where to compute: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    ``auto`` takes CUDA when torch sees a GPU and CuPy runs kernels on it, otherwise the CPU, logging the
    reason (a warning when a GPU is there but unusable, info when there is none). ``cuda`` that cannot
    run raises RuntimeError with the reason.
    """
    kind, index = _parse_request(requested)
    if kind == "cpu":
        return DeviceChoice("cpu", torch.device("cpu"), "cpu requested", requested=requested)
    gpu_ok, gpu_reason = cuda_available()
    if gpu_ok and index is not None and index >= torch.cuda.device_count():
        gpu_ok, gpu_reason = False, f"GPU {index} requested but torch sees {torch.cuda.device_count()}"
    if gpu_ok:
        index = torch.cuda.current_device() if index is None else index
        cupy_ok, cupy_reason = cupy_usable(index)
    else:
        cupy_ok, cupy_reason = False, gpu_reason
    if not cupy_ok:
        if kind == "cuda":
            fix = (
                "install a CuPy build for the CUDA driver (extra cuda13 or cuda12), or use cpu / auto"
                if gpu_ok
                else "run on a machine with a CUDA GPU, or use cpu / auto"
            )
            raise RuntimeError(f"device {requested!r} cannot run: {cupy_reason}. Fix: {fix}.")
        reason = f"fell back to cpu: {cupy_reason}"
        logger.log(logging.WARNING if gpu_ok else logging.INFO, "device auto: %s", reason)
        return DeviceChoice("cpu", torch.device("cpu"), reason, requested=requested)
    dali_ok, dali_reason = dali_gpu_usable()
    cuml_ok, cuml_reason = cuml_usable()
    return DeviceChoice(
        "cuda",
        torch.device("cuda", index),
        f"{gpu_reason}; {cupy_reason}",
        requested=requested,
        cupy=True,
        dali_gpu=dali_ok,
        cuml=cuml_ok,
        notes=(f"dali: {dali_reason}", f"cuml: {cuml_reason}"),
    )
