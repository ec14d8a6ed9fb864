"""Shared test fixtures: small hand-made Jena readings and CSV text."""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import schema, synthetic

REPO_ROOT = Path(__file__).resolve().parents[1]

# Keep TensorFlow quiet and on the CPU in every test and every stage it starts.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def make_readings(start="2020-01-01 00:10", periods=6 * 48, seed=0) -> pd.DataFrame:
    """10-minute readings with plausible values and a smooth daily temperature cycle."""
    rng = np.random.default_rng(seed)
    stamps = pd.date_range(start, periods=periods, freq="10min")
    hours = np.arange(periods) / 6
    readings = pd.DataFrame({schema.DATE_COLUMN: stamps})
    for name in schema.MEASUREMENTS:
        readings[name] = np.round(rng.uniform(1, 2, periods), 2)
    readings[schema.PRESSURE] = np.round(990 + rng.normal(0, 1, periods), 2)
    readings[schema.TEMPERATURE] = np.round(10 + 5 * np.sin(2 * np.pi * hours / 24), 2)
    readings[schema.WIND_DIRECTION] = np.round(rng.uniform(0, 360, periods), 2)
    return readings


def to_csv_text(readings: pd.DataFrame) -> str:
    """The readings in the Jena file's exact text format (the synthetic writer's)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / schema.CSV_NAME
        synthetic.write_jena_csv(readings, path)
        return path.read_text()


@pytest.fixture
def readings():
    return make_readings()


def run_stage(module: str, cwd: Path, timeout=600, environment: dict | None = None):
    """Run `python -m pipeline.<module>` in `cwd` as DVC would, with `environment` added."""
    import subprocess

    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(environment or {})}
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{module}"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


def set_params(params_file: Path, overrides: dict) -> None:
    """Set dotted keys (`data.source`) in a params.yaml, keeping the rest."""
    import yaml

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
        import subprocess

        bin_dir = str(Path(sys.executable).parent)
        environment = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], PYTHONPATH=str(self.root))
        result = subprocess.run(args, cwd=self.root, env=environment, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args, **kwargs):
        return self.run(sys.executable, "-m", "dvc", *args, **kwargs)


@pytest.fixture
def pipeline_repo(tmp_path) -> PipelineRepo:
    """This repository's tracked and new files, committed in a fresh git repo, on small synthetic data."""
    import shutil
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    root = tmp_path / "repo"
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    set_params(root / "params.yaml", SMALL_SYNTHETIC_PARAMS)
    repo = PipelineRepo(root)
    repo.run("git", "init", "-q", "-b", "main")
    repo.run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "add", "-A")
    repo.run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "copy")
    return repo


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 on 127.0.0.1, this process's clients pointed at it; `.create_bucket(name)` -> `s3://name`."""
    from tests.object_storage import S3Server, apply_environment, forget_clients

    server = S3Server().start()
    apply_environment(monkeypatch, server)
    yield server
    server.close()
    forget_clients()


@pytest.fixture
def gcs_server(monkeypatch):
    """gcp-storage-emulator on 127.0.0.1, this process's clients pointed at it; `.create_bucket(name)` -> `gs://name`."""
    from tests.object_storage import GcsServer, apply_environment, forget_clients

    server = GcsServer().start()
    apply_environment(monkeypatch, server)
    yield server
    server.close()
    forget_clients()


@pytest.fixture(params=["s3", "gs"])
def object_store(request):
    """Each store in turn: the test runs once on S3 and once on GCS."""
    return request.getfixturevalue({"s3": "s3_server", "gs": "gcs_server"}[request.param])
