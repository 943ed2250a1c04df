"""The settings that frame a labeled crop, recorded with the prototypes and compared with the candidates'.

Eq. 7 compares a candidate ROI with prototypes of labeled crops; the distance measures the cells only when
both were cut alike. A labeled image is framed by the crop settings and, with `labeled_crop = "filter"`, by
the filter that finds its central region (`run.labeled_rois`); a candidate by the settings its store
records. `prototypes` records the labeled framing in prototypes.json, `select` refuses candidates framed
otherwise, naming each field, and `prototypes --like STORE` takes the framing from a store.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from activessf_engine.config import CropConfig, EngineConfig, FilterConfig, from_dict, to_dict, with_defaults

FRAMING_SECTIONS: dict[str, type] = {"filter": FilterConfig, "crop": CropConfig}


class FramingMismatchError(ValueError):
    """The prototypes' labeled crops were framed unlike the candidates (a usage error: exit 2)."""


def labeled_framing(config: EngineConfig) -> dict[str, dict[str, Any]]:
    """The sections that framed the labeled crops, as stored JSON values: crop always, filter when the
    labeled images are cropped by the filter (`labeled_crop = "filter"`)."""
    sections = {"crop": to_dict(config.crop)}
    if config.prototypes.labeled_crop == "filter":
        sections["filter"] = to_dict(config.filter)
    return json.loads(json.dumps(sections))  # tuples become lists, as in a store's recorded config


def framing_differences(framing: dict[str, dict[str, Any]], candidates_config: dict[str, Any]) -> list[str]:
    """Each framing field on which prototypes and candidates differ, as
    "filter.min_fill 0.7 (prototypes) vs 0.5 (candidates)"."""
    differences = []
    for section, stored in framing.items():
        recorded, theirs = with_defaults(section, stored), with_defaults(section, candidates_config.get(section, {}))
        for name in sorted(set(recorded) | set(theirs)):
            ours, other = recorded.get(name), theirs.get(name)
            if ours != other:
                differences.append(f"{section}.{name} {ours!r} (prototypes) vs {other!r} (candidates)")
    return differences


def check_framing(
    framing: dict[str, dict[str, Any]],
    candidates_config: dict[str, Any],
    candidates: str | Path,
    labeled: str,
    prototypes: str | Path = "PROTOTYPES",
) -> None:
    """Raise FramingMismatchError, naming each field and the fix, unless the candidates were framed like
    the labeled crops."""
    differences = framing_differences(framing, candidates_config)
    if differences:
        source = labeled or "LABELED"
        raise FramingMismatchError(
            f"the prototypes' labeled crops were framed unlike the candidates of {candidates}: "
            + "; ".join(differences)
            + ". Distances between the two would measure the framing, not the cells. Rebuild the prototypes "
            f"framed like the candidates: activessf-engine prototypes --labeled {source} --like {candidates} "
            f"--out {prototypes} --overwrite"
        )


def framed_like(config: EngineConfig, candidates_config: dict[str, Any]) -> EngineConfig:
    """`config` with the framing sections (filter, crop) of a store's recorded config."""
    sections = {name: from_dict(cls, candidates_config[name], name) for name, cls in FRAMING_SECTIONS.items()}
    return dataclasses.replace(config, **sections)
