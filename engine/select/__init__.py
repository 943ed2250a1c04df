"""Active Sample Selection (II-C): features, prototypes (Eq. 4-6), density-aware thresholds (Eq. 7-9), strategies."""

from activessf_engine.select.features import extract, load_backbone, resolve_features, weights_source
from activessf_engine.select.framing import FramingMismatchError, framed_like
from activessf_engine.select.nearest import nearest_prototype
from activessf_engine.select.prototypes import Prototypes, fit_prototypes, load_prototypes
from activessf_engine.select.run import (
    check_select_out,
    feature_cache,
    run_prototypes,
    run_select,
    selection_features_config,
)
from activessf_engine.select.stain import StainNormalizer
from activessf_engine.select.strategies import list_strategies, reselect, select
from activessf_engine.select.thresholds import density_thresholds

__all__ = [
    "FramingMismatchError",
    "Prototypes",
    "StainNormalizer",
    "check_select_out",
    "density_thresholds",
    "extract",
    "feature_cache",
    "fit_prototypes",
    "framed_like",
    "list_strategies",
    "load_backbone",
    "load_prototypes",
    "nearest_prototype",
    "reselect",
    "resolve_features",
    "run_prototypes",
    "run_select",
    "select",
    "selection_features_config",
    "weights_source",
]
