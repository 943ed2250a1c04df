"""Active Sample Selection (II-C): features, prototypes (Eq. 4-6), density-aware thresholds (Eq. 7-9), strategies."""

from activessf_engine import lazy_face

# Each name this package offers, and the module that holds it: imported on first use.
_WHERE = {
    "extract": "features",
    "load_backbone": "features",
    "resolve_features": "features",
    "weights_source": "features",
    "FramingMismatchError": "framing",
    "framed_like": "framing",
    "nearest_prototype": "nearest",
    "Prototypes": "prototypes",
    "fit_prototypes": "prototypes",
    "load_prototypes": "prototypes",
    "check_select_out": "run",
    "feature_cache": "run",
    "run_prototypes": "run",
    "run_select": "run",
    "selection_features_config": "run",
    "list_strategies": "strategies",
    "reselect": "strategies",
    "select": "strategies",
    "density_thresholds": "thresholds",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_face(__name__, _WHERE)
