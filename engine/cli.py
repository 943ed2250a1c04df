"""`activessf-engine`: a thin layer that parses, calls the library and reports.

Exit codes: 0 done; 1 failed (or `verify` found problems); 2 bad usage, config or input path;
3 done, but some inputs were skipped (see the summary); 130 interrupted (run again to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from activessf_engine import __version__, cli_export, cli_inspect
from activessf_engine.cli_flags import add_section_flags, apply_flags
from activessf_engine.config import EngineConfig, load_config, replace_section
from activessf_engine.device import DeviceChoice, DeviceUnavailableError, resolve_device, summary_line
from activessf_engine.lock import StoreLockedError
from activessf_engine.store import configure_zarr

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
FILTER_SECTIONS = ("input", "filter", "crop", "store")
# The config sections each command reads: only their fields become its flags.
PROTOTYPES_SECTIONS = ("input", "filter", "crop", "features", "prototypes")
SELECT_SECTIONS = ("store", "features", "selection")
RUN_SECTIONS = (*FILTER_SECTIONS, "features", "prototypes", "selection")

log = logging.getLogger("activessf_engine")


def _common(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with [section] tables of parameters")
    parser.add_argument(
        "--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where to compute (default cpu)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    for section in sections:
        add_section_flags(parser, section)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _dask_flags(parser: argparse.ArgumentParser, what: str = "filter") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--workers", type=_positive, help=f"{what} on a local Dask cluster of N worker processes (a part per task)"
    )
    group.add_argument("--scheduler", help=f"{what} on the Dask cluster at this address (tcp://host:8786)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activessf-engine",
        description="ActiveSSF: Cell Region Filtering and Active Sample Selection into sharded Zarr v3 stores.",
        epilog="Exit codes: 0 done, 1 failed, 2 bad usage or input, 3 done with skipped inputs, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_inspect.add_parsers(sub, _common)

    p = sub.add_parser("filter", help="Cell Region Filtering of a folder of tiles into a ROI store")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        help="folder of tiles or whole slides (searched recursively), one image or slide, or a .txt list of paths",
    )
    p.add_argument("--out", type=Path, help="ROI store to create, or to resume if interrupted (not with --limit)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    p.add_argument(
        "--limit", type=_positive, help="dry run: filter only the first N tiles and print the summary; write nothing"
    )
    _dask_flags(p)
    _common(p, FILTER_SECTIONS)

    p = sub.add_parser(
        "prototypes",
        help="features of a labeled set (pretrained EfficientNet-Lite2 by default) and K-means prototypes (Eq. 4-6)",
    )
    p.add_argument("--labeled", required=True, type=Path, help="labeled set, one folder per class")
    p.add_argument("--out", required=True, type=Path, help="folder for prototypes.safetensors and prototypes.json")
    p.add_argument("--overwrite", action="store_true", help="replace prototypes already in --out")
    _common(p, PROTOTYPES_SECTIONS)

    p = sub.add_parser("select", help="keep the candidate ROIs within their prototype's threshold (Eq. 7-9)")
    p.add_argument("--candidates", required=True, type=Path, help="ROI store made by `filter`")
    p.add_argument("--prototypes", required=True, type=Path, help="folder made by `prototypes`")
    p.add_argument("--out", required=True, type=Path, help="store of the selected ROIs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    _dask_flags(p, "compute the features")
    _common(p, SELECT_SECTIONS)

    p = sub.add_parser("run", help="filter + prototypes + select: OUT/candidates, OUT/prototypes, OUT/selected")
    p.add_argument("--input", required=True, type=Path, help="folder of tiles, one image, or a .txt list of paths")
    p.add_argument("--labeled", required=True, type=Path, help="labeled set, one folder per class")
    p.add_argument("--out", required=True, type=Path, help="folder for the three outputs")
    p.add_argument("--overwrite", action="store_true", help="start again from nothing")
    _dask_flags(p)
    _common(p, RUN_SECTIONS)

    p = sub.add_parser("verify", help="check a store and say what is wrong with it")
    p.add_argument("store", type=Path)
    p.add_argument("--deep", action="store_true", help="also read every ROI and compare it with its checksum")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move damaged parts of a candidates store to STORE/quarantine/ (a resume then redoes them)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")

    p = sub.add_parser("manifest", help="print the per-ROI table of a store as CSV")
    p.add_argument("store", type=Path)
    p.add_argument("--output", type=Path, help="write to this file instead of stdout")
    cli_export.add_parsers(sub)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _config(args: argparse.Namespace) -> EngineConfig:
    return apply_flags(load_config(args.config), args)


def _device(args: argparse.Namespace) -> DeviceChoice:
    """The device choice (logged); its `describe()` goes into every summary."""
    choice = resolve_device(args.device)
    log.info("device: %s (%s)", choice.kind, choice.reason)
    return choice


_report = cli_inspect.print_summary


def _device_lines(described: dict[str, Any], host_work: list[str]) -> list[str]:
    if "kind" not in described:  # a Dask run with nothing left to do
        return []
    workers = f" on each of {described['workers']} Dask workers" if described.get("workers") else ""
    lines = [f"device           {summary_line(described)}{workers}"]
    return lines + [f"  on the host    {work}" for work in host_work]


def _filter_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        *_device_lines(s["device_choice"], s["device_choice"]["host_work"]),
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
            "WARNING          no region passed the filter: lower --min-fill or --min-box, or check the HSV ranges "
            "against your stain (--purple, --deep-blue)"
        )
    lines += [
        f"regions          {s['regions_found']} found, {s['rejected_size']} rejected for box size (--min-box), "
        f"{s['rejected_fill']} rejected for fill rate (--min-fill), {s['rois']} kept",
        f"ROIs found       {s['rois']}",
        *cli_inspect.sources_without_roi_lines(s["sources_without_roi"]),
        *([] if s["dry_run"] else [f"store holds      {s['store_rois']} ROIs now"]),
        f"wall time        {s['wall_seconds']:.2f} s",
        f"throughput       {s['images_per_second']:.1f} images/s, {s['megapixels_per_second']:.2f} megapixels/s",
        "stages (s)       " + ", ".join(f"{k} {v:.2f}" for k, v in s["stage_seconds"].items()),
    ]
    return lines


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
            f"{c['selected']:>8}  {c['dominant_class']}"
        )
    lines += [f"WARNING: {warning}" for warning in s["warnings"]]
    return lines


def _filter(args: argparse.Namespace, config: EngineConfig, device: DeviceChoice | None, out: Path) -> dict[str, Any]:
    """The filter in this process on `device`, or on Dask (`device` None: each worker resolves args.device)."""
    progress, overwrite = not args.quiet, args.overwrite
    if device is None:
        from activessf_engine.distributed import run_filter_on_dask

        summary = run_filter_on_dask(args.input, out, config, progress=progress, overwrite=overwrite, **_dask(args))
    else:
        from activessf_engine.pipeline import run_filter

        summary = run_filter(args.input, out, config, device=device, progress=progress, overwrite=overwrite)
    return summary.to_json()


def _on_dask(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "scheduler", None) or getattr(args, "workers", None))


def _dask(args: argparse.Namespace) -> dict[str, Any]:
    """The Dask options of a run: its cluster, and the device each worker resolves for itself."""
    return {"scheduler": args.scheduler, "workers": args.workers or 0, "device": args.device}


def cmd_filter(args: argparse.Namespace) -> int:
    if args.limit:
        from activessf_engine.pipeline import dry_run_filter

        dry = dry_run_filter(args.input, _config(args), args.limit, device=_device(args), progress=not args.quiet)
        summary = dry.to_json()
        _report(args, summary, _filter_lines(summary))
        return EXIT_SKIPPED if summary["sources_skipped"] else EXIT_OK
    if args.out is None:
        raise ValueError("filter needs --out STORE (or --limit N for a dry run that writes nothing)")
    choice = None if _on_dask(args) else _device(args)
    summary = _filter(args, _config(args), choice, args.out)
    _report(args, summary, _filter_lines(summary))
    return EXIT_SKIPPED if summary["sources_skipped"] else EXIT_OK


def cmd_prototypes(args: argparse.Namespace) -> int:
    from activessf_engine.curate import run_prototypes

    choice = _device(args)
    summary = run_prototypes(
        args.labeled, args.out, _config(args), device=choice, progress=not args.quiet, overwrite=args.overwrite
    )
    summary["device_choice"] = choice.describe()
    lines = [
        *_device_lines(choice.describe(), []),
        f"prototypes       {summary['prototypes']} ({summary['labeled']} labeled images, model {summary['model']}, "
        f"weights {summary['weights_loaded']}, K-means {summary['kmeans_backend']})",
    ]
    lines += [
        f"  cluster {c['cluster']:>2}: n={c['n']:<4} LB={c['lb']:.3f} UB={c['ub']:.3f} {c['classes']}"
        for c in summary["clusters"]
    ]
    _report(args, summary, lines)
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
    from activessf_engine.curate import check_select_out, run_select

    candidates, prototypes, out = paths
    dask_features = None
    if _on_dask(args):
        from activessf_engine.distributed import features_on_dask

        check_select_out(out, overwrite)
        dask_features = features_on_dask(candidates, prototypes, config, **_dask(args))
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
    choice = None if _on_dask(args) else _device(args)
    paths = (args.candidates, args.prototypes, args.out)
    summary = _select(args, _config(args), choice, paths, args.overwrite)
    _report(args, summary, [*_device_lines(summary["device_choice"], []), *_select_lines(summary)])
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from activessf_engine.curate import run_prototypes
    from activessf_engine.features import resolve_features, weights_source

    choice = resolve_device("auto") if _on_dask(args) else _device(args)  # on Dask: prototypes here, on auto
    config, out = _config(args), args.out
    weights_source(resolve_features(config.features))  # a missing weights file stops the run now, not after the filter
    filtered = _filter(args, config, None if _on_dask(args) else choice, out / "candidates")
    protos = run_prototypes(
        args.labeled, out / "prototypes", config, device=choice, progress=not args.quiet, overwrite=True
    )
    paths = (out / "candidates", out / "prototypes", out / "selected")
    selected = _select(args, config, choice, paths, overwrite=True)
    summary = {"device_choice": choice.describe(), "filter": filtered, "prototypes": protos, "select": selected}
    _report(args, summary, _filter_lines(filtered) + _select_lines(selected))
    return EXIT_SKIPPED if filtered["sources_skipped"] or protos["labeled_skipped"] else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from activessf_engine.verify import repair_store, verify_store

    if args.repair:
        problems, repaired = repair_store(args.store)
    else:
        problems, repaired = verify_store(args.store, deep=args.deep), []
    if args.json:
        summary = {"store": str(args.store), "ok": not problems, "problems": problems, "repaired": repaired}
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for line in problems or [f"{args.store}: OK"]:
            print(line)
        for line in repaired:
            print(f"repaired: {line}")
    print(cli_inspect.what_next(args, {"problems": problems}), file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_manifest(args: argparse.Namespace) -> int:
    from activessf_engine.manifest import manifest_header, manifest_rows
    from activessf_engine.store import RoiStore

    store = RoiStore(args.store)
    sink = open(args.output, "w", newline="") if args.output else contextlib.nullcontext(sys.stdout)  # noqa: SIM115
    with sink as out:
        writer = csv.writer(out)
        writer.writerow(manifest_header(store))
        writer.writerows(manifest_rows(store))
    print(cli_inspect.what_next(args, {}), file=sys.stderr)
    return EXIT_OK


COMMANDS = {
    "filter": cmd_filter,
    "prototypes": cmd_prototypes,
    "select": cmd_select,
    "run": cmd_run,
    "verify": cmd_verify,
    "manifest": cmd_manifest,
    **cli_export.COMMANDS,
    **cli_inspect.COMMANDS,
}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    configure_zarr()
    # Batch schedulers stop jobs with SIGTERM: treat it like Ctrl-C, so the run ends cleanly (exit 130).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: committed parts are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, FileExistsError, ValueError, DeviceUnavailableError, StoreLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        log.debug("failure", exc_info=True)
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
