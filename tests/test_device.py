"""Device choice on any machine: the GPU's absence or brokenness is simulated where it matters."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging

import pytest
import torch

from activessf_engine import device


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_available", lambda: (False, "torch sees no CUDA GPU (simulated)"))


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch sees one GPU (simulated); what runs on it is up to the fixtures below."""
    monkeypatch.setattr(device, "cuda_available", lambda: (True, "torch sees 1 CUDA GPU(s) (simulated)"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture
def broken_cupy(one_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cupy_usable", lambda index=0: (False, "cupy cannot run a kernel (simulated)"))


def test_checks_agree_with_what_is_installed() -> None:
    """Each capability check against an independent look at the machine (not the check's own condition)."""
    assert device.cuda_available()[0] == torch.cuda.is_available()
    dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    assert device.dali_installed()[0] == dali
    if importlib.util.find_spec("cuml") is None:
        ok, reason = device.cuml_usable()
        assert not ok and ("cuml" in reason or "GPU" in reason)
    if not torch.cuda.is_available():
        ok, reason = device.cupy_usable()
        assert not ok and ("no CUDA GPU" in reason or "no CUDA support" in reason)


def test_auto_on_a_machine_without_a_gpu_is_the_cpu_and_says_so() -> None:
    choice = device.resolve_device("auto")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the simulated cases below cover the choice")
    assert (choice.kind, choice.torch_device, choice.kernels) == ("cpu", torch.device("cpu"), "numba")
    assert choice.reason.startswith("fell back to cpu:")


def test_auto_without_gpu_falls_back_to_cpu_and_logs_why(no_gpu: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=device.logger.name):
        choice = device.resolve_device("auto")
    assert choice.kind == "cpu"
    assert choice.torch_device == torch.device("cpu")
    assert "no CUDA GPU" in choice.reason
    assert (choice.kernels, choice.feature_dtype, choice.kmeans_backend) == ("numba", "float32", "sklearn")
    assert choice.decoder_name == "dali-cpu"  # DALI is a core dependency: its CPU pipeline decodes
    assert any("no CUDA GPU" in record.getMessage() for record in caplog.records)


def test_auto_with_unusable_cupy_warns(broken_cupy: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=device.logger.name):
        choice = device.resolve_device("auto")
    assert choice.kind == "cpu"
    assert "cupy cannot run a kernel" in choice.reason
    assert [record.levelno for record in caplog.records] == [logging.WARNING]


@pytest.mark.parametrize("requested", ["cuda", "cuda:0", "CUDA"])
def test_explicit_cuda_that_cannot_run_raises_with_the_reason(no_gpu: None, requested: str) -> None:
    message = r"cannot run: torch sees no CUDA GPU \(simulated\)\. Fix: .*use cpu / auto"
    with pytest.raises(RuntimeError, match=message):
        device.resolve_device(requested)


def test_explicit_cuda_with_unusable_cupy_raises(broken_cupy: None) -> None:
    with pytest.raises(device.DeviceUnavailableError, match=r"cupy cannot run a kernel.*install a CuPy build"):
        device.resolve_device("cuda")


@pytest.fixture
def working_gpu(one_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU on which CuPy runs; DALI's GPU decoder and cuML are not usable (the lent GPU machines' case)."""
    monkeypatch.setattr(device, "cupy_usable", lambda index=0: (True, "cupy runs kernels (simulated)"))
    monkeypatch.setattr(device, "dali_installed", lambda: (False, "DALI is not installed (simulated)"))
    monkeypatch.setattr(device, "cuml_usable", lambda: (False, "cuml is not installed (simulated)"))


def test_a_gpu_choice_fixes_every_backend(working_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    choice = device.resolve_device("cuda")
    assert choice.torch_device == torch.device("cuda", 0)
    assert (choice.decoder_name, choice.kernels, choice.feature_dtype, choice.kmeans_backend) == (
        "torchvision-gpu",
        "cupy",
        "bfloat16",
        "sklearn",
    )
    assert "cuml: cuml is not installed (simulated)" in choice.notes
    monkeypatch.setattr(device, "cuml_usable", lambda: (True, "cuml imports (simulated)"))
    assert device.resolve_device("auto").kmeans_backend == "cuml"


def test_host_work_names_what_a_gpu_run_leaves_on_the_cpu(working_gpu: None) -> None:
    from activessf_engine.config import EngineConfig, replace_section

    gpu = device.resolve_device("cuda")
    plain = device.host_work(EngineConfig(), gpu)
    assert any("scikit-learn" in line for line in plain) and not any("fill_holes" in line for line in plain)
    holes = device.host_work(replace_section(EngineConfig(), "filter", fill_holes=True), gpu)
    assert any("fill_holes" in line for line in holes)
    assert device.host_work(EngineConfig(), device.resolve_device("cpu")) == []


def test_a_choice_is_passed_down_as_it_is(working_gpu: None) -> None:
    from activessf_engine.select.prototypes import resolve_kmeans_backend

    gpu = device.resolve_device("cuda")
    assert device.as_choice(gpu) is gpu
    assert device.as_choice("cpu").kind == "cpu"
    assert resolve_kmeans_backend("auto", gpu) == "sklearn"
    assert resolve_kmeans_backend("auto", dataclasses.replace(gpu, kmeans_backend="cuml")) == "cuml"


def test_missing_gpu_index_raises(broken_cupy: None) -> None:
    with pytest.raises(RuntimeError, match="GPU 3 requested but torch sees 1"):
        device.resolve_device("cuda:3")


def test_cpu_is_always_granted() -> None:
    choice = device.resolve_device("cpu")
    assert (choice.kind, choice.torch_device, choice.requested) == ("cpu", torch.device("cpu"), "cpu")


@pytest.mark.parametrize("requested", ["gpu", "cuda:x", "cpu:0", ""])
def test_unknown_device_lists_the_valid_ones(requested: str) -> None:
    with pytest.raises(ValueError, match="valid: 'auto', 'cpu', 'cuda'"):
        device.resolve_device(requested)


@pytest.mark.parametrize("requested", ["auto", "cpu"])
def test_describe_is_json_serialisable(requested: str) -> None:
    summary = device.resolve_device(requested).describe()
    assert json.loads(json.dumps(summary)) == summary
    assert {"kind", "torch_device", "reason", "requested", "decoder", "kernels", "kmeans_backend"} <= summary.keys()


def test_choice_is_frozen() -> None:
    choice = device.resolve_device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        choice.kind = "cuda"  # type: ignore[misc]
