"""The steps of `gpu_check.sh`: each a subprocess with its own time limit, all gathered into one JSON.

    python benchmarks/gpu_check.py --out OUT [--steps checks,filter,selection] [--baseline-path PKG]

Writes ``OUT/gpu_check.json`` (every step's status, seconds, figures and the tail of its output) after
every step, so whatever fails or runs out of time, the steps that ran are on disk, and ``OUT/gpu_check.log``
(everything the steps printed, as they print it). ``--budget`` bounds the whole run: each step's limit is
cut to what is left of it, so the script ends on its own before an outer time limit does. With
``--baseline-path`` (a folder that holds another version of the ``activessf_engine`` package), the
throughput steps run twice, that version first, for a before/after comparison on one machine in one run.
Exit status: 0 every step ran and passed; 1 a step failed or ran out of time; 2 no usable GPU (the
preflight says why; only the CPU steps ran).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFLIGHT = """
import importlib, json, subprocess, sys
versions = {}
for name in ("torch", "torchvision", "cupy", "numba", "scipy", "sklearn", "kornia", "zarr", "numcodecs", "timm",
             "nvidia.dali", "cuml", "cv2", "tifffile", "imagecodecs", "openslide"):
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as error:
        versions[name] = f"absent ({type(error).__name__})"
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except FileNotFoundError:
    gpu = "nvidia-smi absent"
from activessf_engine.device import resolve_device
print(json.dumps({"python": sys.version.split()[0], "versions": versions, "gpu": gpu,
                  "device_choice": resolve_device("auto").describe()}))
