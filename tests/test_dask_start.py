"""A local Dask cluster whose worker dies while starting is started again, then named with the fix; `--quiet`
leaves Dask's logs at errors."""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest

from activessf_engine import distributed

pytest.importorskip("distributed")


class FakeCluster:
    """Stands for LocalCluster: fails the first `failures` starts as a dying nanny does."""

    starts: ClassVar[list[dict]] = []
    failures = 0

    def __init__(self, **options) -> None:
        FakeCluster.starts.append(options)
        if len(FakeCluster.starts) <= FakeCluster.failures:
            raise RuntimeError("Nanny failed to start.")

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeClient:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> type[FakeCluster]:
    FakeCluster.starts = []
    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    return FakeCluster


def test_a_worker_that_dies_while_the_cluster_starts_is_started_again(fakes) -> None:
    fakes.failures = distributed.START_ATTEMPTS - 1
    with distributed.dask_client(None, 2) as client:
        assert isinstance(client.cluster, FakeCluster)
    assert len(fakes.starts) == distributed.START_ATTEMPTS


def test_a_cluster_that_never_starts_is_named_with_the_fix(fakes) -> None:
    fakes.failures = distributed.START_ATTEMPTS
    named = r"did not start in 3 tries .*Nanny failed to start.*fewer --workers"
    with pytest.raises(RuntimeError, match=named), distributed.dask_client(None, 2):
        pass


def test_quiet_leaves_dask_logging_errors_only(fakes) -> None:
    fakes.failures = 0
    logger = logging.getLogger("distributed")
    before = logger.level
    with distributed.dask_client(None, 1, quiet=True):
        assert logger.getEffectiveLevel() == logging.ERROR
    assert fakes.starts[-1]["silence_logs"] == logging.ERROR  # the workers' logs too
    assert logger.level == before
