"""The fault catalogue, run again and again on a busy machine: does it ever lose a request or serve a bad version?

Runs ``tests/serving/test_faults.py::test_fault_catalogue_loses_no_request``
``--runs`` times in a row (one pytest process at a time), while
``--burners`` background processes each keep one core busy, so that loads,
polls and deletions interleave as they do on a loaded machine. Each run is
bounded by ``--run-timeout`` seconds and the burners by the whole budget;
they are stopped when the runs end. Prints one line per run (outcome,
seconds, the test's own figures) and then the failure count; exits 1 if
any run failed.

Run: .venv/bin/python benchmarks/fault_catalogue_repeat.py [--runs 20] [--burners 1]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/serving/test_faults.py::test_fault_catalogue_loses_no_request"
# Spins until its deadline: a CPU-bound process that ends by itself even if this script is killed.
BURNER = "import sys, time\ndeadline = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < deadline:\n pass"


def run_once(run_timeout: float) -> tuple[bool, float, str]:
    """(passed, seconds, the test's figures line or the failure's last lines) for one run of the test."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=run_timeout,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started, f"timed out after {run_timeout:.0f} s"
    seconds = time.monotonic() - started
    lines = result.stdout.splitlines()
    figures = next((line for line in lines if line.startswith("fault catalogue:")), "")
    if result.returncode == 0:
        return True, seconds, figures
    failure = [line for line in lines if line.startswith(("E ", "FAILED"))][-3:]
    return False, seconds, " | ".join([figures, *failure]).strip(" |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burners", type=int, default=1, help="CPU-burning background processes")
    parser.add_argument("--run-timeout", type=float, default=300, help="seconds one run may take")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.burners < 0 or args.run_timeout <= 0:
        parser.error("--runs must be >= 1, --burners >= 0 and --run-timeout > 0")

    budget = args.runs * args.run_timeout
    burners = [subprocess.Popen([sys.executable, "-c", BURNER, str(budget)]) for _ in range(args.burners)]
    failures, durations = 0, []
    try:
        for run in range(1, args.runs + 1):
            passed, seconds, detail = run_once(args.run_timeout)
            failures += not passed
            durations.append(seconds)
            print(
                f"run {run:2d}/{args.runs}: {'passed' if passed else 'FAILED'} in {seconds:.0f} s  {detail}", flush=True
            )
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    print(
        f"fault catalogue x{args.runs} with {args.burners} CPU burner(s): {failures} failed, "
        f"{args.runs - failures} passed; {min(durations):.0f}-{max(durations):.0f} s per run, "
        f"{sum(durations) / 60:.1f} min in all"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
