"""Seconds per training epoch and the wall time of `dvc repro`, on full-size synthetic data.

Copies the repository (its tracked and new files) into a temporary git + DVC
repo with `data.source: synthetic` and the default range (2009-2017, about
70,000 hours), then:

1. `dvc repro window`: the data stages, from nothing to the windows;
2. seconds per epoch of the default model and params, timed in-process over
   a few epochs (the first includes building the graph, so it is shown apart);
3. `dvc repro evaluate`: the train and evaluate stages with the default params.

Targets on a 2-core machine: at most 20 s per epoch; steps 1 and 3 together
(the default `dvc repro` from raw data to the evaluated model) under 8 minutes.

    python benchmarks/train_benchmark.py [--epochs 3] [--keep]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import yaml

from pipeline.train import train
from pipeline.window import load_windows

REPO_ROOT = Path(__file__).resolve().parents[1]


def copy_repository(destination: Path) -> None:
    """The repository's files as git sees them (tracked and untracked, not ignored), committed afresh."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)
    params_file = destination / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["data"]["source"] = "synthetic"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    identity = ["-c", "user.name=benchmark", "-c", "user.email=benchmark@example.com"]
    for command in (["init", "-q"], [*identity, "add", "-A"], [*identity, "commit", "-q", "-m", "benchmark"]):
        subprocess.run(["git", *command], cwd=destination, check=True)


def timed_dvc(root: Path, *args) -> float:
    """Run `dvc <args>` in `root`, streaming its output; return its wall seconds."""
    environment = dict(os.environ, PYTHONPATH=str(root),
                       PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=environment, check=True)
    return time.perf_counter() - started


class EpochTimer(keras.callbacks.Callback):
    """Records the wall seconds of each epoch, validation included."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def epoch_seconds(root: Path, epochs: int) -> list[float]:
    """Wall seconds of each of `epochs` training epochs with the default params."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["epochs"] = epochs
    params["train"]["patience"] = epochs  # time every epoch, whatever the validation MAE does
    timer = EpochTimer()
    train(load_windows(root / "data" / "windows"), params, callbacks=[timer], verbose=2)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs to time in-process (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository and print its path")
    arguments = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="train-benchmark-"))
    try:
        root = scratch / "repo"
        copy_repository(root)
        data_seconds = timed_dvc(root, "repro", "window")
        seconds = epoch_seconds(root, arguments.epochs)
        model_seconds = timed_dvc(root, "repro", "evaluate")
        metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    finally:
        if arguments.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    later = seconds[1:] or seconds
    print(f"\nepoch 1 (with graph building): {seconds[0]:6.1f} s")
    print(f"later epochs, mean:            {sum(later) / len(later):6.1f} s   (target <= 20 s)")
    print(f"dvc repro window (data):       {data_seconds:6.1f} s")
    print(f"dvc repro evaluate (model):    {model_seconds:6.1f} s")
    print(f"raw data to evaluated model:   {data_seconds + model_seconds:6.1f} s   (target < 480 s)")
    print(f"test MAE {metrics['test_mae_degC']:.3f} C, persistence {metrics['persistence_mae_degC']:.3f} C, "
          f"climatology {metrics['climatology_mae_degC']:.3f} C, skill {metrics['skill_vs_persistence']:.1%}")


if __name__ == "__main__":
    main()
