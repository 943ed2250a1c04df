"""The one place that decides where a run computes, and every backend that follows from it.

Capability checks return ``(ok, reason)``. ``resolve_device("auto")`` takes CUDA only when torch sees a
GPU and the CuPy kernels can run on it, and logs why when it falls back to the CPU; an explicit
``"cuda"`` that cannot run raises `DeviceUnavailableError` with the reason and the fix. The resulting
`DeviceChoice` also fixes the decoder, the kernels, the K-means backend of the prototypes and the
feature dtype; the runs take it as it is (`as_choice`) and never decide again. Nothing here touches CUDA
at import: the checks run when called (and CUDA is then initialised in the calling process, so call
them in the process that computes, or start workers with ``spawn``, never ``fork`` after them).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from activessf_engine.config import EngineConfig

if TYPE_CHECKING:  # torch is imported where a device is resolved, not by `import activessf_engine.device`
    import torch

logger = logging.getLogger(__name__)

KINDS = ("auto", "cpu", "cuda")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity: a batch scheduler's or a container's share), not
    the machine's count; what every "0 = one per core" setting means."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class DeviceUnavailableError(RuntimeError):
    """An explicitly requested device cannot run; the message gives the cause and the fix."""


@dataclass(frozen=True)
class DeviceChoice:
    """Where a run computes, why, and the backend of every stage, decided once."""

    kind: str  # "cpu" or "cuda"
    torch_device: torch.device  # where tensors of the run live
    reason: str  # why this kind was chosen, in words for a run summary
    requested: str = "auto"  # what the caller asked for
    decoder: str = "dali"  # decoding library: "dali", or "torchvision" where DALI is not installed
    kernels: str = "numba"  # Cell Region Filtering kernels: "numba" (CPU) or "cupy" (CUDA)
    kmeans_backend: str = "sklearn"  # K-means of the prototypes when its config says "auto": "sklearn" or "cuml"
    feature_dtype: str = "float32"  # backbone compute dtype when the feature config says "auto"
    notes: tuple[str, ...] = ()  # why each optional library is or is not used

    @property
    def decoder_name(self) -> str:
        """The decoder as decoded images record it: "dali-gpu", "torchvision-cpu", ..."""
        return f"{self.decoder}-{'gpu' if self.kind == 'cuda' else 'cpu'}"

    def describe(self) -> dict[str, object]:
        """JSON-serialisable summary for run records: which path, and why."""
        return {
            "requested": self.requested,
            "kind": self.kind,
            "torch_device": str(self.torch_device),
            "reason": self.reason,
            "decoder": self.decoder_name,
            "kernels": self.kernels,
            "kmeans_backend": self.kmeans_backend,
            "feature_dtype": self.feature_dtype,
            "notes": list(self.notes),
        }


def summary_line(described: dict[str, object]) -> str:
    """One line of a run's printed summary from a `DeviceChoice.describe()`."""
    return (
        f"{described['kind']} ({described['torch_device']}): decoder {described['decoder']}, "
        f"kernels {described['kernels']}, features {described['feature_dtype']}, "
        f"prototype K-means {described['kmeans_backend']}"
    )


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def cuda_available() -> tuple[bool, str]:
    """Whether torch sees a CUDA GPU."""
    import torch

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


def dali_installed() -> tuple[bool, str]:
    """Whether DALI imports (its CPU decoder needs nothing more)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:
        return False, f"DALI is not installed ({_error_text(exc)}); decoding with torchvision"
    return True, "DALI imports"


def _parse_request(requested: str) -> tuple[str, int | None]:
    kind, _, index = requested.strip().lower().partition(":")
    if kind not in KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {requested!r}; valid: 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return kind, int(index) if index else None


def resolve_device(requested: str = "auto") -> DeviceChoice:
    """Decide where to compute: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, and with it every backend.

    ``auto`` takes CUDA when torch sees a GPU and CuPy runs kernels on it, otherwise the CPU, logging the
    reason (a warning when a GPU is there but unusable, info when there is none). ``cuda`` that cannot
    run raises DeviceUnavailableError with the reason and the fix.
    """
    import torch

    kind, index = _parse_request(requested)
    dali_ok, dali_reason = dali_installed()
    if kind == "cpu":
        return _cpu_choice("cpu requested", requested, dali_ok, dali_reason)
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
            raise DeviceUnavailableError(f"device {requested!r} cannot run: {cupy_reason}. Fix: {fix}.")
        reason = f"fell back to cpu: {cupy_reason}"
        logger.log(logging.WARNING if gpu_ok else logging.INFO, "device auto: %s", reason)
        return _cpu_choice(reason, requested, dali_ok, dali_reason)
    if dali_ok:
        dali_ok, dali_reason = dali_gpu_usable()
    cuml_ok, cuml_reason = cuml_usable()
    return DeviceChoice(
        "cuda",
        torch.device("cuda", index),
        f"{gpu_reason}; {cupy_reason}",
        requested=requested,
        decoder="dali" if dali_ok else "torchvision",
        kernels="cupy",
        kmeans_backend="cuml" if cuml_ok else "sklearn",
        feature_dtype="bfloat16",
        notes=(f"dali: {dali_reason}", f"cuml: {cuml_reason}"),
    )


def _cpu_choice(reason: str, requested: str, dali_ok: bool, dali_reason: str) -> DeviceChoice:
    import torch

    return DeviceChoice(
        "cpu",
        torch.device("cpu"),
        reason,
        requested=requested,
        decoder="dali" if dali_ok else "torchvision",
        notes=(f"dali: {dali_reason}",),
    )


def as_choice(device: DeviceChoice | str | torch.device) -> DeviceChoice:
    """A choice made earlier is used as it is; a name or torch device is resolved (`resolve_device`)."""
    if isinstance(device, DeviceChoice):
        return device
    return resolve_device(str(device))


def host_work(config: EngineConfig, choice: DeviceChoice) -> list[str]:
    """What a run under `config` still does on the host when `choice` is a GPU (nothing to say on the CPU)."""
    if choice.kind != "cuda":
        return []
    work = [
        "pixel K-means merge 20 -> 10 and the HSV verdict of each merged colour: numpy, a few dozen numbers a tile",
        "store writes: lz4 (or zstd) compression and file I/O",
    ]
    if config.filter.fill_holes:
        work.append("fill_holes: scipy binary_fill_holes per kept region, on one host copy of each batch's labels")
    if config.prototypes.backend != "cuml" and choice.kmeans_backend == "sklearn":
        work.append("prototype K-means: scikit-learn (cuML is not usable here; see notes)")
    return work
