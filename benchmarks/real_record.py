"""The whole pipeline on the real Jena record, as a new user runs it: the yardstick for every change.

For each seed, copies the repository (its tracked and new files) into a fresh
temporary git + DVC repo, points `data.url` at the given CSV and runs `dvc exp
run -S seed=N` with every other param at its default: download (a local copy),
prepare, window, train, evaluate, export (validation, publication), smoke. It
prints each stage's wall seconds (from the moment DVC starts it to the next),
the whole run's, and the figures: test MAE of the median at +24 h and +1 h,
persistence and climatology at +24 h, the 10-90 % band's coverage over all
hours and at +24 h with its interval, the band's width, the blessing and its
reason, what was published and what smoke checked. With `--refusal` it then
runs `dvc exp run -S evaluate.margin=0.5` in the first copy (a gate no model
passes) and prints its exit code and what export and smoke said.

Targets (issue 18): `dvc repro` exits 0 and publishes version 1; +24 h MAE at
most 2.30 C, +1 h at most 0.50 C, coverage 79-81 % over all hours and at
+24 h; the whole run in at most 2 minutes on our 2-core machine.

    python benchmarks/real_record.py [CSV] [--seeds 42 43] [--refusal] [--keep]

CSV defaults to ../shared/data/jena_real_hourly_2009_2016.csv beside the
repository (present on our machines only; any Jena-format CSV will do).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repository import copy_repository

from serving.store import complete_versions

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO_ROOT.parent / "shared" / "data" / "jena_real_hourly_2009_2016.csv"
STAGE_LINE = re.compile(r"Running stage '(\w+)'")


def timed_run(root: Path, *args) -> tuple[int, dict[str, float], float, str]:
    """Run `dvc <args>` in `root`, echoing its output; (exit code, seconds per stage, total seconds, output)."""
    environment = dict(
        os.environ,
        PYTHONPATH=str(root),
        DVC_NO_ANALYTICS="1",
        PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
    )
    started = time.perf_counter()
    stage_starts, lines = [], []
    with subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
            if match := STAGE_LINE.search(line):
                stage_starts.append((match.group(1), time.perf_counter()))
    total = time.perf_counter() - started
    ends = [moment for _, moment in stage_starts[1:]] + [started + total]
    seconds = {stage: end - begun for (stage, begun), end in zip(stage_starts, ends)}
    return process.returncode, seconds, total, "".join(lines)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def figures(root: Path) -> dict:
    """What the run measured and decided, from its metrics and records."""
    evaluation = read_json(root / "metrics/evaluate.json")
    publication = read_json(root / "models/publication.json")
    smoke = read_json(root / "metrics/smoke.json")
    return {
        "mae_24h": evaluation.get("test_mae_degC"),
        "mae_1h": evaluation.get("test_mae_1h_degC"),
        "persistence_24h": evaluation.get("persistence_mae_degC"),
        "climatology_24h": evaluation.get("climatology_mae_degC"),
        "skill": evaluation.get("skill_vs_persistence"),
        "skill_interval": evaluation.get("skill_interval"),
        "coverage": evaluation.get("band_coverage"),
        "coverage_interval": evaluation.get("band_coverage_interval"),
        "coverage_24h": evaluation.get("band_coverage_final_hour"),
        "band_width": evaluation.get("band_width_degC"),
        "blessed": evaluation.get("blessed"),
        "blessing_reason": evaluation.get("blessing_reason"),
        "published": publication.get("reason"),
        "smoke_checked": smoke.get("checked"),
        "smoke_max_difference": smoke.get("max_abs_difference_degC"),
    }


def report(seed: int, code: int, seconds: dict, total: float, measured: dict) -> None:
    stages = ", ".join(f"{stage} {value:.1f} s" for stage, value in seconds.items())
    print(f"\n=== seed {seed}: exit {code}, {total:.1f} s in all ({stages})")
    for key, value in measured.items():
        shown = (
            f"{value:.4f}"
            if isinstance(value, float)
            else ("[" + ", ".join(f"{part:.4f}" for part in value) + "]" if isinstance(value, list) else value)
        )
        print(f"  {key:22s} {shown}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV, help="a Jena-format CSV (the real record)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    parser.add_argument("--refusal", action="store_true", help="then run with evaluate.margin=0.5 (refused)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repositories")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        parser.error(f"{args.csv}: no such file (give the real record's CSV)")

    scratch = Path(tempfile.mkdtemp(prefix="real-record-"))
    results = []
    try:
        for seed in args.seeds:
            root = scratch / f"seed-{seed}"
            copy_repository(root, {"source": "jena", "url": args.csv.resolve().as_uri()})
            code, seconds, total, _ = timed_run(root, "exp", "run", "-S", f"seed={seed}")
            results.append((seed, code, seconds, total, figures(root)))
        if args.refusal:
            root = scratch / f"seed-{args.seeds[0]}"
            code, seconds, total, output = timed_run(root, "exp", "run", "-S", "evaluate.margin=0.5")
            said = [line for line in output.splitlines() if line.startswith(("export:", "smoke:", "evaluate:"))]
            print(
                f"\n=== refusal (evaluate.margin=0.5): exit {code}, {total:.1f} s; versions now "
                f"{complete_versions(root / 'models/serving/jena_temperature')}"
            )
            print("\n".join(f"  {line}" for line in said))
        for result in results:
            report(*result)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return max(code for _, code, *_ in results)


if __name__ == "__main__":
    sys.exit(main())
