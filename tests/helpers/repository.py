"""This repository as the tests run it: its root, its stages as processes, and throwaway DVC copies.

`run_stage` runs `python -m pipeline.<stage>` in a directory as DVC would;
`set_params` changes dotted keys of a params.yaml; `copy_repository` makes a
fresh git repository of this checkout's files (by default on
`SMALL_SYNTHETIC_PARAMS`), in which a `PipelineRepo` runs `dvc` and `git`. `QUICK_PARAMS` make its model
tiny and always blessed, for tests of what happens around training.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_USER = ("-c", "user.name=test", "-c", "user.email=test@example.com")

SMALL_SYNTHETIC_PARAMS = {
    "data.source": "synthetic",
    "data.synthetic_start": "2009-01-01",
    "data.synthetic_end": "2009-03-01",
}

# A tiny model trained quickly and always blessed (the blessing has its own tests): for tests of
# what happens around training (DVC, publication, serving), not of its quality.
QUICK_PARAMS = {
    "epochs": 1,
    "window.lookback_hours": 24,
    "window.horizon_hours": 6,
    "model.layers": 1,
    "model.units": 4,
    "train.batch_size": 64,
    "train.learning_rate": 0.01,
    "evaluate.margin": -1.0,
    "evaluate.tolerance": 100.0,
    "evaluate.coverage_goal": [0.0, 1.0],
}


def run_stage(module: str, cwd: Path, timeout=600, environment: dict | None = None):
    """Run `python -m pipeline.<module>` in `cwd` as DVC would, with `environment` added."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(environment or {})}
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def set_params(params_file: Path, overrides: dict) -> None:
    """Set dotted keys (`data.source`) in a params.yaml, keeping the rest."""
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = params
        for key in parents:
            section = section[key]
        section[leaf] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


class PipelineRepo:
    """A throwaway git + DVC copy of this repository in which tests run `dvc`."""

    def __init__(self, root: Path):
        self.root = root

    def run(self, *args, check=True, timeout=900):
        bin_dir = str(Path(sys.executable).parent)
        environment = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], PYTHONPATH=str(self.root))
        result = subprocess.run(args, cwd=self.root, env=environment, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args, **kwargs):
        return self.run(sys.executable, "-m", "dvc", *args, **kwargs)

    def commit(self, message: str) -> None:
        """Commit everything in the work tree."""
        self.run("git", *GIT_USER, "add", "-A")
        self.run("git", *GIT_USER, "commit", "-q", "-m", message)


def copy_repository(root: Path, params: dict = SMALL_SYNTHETIC_PARAMS) -> PipelineRepo:
    """This checkout's tracked and new files, committed in a fresh git repo at `root`, with `params` (dotted
    keys) set in its params.yaml: by default small synthetic data. The benchmarks that run DVC use it too."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    set_params(root / "params.yaml", params)
    repo = PipelineRepo(root)
    repo.run("git", "init", "-q", "-b", "main")
    repo.commit("copy")
    return repo


def quick(repo: PipelineRepo) -> Path:
    """The copy's params set for a tiny, quick model (`QUICK_PARAMS`), committed; returns the watched directory."""
    set_params(repo.root / "params.yaml", QUICK_PARAMS)
    repo.commit("quick")
    return repo.root / "models/serving/jena_temperature"