"""


@dataclass
class Step:
    name: str
    group: str
    command: list[str] | str  # arguments after the interpreter (a string is split on spaces); "{json}" and
    # "{xml}" are replaced by the paths of the step's JSON and JUnit XML, "{downstream}" by --downstream-inputs
    timeout: int  # seconds
    compare: bool = False  # run under --baseline-path too
    result: dict[str, Any] = field(default_factory=dict)


def _filter(
    name: str, device: str, size: str | None, count: int, batch: int, timeout: int, processes: str = "1"
) -> Step:
    command = f"benchmarks/filter_throughput.py --device {device} --count {count} --rounds 3 --batch-size {batch}"
    command += f" --processes {processes}"
    command += f" --json {{json}} --size {size}" if size else " --json {json}"
    return Step(
        name, "filter" if device == "cuda" else "cpu-filter", command.split(), timeout, compare=device == "cuda"
    )


STEPS = [
    Step("preflight", "checks", ["-c", PREFLIGHT], 90),
    Step(
        "gpu-tests",
        "checks",
        "-m pytest -p no:cacheprovider -m gpu -q --junitxml {xml} tests/test_gpu_kernels.py tests/test_gpu_stages.py",
        150,
    ),
    _filter("filter-gpu-640x480-b16", "cuda", None, 512, 16, 60),
    _filter("filter-gpu-640x480-b64", "cuda", None, 512, 64, 60),
    _filter("filter-gpu-2048-b8", "cuda", "2048x2048", 64, 8, 90),
    _filter("filter-cpu-640x480-b16", "cpu", None, 1024, 16, 240, processes="1,4,8,16"),
    _filter("filter-cpu-2048-b4", "cpu", "2048x2048", 32, 4, 90),
    Step(
        "features",
        "selection",
        "benchmarks/feature_throughput.py --device cuda --batch-sizes 64,256,1024 --dtypes bfloat16,float32 "
        "--rounds 10 --json {json}",
        150,
        compare=True,
    ),
    Step(
        "select-100k",
        "selection",
        "benchmarks/select_throughput.py --device cuda --rois 100000 --distinct 10000 --writers 16 --json {json}",
        220,
    ),
    Step(
        "slides-gpu-tests",
        "slides",
        "-m pytest -p no:cacheprovider -m gpu -q --junitxml {xml} tests/test_slides.py",
        150,
    ),
    Step(
        "slide-read",
        "slides",
        "benchmarks/slide_read.py --size 16384x12288 --tile 2048 --rounds 3 --json {json}",
        240,
    ),
    Step(
        "features-compile",
        "compile",
        "benchmarks/feature_throughput.py --device cuda --batch-sizes 256 --dtypes bfloat16 --compile --rounds 20 "
        "--json {json}",
        180,
    ),
    # selection_quality.py --downstream-inputs FILE, made where the data is; the SSL table of each strategy's set
    Step(
        "ssl-downstream",
        "downstream",
        "benchmarks/ssl_probe.py {downstream} --device cuda --seeds 3 --steps 300 --batch 256 --json {json}",
        300,
    ),
]


def _junit_counts(path: Path) -> dict[str, Any]:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in suite.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            failed.append(f"{case.get('name')}: {(bad.get('message') or '').splitlines()[0][:300]}")
    counts["failed_tests"] = failed
    return counts


def run_step(
    step: Step, python: str, env: dict[str, str], log_path: Path, tmp: Path, limit: float, downstream: str = ""
) -> dict[str, Any]:
    """Run one step for at most `limit` seconds; what it prints goes to the log as it prints it, so even a
    step killed from outside leaves its output there."""
    json_path, xml_path = tmp / f"{step.name}.json", tmp / f"{step.name}.xml"
    for path in (json_path, xml_path):
        path.unlink(missing_ok=True)
    arguments = step.command.split() if isinstance(step.command, str) else step.command
    places = {"{json}": str(json_path), "{xml}": str(xml_path), "{downstream}": downstream}
    command = [python, *(places.get(a, a) for a in arguments)]
    with open(log_path, "a") as log:
        log.write(f"\n===== {step.name} ({env.get('ACTIVESSF_VERSION_LABEL', 'current')}) =====\n")
        log.flush()
        offset = log.tell()
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    record: dict[str, Any] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
    with open(log_path, "rb") as log:
        log.seek(offset)
        output = log.read().decode(errors="replace")
    with open(log_path, "a") as log:
        log.write(f"----- {step.name}: {status} in {record['seconds']} s\n")
    record["output_tail"] = output[-3000:]
    if json_path.exists():
        record["figures"] = json.loads(json_path.read_text())
    if xml_path.exists():
        record["tests"] = _junit_counts(xml_path)
    if step.name == "preflight" and status == "ok":
        record["figures"] = json.loads(output.strip().splitlines()[-1])
    print(f"{step.name:<28} {status:<28} {record['seconds']:>7.1f} s", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", default="checks,filter,cpu-filter,selection", help="groups or step names")
    parser.add_argument("--pythonpath", default=os.environ.get("PYTHONPATH", ""), help="where the package is")
    parser.add_argument("--baseline-path", help="PYTHONPATH entry of the version to compare with")
    parser.add_argument("--downstream-inputs", default="", help="the .npz of the ssl-downstream step")
    parser.add_argument(
        "--budget", type=float, default=330, help="seconds for all steps: each step's limit is cut to what is left"
    )
    args = parser.parse_args(argv)
    wanted = set(args.steps.split(","))
    steps = [s for s in STEPS if s.group in wanted or s.name in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    failed, no_gpu = [], None
    deadline = time.monotonic() + args.budget
    with tempfile.TemporaryDirectory() as tmp:
        for step in steps:
            if no_gpu and step.group != "cpu-filter":
                report["steps"][step.name] = {"status": f"skipped: {no_gpu}"}
                print(f"{step.name:<28} skipped (no usable GPU)", flush=True)
                continue
            versions = [("current", args.pythonpath)]
            if step.compare and args.baseline_path:
                versions.insert(0, ("baseline", f"{args.baseline_path}:{args.pythonpath}"))
            for label, path in versions:
                env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "ACTIVESSF_VERSION_LABEL": label}
                key = step.name if label == "current" else f"{step.name}@baseline"
                left = deadline - time.monotonic()
                if left < 10:
                    report["steps"][key] = {"status": "not started: the budget is spent"}
                    print(f"{key:<28} not started (budget spent)", flush=True)
                else:
                    limit = min(step.timeout, left)
                    report["steps"][key] = run_step(
                        step, sys.executable, env, args.out / "gpu_check.log", Path(tmp), limit, args.downstream_inputs
                    )
                if report["steps"][key]["status"] != "ok":
                    failed.append(key)
                choice = report["steps"][key].get("figures", {}).get("device_choice", {})
                if step.name == "preflight" and choice.get("kind") != "cuda":
                    no_gpu = choice.get("reason", "the preflight did not finish")
                    report["no_gpu"] = no_gpu
                (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if failed:
        print("FAILED: " + ", ".join(failed), flush=True)
        return 1
    if no_gpu:
        print(f"NO GPU: the GPU steps did not run ({no_gpu})", flush=True)
        return 2
    print("all steps ok", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
