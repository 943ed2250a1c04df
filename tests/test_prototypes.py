from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from activessf_engine.config import PrototypeConfig
from activessf_engine.select.prototypes import (
    ARRAYS_FILE,
    META_FILE,
    Prototypes,
    cuml_usable,
    fit_prototypes,
    list_kmeans_backends,
    load_prototypes,
    resolve_kmeans_backend,
)

FINGERPRINT = "ab" * 32
CLASSES = ["erythroid", "mega", "rare"]


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated blobs of 40, 15 and 5 points; labels mostly follow the blobs."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [20.0, 0.0, 0.0, 0.0], [0.0, 20.0, 0.0, 0.0]])
    sizes = [40, 15, 5]
    features = np.concatenate([c + rng.normal(size=(n, 4)) for c, n in zip(centres, sizes, strict=True)])
    labels = np.repeat([0, 1, 2], sizes)
    labels[0] = 1  # one mislabeled-looking sample, to exercise class make-up
    return features.astype(np.float32), labels


def _fit(**config: object) -> Prototypes:
    features, labels = _blobs()
    cfg = PrototypeConfig(**{"clusters": 3, "n_init": 3, "backend": "sklearn", **config})
    return fit_prototypes(features, labels, CLASSES, cfg, model="test_resnet", fingerprint=FINGERPRINT)


def test_cluster_statistics_match_brute_force() -> None:
    features, labels = _blobs()
    prototypes = _fit()
    distances = np.linalg.norm(features[:, None, :] - prototypes.centres[None].astype(np.float64), axis=2)
    member = distances.argmin(1)
    nearest = distances.min(1)
    assert sorted(prototypes.sizes.tolist()) == [5, 15, 40]
    for i in range(3):
        assert prototypes.sizes[i] == (member == i).sum()
        np.testing.assert_allclose(prototypes.lower[i], nearest[member == i].min(), rtol=1e-5)
        np.testing.assert_allclose(prototypes.upper[i], nearest[member == i].max(), rtol=1e-5)
        np.testing.assert_array_equal(prototypes.class_counts[i], np.bincount(labels[member == i], minlength=3))
        np.testing.assert_allclose(prototypes.centres[i], features[member == i].mean(0), atol=1e-5)  # Eq. 6
    assert prototypes.centres.dtype == np.float32 and prototypes.sizes.dtype == np.int64
    assert prototypes.class_counts.sum() == len(features)
    assert prototypes.backend == "sklearn" and prototypes.config["clusters"] == 3
    big = int(prototypes.sizes.argmax())
    assert prototypes.dominant_classes()[big] == "erythroid"


def test_fit_is_seeded() -> None:
    a, b = _fit(seed=3), _fit(seed=3)
    np.testing.assert_array_equal(a.centres, b.centres)


def test_too_few_samples() -> None:
    features, labels = _blobs()
    with pytest.raises(ValueError, match="at least 11 labeled samples"):
        fit_prototypes(
            features[:5], labels[:5], CLASSES, PrototypeConfig(backend="sklearn"), model="m", fingerprint="f"
        )


def test_labels_out_of_range() -> None:
    features, labels = _blobs()
    with pytest.raises(ValueError, match="labels must lie"):
        fit_prototypes(features, labels, CLASSES[:2], PrototypeConfig(clusters=3), model="m", fingerprint="f")


def test_empty_cluster_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    features = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]], dtype=np.float32), 4, axis=0)
    labels = np.zeros(len(features), dtype=np.int64)
    config = PrototypeConfig(clusters=3, n_init=1, backend="sklearn")
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="activessf_engine.select.prototypes"):
        warnings.simplefilter("ignore")  # sklearn: fewer distinct points than clusters
        prototypes = fit_prototypes(features, labels, ["only"], config, model="m", fingerprint="f")
    assert prototypes.sizes.tolist() == [4, 4]
    assert prototypes.lower.tolist() == [0.0, 0.0] and prototypes.upper.tolist() == [0.0, 0.0]
    assert "dropping 1 empty" in caplog.text


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    prototypes = _fit()
    prototypes.save(tmp_path)
    loaded = load_prototypes(tmp_path)
    for name in ("centres", "sizes", "lower", "upper", "class_counts"):
        expected, actual = getattr(prototypes, name), getattr(loaded, name)
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)
    assert loaded.class_names == CLASSES
    assert (loaded.model, loaded.fingerprint, loaded.config, loaded.backend) == (
        prototypes.model,
        prototypes.fingerprint,
        prototypes.config,
        prototypes.backend,
    )
    meta = json.loads((tmp_path / META_FILE).read_text())
    big = int(prototypes.sizes.argmax())
    assert meta["clusters"][big]["dominant_class"] == "erythroid"
    assert sum(meta["clusters"][big]["classes"].values()) == prototypes.sizes[big]


def test_check_compatible() -> None:
    prototypes = _fit()
    prototypes.check_compatible("test_resnet", FINGERPRINT)
    with pytest.raises(ValueError, match=r"abababababab\); the features would come from test_resnet, weights w\.pth"):
        prototypes.check_compatible("test_resnet", "cd" * 32, "w.pth")
    with pytest.raises(ValueError, match="would come from resnet50"):
        prototypes.check_compatible("resnet50", FINGERPRINT)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_prototypes(tmp_path)
    _fit().save(tmp_path)
    meta_path = tmp_path / META_FILE
    good = meta_path.read_text()

    meta_path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prototypes(tmp_path)

    meta = json.loads(good)
    meta["class_names"] = ["just_one"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="class_counts must have shape"):
        load_prototypes(tmp_path)

    meta = json.loads(good)
    meta["clusters"] = meta["clusters"][:2]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="disagree"):
        load_prototypes(tmp_path)

    meta_path.write_text(good)
    (tmp_path / ARRAYS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        load_prototypes(tmp_path)


def test_backend_registry() -> None:
    assert list_kmeans_backends() == ["cuml", "sklearn"]
    with pytest.raises(ValueError, match=r"valid: \['auto', 'cuml', 'sklearn'\]"):
        resolve_kmeans_backend("faiss")
    assert resolve_kmeans_backend("auto", "cpu") == "sklearn"  # a CPU run never picks cuML (a GPU run: test_device)
    assert resolve_kmeans_backend("cuml", "cpu") == "cuml"  # an explicit choice stands; fitting then says why not


@pytest.mark.parametrize("backend", list_kmeans_backends())
def test_every_backend_finds_the_blobs(backend: str) -> None:
    if backend == "cuml" and not cuml_usable()[0]:
        with pytest.raises(RuntimeError, match="cannot run"):
            _fit(backend=backend)
        return
    assert sorted(_fit(backend=backend).sizes.tolist()) == [5, 15, 40]
