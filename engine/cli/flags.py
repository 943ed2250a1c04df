"""Command-line flags generated from the config dataclasses, so every parameter is a flag and a TOML key.

A flag's default is "not given": the value comes from `--config` (TOML) or the dataclass default,
and a flag given on the command line wins over both.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import sys
import tokenize
from typing import Any, Literal, get_args, get_origin, get_type_hints

from activessf_engine.config import EngineConfig, HsvRange, from_dict, to_dict

# Flags whose plain name would mean different things in two sections.
RENAMED = {
    ("features", "batch_size"): "feature-batch-size",
    ("features", "threads"): "feature-threads",
    ("prototypes", "seed"): "kmeans-seed",
    ("prototypes", "backend"): "kmeans-backend",
    ("prototypes", "max_iter"): "kmeans-max-iter",
    ("prototypes", "n_init"): "kmeans-n-init",
    ("crop", "size"): "roi-size",
    ("crop", "margin"): "crop-margin",
    ("crop", "pad"): "crop-pad",
    ("crop", "pad_value"): "crop-pad-value",
}
# Fields with no flag, set from a config file alone: a stain reference and a table of cell colours are measured
# (by `calibrate`), not typed.
FILE_ONLY = frozenset({("filter", "stain"), ("filter", "cell_colours")})


def _parse_hsv(text: str) -> dict[str, list[int]]:
    """'H0-H1,S0-S1,V0-V1' -> {'h': [H0, H1], ...}"""
    try:
        parts = [tuple(int(v) for v in p.split("-")) for p in text.split(",")]
        if len(parts) != 3 or any(len(p) != 2 for p in parts):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H0-H1,S0-S1,V0-V1 (OpenCV units), got {text!r}") from None
    return {"h": list(parts[0]), "s": list(parts[1]), "v": list(parts[2])}


@functools.cache
def _class_sources(module: str) -> dict[str, str]:
    """The source of each top-level class of a module, from one parse of it (`inspect.getsource` of each
    class would parse the module again each time: seconds of `--help`)."""
    source = inspect.getsource(sys.modules[module])
    tree = ast.parse(source)
    return {
        node.name: ast.get_source_segment(source, node) or "" for node in tree.body if isinstance(node, ast.ClassDef)
    }


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """The comments that explain each field of a config dataclass, read from its source: the comment
    lines right above the field and the comment at the end of its line, joined."""
    source = _class_sources(cls.__module__)[cls.__name__]
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    above: list[str] = []
    line_start: str | None = None  # the field named at the start of the current line
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if line_start is not None:
                comments[line_start] = " ".join([*above, text])
                above = []
            else:
                above.append(text)
        elif token.type == tokenize.NAME and token.start[1] == 4 and token.string in names and line_start is None:
            line_start = token.string
        elif token.type == tokenize.NEWLINE:  # a statement ended; comment-only lines end with NL instead
            if line_start is not None and line_start not in comments and above:
                comments[line_start] = " ".join(above)
            above, line_start = [], None
    return comments


def flag_text(value: Any) -> str:
    """A value as its flag takes it: H0-H1,S0-S1,V0-V1 for an HSV range (or its dict), A,B,... for a tuple."""
    if isinstance(value, HsvRange):
        value = {"h": value.h, "s": value.s, "v": value.v}
    if isinstance(value, dict):
        return ",".join(f"{value[c][0]}-{value[c][1]}" for c in "hsv")
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def flag_name(section: str, name: str) -> str:
    """The flag of the field `name` of the config section `section`: --min-fill, --roi-size, ..."""
    return "--" + RENAMED.get((section, name), name.replace("_", "-"))


def _describe(cls: type, name: str) -> str:
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    shown = flag_text(default)
    comment = field_comments(cls).get(name, "")
    # argparse formats help with %: a literal percent sign must be doubled
    return f"{comment} (default: {shown})".replace("%", "%%").strip()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The type hints of a config dataclass, resolved once (every parser of every command reads them)."""
    return get_type_hints(cls)


def add_section_flags(parser: argparse.ArgumentParser, section: str, only: frozenset[str] | None = None) -> None:
    """One flag per field of `EngineConfig.<section>` (or per field named in `only`), its help the
    field's comment in config.py."""
    cls = _hints(EngineConfig)[section]
    group = parser.add_argument_group(f"[{section}] {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')}")
    for field in dataclasses.fields(cls):
        if (only is not None and field.name not in only) or (section, field.name) in FILE_ONLY:
            continue
        hint = _hints(cls)[field.name]
        flag = flag_name(section, field.name)
        kwargs: dict[str, Any] = {
            "dest": f"cfg:{section}:{field.name}",
            "default": argparse.SUPPRESS,
            "metavar": field.name.upper(),
        }
        help_text = _describe(cls, field.name)
        if hint is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, metavar=None)
        elif hint is HsvRange:
            kwargs.update(type=_parse_hsv, metavar="H0-H1,S0-S1,V0-V1")
        elif get_origin(hint) is Literal:
            choices = get_args(hint)
            kwargs.update(choices=choices, type=type(choices[0]), metavar=None)
        elif get_origin(hint) is tuple:
            kwargs.update(type=lambda s: tuple(v.strip() for v in s.split(",") if v.strip()), metavar="A,B,...")
        else:
            kwargs["type"] = hint
        group.add_argument(flag, help=help_text, **kwargs)


def given_fields(args: argparse.Namespace) -> dict[tuple[str, str], Any]:
    """The config fields that flags given on the command line set: (section, field) -> value."""
    given = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg:"):
            _, section, name = dest.split(":")
            given[section, name] = value
    return given


def given_flags(args: argparse.Namespace, sections: tuple[str, ...] | None = None) -> list[str]:
    """The config flags given on the command line (of `sections`, or all), as arguments that give them
    again (to another command: the dry run's "next:" line)."""
    given = []
    for (section, name), value in given_fields(args).items():
        if sections is None or section in sections:
            flag = flag_name(section, name)
            if isinstance(value, bool):
                given.append(flag if value else f"--no-{flag[2:]}")
            else:
                given += [flag, flag_text(value)]
    return given


def apply_flags(config: EngineConfig, args: argparse.Namespace) -> EngineConfig:
    """`config` with every flag given on the command line applied (validated by the dataclasses)."""
    changes: dict[str, dict[str, Any]] = {}
    for (section, name), value in given_fields(args).items():
        changes.setdefault(section, {})[name] = value
    if not changes:
        return config
    merged = to_dict(config)
    for section, values in changes.items():
        merged[section].update(values)
    return from_dict(EngineConfig, merged)
