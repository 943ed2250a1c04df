"""The commands that run the engine's stages: filter, prototypes, select, and run (all three)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from activessf_engine.cli.flags import given_fields
from activessf_engine.cli.options import (
    EXIT_OK,
    EXIT_SKIPPED,
    add_common_flags,
    add_dask_flags,
    add_input_flag,
    dask_options,
    on_dask,
    positive_int,
    run_config,
    run_device,
)
from activessf_engine.cli.summary import (
    device_lines,
    end_with_selection,
    named_sources_lines,
    print_summary,
)
from activessf_engine.config import EngineConfig, FilterConfig, replace_section
from activessf_engine.device import DeviceChoice, resolve_device

# The config sections each command reads: only their fields become its flags.
FILTER_SECTIONS = ("input", "filter", "crop", "store")
PROTOTYPES_SECTIONS = ("input", "filter", "crop", "features", "prototypes")
SELECT_SECTIONS = ("store", "features", "selection")
RUN_SECTIONS = (*FILTER_SECTIONS, "features", "prototypes", "selection")


def add_parsers(sub: Any) -> None:
    """Register filter, prototypes, select and run on `sub` (the main parser's subparsers)."""
    p = sub.add_parser("filter", help="Cell Region Filtering of a folder of tiles into a ROI store")
    add_input_flag(p)
    p.add_argument("--out", type=Path, help="ROI store to create, or to resume if interrupted (not with --limit)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    p.add_argument(
        "--limit", type=positive_int, help="dry run: filter only the first N tiles and print the summary; write nothing"
    )
    add_dask_flags(p)
    add_common_flags(p, FILTER_SECTIONS)

    p = sub.add_parser(
        "prototypes",
        help="features of a labeled set (pretrained EfficientNet-Lite2 by default) and K-means prototypes (Eq. 4-6)",
    )
    p.add_argument("--labeled", required=True, type=Path, help="labeled set, one folder per class")
    p.add_argument("--out", required=True, type=Path, help="folder for prototypes.safetensors and prototypes.json")
    p.add_argument("--overwrite", action="store_true", help="replace prototypes already in --out")
    p.add_argument(
        "--like",
        type=Path,
        metavar="STORE",
        help="frame the labeled cells as the ROIs of this candidate store were (its [filter] and [crop] settings)",
    )
    add_common_flags(p, PROTOTYPES_SECTIONS)

    p = sub.add_parser("select", help="keep the candidate ROIs within their prototype's threshold (Eq. 7-9)")
    p.add_argument("--candidates", required=True, type=Path, help="ROI store made by `filter`")
    p.add_argument("--prototypes", required=True, type=Path, help="folder made by `prototypes`")
    p.add_argument("--out", required=True, type=Path, help="store of the selected ROIs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    add_dask_flags(p, "compute the features")
    add_common_flags(p, SELECT_SECTIONS)

    p = sub.add_parser("run", help="filter + prototypes + select: OUT/candidates, OUT/prototypes, OUT/selected")
    add_input_flag(p)
    p.add_argument("--labeled", required=True, type=Path, help="labeled set, one folder per class")
    p.add_argument("--out", required=True, type=Path, help="folder for the three outputs")
    p.add_argument("--overwrite", action="store_true", help="start again from nothing")
    add_dask_flags(p)
    add_common_flags(p, RUN_SECTIONS)


def _filter_lines(s: dict[str, Any], config: FilterConfig) -> list[str]:
    lines = [
        *device_lines(s["device_choice"], s["device_choice"]["host_work"]),
        f"store            {s['store'] or 'none: a dry run (--limit) writes nothing'}",
        f"sources          {s['sources_total']} found, {s['sources_read']} read, {s['sources_skipped']} skipped"
        + (
            f" (parts already done: {s['parts_already_done']} of {s['parts_total']})" if s["parts_already_done"] else ""
        ),
    ]
    if s["slides"]:
        lines.append(f"slides           {s['slides']}, {s['background_tiles']} background tile(s) not read")
    for reason, count in sorted(s["skip_reasons"].items()):
        lines.append(f"  skipped        {count} x {reason}")
    if s["tiles_below_min_box"]:
        lines.append(
            f"WARNING          {s['tiles_below_min_box']} tile(s) are smaller than --min-box on a side: "
            "no region can pass there"
        )
    if not s["rois"] and s["sources_read"]:
        lines.append(
            "WARNING          no region passed the filter: lower --min-fill or --min-box, or "
            + (
                "calibrate again on tiles like these (the config's learned colour table, filter.cell_colours, "
                "holds none of their cells' colours)"
                if config.cell_colours.cells
                else "check the HSV ranges against your stain (--purple, --deep-blue)"
            )
        )
    lines += [
        f"regions          {s['regions_found']} found, {s['rejected_size']} rejected for box size (--min-box), "
        f"{s['rejected_fill']} rejected for fill rate (--min-fill), {s['rois']} kept",
        f"ROIs found       {s['rois']}",
        *named_sources_lines("no ROI in", s["sources_without_roi"]),
        *named_sources_lines("out of focus", s["out_of_focus"]),
        *named_sources_lines("stain as read", s["stain_left_as_read"]),
        *([] if s["dry_run"] else [f"store holds      {s['store_rois']} ROIs now"]),
        f"wall time        {s['wall_seconds']:.2f} s",
    ]
    if s["sources_read"]:
        lines += [
            f"throughput       {s['images_per_second']:.1f} images/s, {s['megapixels_per_second']:.2f} megapixels/s",
            "stages (s)       " + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_seconds"].items()),
        ]
    elif s["parts_total"] and s["parts_already_done"] == s["parts_total"]:
        lines.append("nothing to do    every part was done by an earlier run into this store")
    return lines


def _degenerate_lines(s: dict[str, Any]) -> list[str]:
    return [f"NOTE: {s['degenerate_clusters']['message']}"] if s.get("degenerate_clusters") else []


def _select_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        f"selected store   {s['selected_store']}",
        f"strategy         {s['strategy']} (alpha {s['alpha']}, {s['threshold_mode']} thresholds, "
        f"{s['bounds']} bounds)",
        f"candidates       {s['candidates']}, {s['within_threshold']} within their threshold, selected {s['selected']}"
        + (f" (budget {s['budget']:g}, balanced by {s['balance_by']})" if s["strategy"] == "gated-balanced" else ""),
        f"features         {s['features_computed']} computed, {s['features_cached']} from cache",
        "cluster  n_i   threshold  candidates  selected  dominant class",
    ]
    for c in s["clusters"]:
        lines.append(
            f"{c['cluster']:>7}  {c['n']:>4}  {c.get('threshold', 0):>9.3f}  {c['candidates']:>10}  "
            f"{c['selected']:>8}  {c['dominant_class']}{'  (degenerate)' if c.get('degenerate') else ''}"
        )
    return lines + _degenerate_lines(s)


def _filter(args: argparse.Namespace, config: EngineConfig, device: DeviceChoice | None, out: Path) -> dict[str, Any]:
    """The filter in this process on `device`, or on Dask (`device` None: each worker resolves args.device)."""
    progress, overwrite = not args.quiet, args.overwrite
    if device is None:
        from activessf_engine.distributed import run_filter_on_dask

        summary = run_filter_on_dask(
            args.input, out, config, progress=progress, overwrite=overwrite, **dask_options(args)
        )
    else:
        from activessf_engine.filter import run_filter

        summary = run_filter(args.input, out, config, device=device, progress=progress, overwrite=overwrite)
    return summary.to_json()


def cmd_filter(args: argparse.Namespace) -> int:
    if args.limit:
        from activessf_engine.filter import dry_run_filter

        config = run_config(args)
        dry = dry_run_filter(args.input, config, args.limit, device=run_device(args), progress=not args.quiet)
        summary = dry.to_json()
        print_summary(args, summary, _filter_lines(summary, config.filter))
        return EXIT_SKIPPED if summary["sources_skipped"] else EXIT_OK
    if args.out is None:
        raise ValueError("filter needs --out STORE (or --limit N for a dry run that writes nothing)")
    choice, config = None if on_dask(args) else run_device(args), run_config(args)
    summary = _filter(args, config, choice, args.out)
    print_summary(args, summary, _filter_lines(summary, config.filter))
    return EXIT_SKIPPED if summary["sources_skipped"] else EXIT_OK


def _framed_like(args: argparse.Namespace, config: EngineConfig) -> EngineConfig:
    """`config` framed like the store of `--like` (when given); a filter or crop flag beside it is refused."""
    if args.like is None:
        return config
    from activessf_engine.select import framed_like
    from activessf_engine.store import RoiStore

    given = sorted(f"{section}.{name}" for section, name in given_fields(args) if section in ("filter", "crop"))
    if given:
        raise ValueError(f"--like takes the filter and crop settings from {args.like}; leave out {', '.join(given)}")
    return framed_like(config, RoiStore(args.like).meta["config"])


def cmd_prototypes(args: argparse.Namespace) -> int:
    from activessf_engine.select import run_prototypes

    choice = run_device(args)
    config = _framed_like(args, run_config(args))
    summary = run_prototypes(
        args.labeled, args.out, config, device=choice, progress=not args.quiet, overwrite=args.overwrite
    )
    summary["device_choice"] = choice.describe()
    lines = [
        *device_lines(choice.describe(), []),
        f"prototypes       {summary['prototypes']} ({summary['labeled']} labeled images, model {summary['model']}, "
        f"weights {summary['weights_loaded']}, K-means {summary['kmeans_backend']})",
    ]
    lines += [
        f"  cluster {c['cluster']:>2}: n={c['n']:<4} LB={c['lb']:.3f} UB={c['ub']:.3f} {c['classes']}"
        for c in summary["clusters"]
    ]
    lines += [*_degenerate_lines(summary), *[f"WARNING: {warning}" for warning in summary["warnings"]]]
    print_summary(args, summary, lines)
    return EXIT_SKIPPED if summary["labeled_skipped"] else EXIT_OK


def _select(
    args: argparse.Namespace,
    config: EngineConfig,
    choice: DeviceChoice | None,
    paths: tuple[Path, Path, Path],
    overwrite: bool,
) -> dict[str, Any]:
    """`run_select` in this process on `choice`; on Dask, the features first on the workers (on --device),
    then the rest here from their cache, on this machine's own device (auto)."""
    from activessf_engine.select import check_select_out, run_select

    candidates, prototypes, out = paths
    dask_features = None
    if on_dask(args):
        from activessf_engine.distributed import features_on_dask

        check_select_out(out, overwrite, (candidates, prototypes))
        dask_features = features_on_dask(candidates, prototypes, config, **dask_options(args))
        config = replace_section(config, "features", dtype=dask_features["dtype"])
        choice = resolve_device("auto")
    summary = run_select(
        candidates, prototypes, out, config, device=choice, progress=not args.quiet, overwrite=overwrite
    )
    summary["device_choice"] = choice.describe()
    if dask_features is not None:
        summary["dask_features"] = dask_features
    return summary


def cmd_select(args: argparse.Namespace) -> int:
    choice = None if on_dask(args) else run_device(args)
    paths = (args.candidates, args.prototypes, args.out)
    summary = _select(args, run_config(args), choice, paths, args.overwrite)
    lines = [*device_lines(summary["device_choice"], []), *_select_lines(summary)]
    return end_with_selection(args, summary, lines, summary["warnings"], summary) or EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from activessf_engine.select import resolve_features, run_prototypes, weights_source

    choice = resolve_device("auto") if on_dask(args) else run_device(args)  # on Dask: prototypes here, on auto
    config, out = run_config(args), args.out
    weights_source(resolve_features(config.features))  # a missing weights file stops the run now, not after the filter
    filtered = _filter(args, config, None if on_dask(args) else choice, out / "candidates")
    protos = run_prototypes(
        args.labeled, out / "prototypes", config, device=choice, progress=not args.quiet, overwrite=True
    )
    paths = (out / "candidates", out / "prototypes", out / "selected")
    selected = _select(args, config, choice, paths, overwrite=True)
    summary = {"device_choice": choice.describe(), "filter": filtered, "prototypes": protos, "select": selected}
    warnings = [*protos["warnings"], *selected["warnings"]]
    lines = _filter_lines(filtered, config.filter) + _select_lines(selected)
    ended = end_with_selection(args, summary, lines, warnings, selected)
    return ended or (EXIT_SKIPPED if filtered["sources_skipped"] or protos["labeled_skipped"] else EXIT_OK)


COMMANDS = {"filter": cmd_filter, "prototypes": cmd_prototypes, "select": cmd_select, "run": cmd_run}
