"""A DVC remote on S3 shares the pipeline's outputs: a second clone pulls them and `dvc repro` runs nothing.

In a temporary copy of the repository on a small synthetic range with a tiny
model, `dvc repro` runs the whole pipeline; the README's commands add an S3
remote (`dvc remote add -d`, `dvc remote modify ... endpointurl` for an
S3-compatible store, here moto's server on 127.0.0.1) and `dvc push` uploads
data and model. A `git clone` of that repository starts with an empty cache,
`dvc pull`s everything from the remote, and then finds every stage up to date.
"""

import hashlib
import re

import boto3
import pytest

from tests.helpers.repository import REPO_ROOT, quick

pytestmark = pytest.mark.slow
BUCKET = "wetterfrosch-dvc"
# The outputs a rerun would otherwise recompute: data, trained model and SavedModel.
PULLED = [
    "data/raw/jena_climate_2009_2016.csv",
    "data/prepared/hourly.parquet",
    "data/windows",
    "models/model.keras",
    "models/export",
]


def digest(path) -> str:
    """One hash of a file, or of a directory's relative names and contents."""
    files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
    hasher = hashlib.sha256()
    for item in files:
        hasher.update(str(item.relative_to(path) if path.is_dir() else item.name).encode())
        hasher.update(item.read_bytes())
    return hasher.hexdigest()


def test_second_clone_pulls_outputs_from_s3_and_reruns_nothing(pipeline_repo, s3_server, monkeypatch, tmp_path):
    # Only the remote's committed endpointurl leads DVC to the store, as with MinIO & co.;
    # credentials stay in the standard variables, never in .dvc/config.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3_server.create_bucket(BUCKET)
    quick(pipeline_repo)
    pipeline_repo.dvc("remote", "add", "-d", "storage", f"s3://{BUCKET}/wetterfrosch")
    pipeline_repo.dvc("remote", "modify", "storage", "endpointurl", s3_server.endpoint_url)
    first = pipeline_repo.dvc("repro")
    assert "Running stage 'smoke'" in first.stdout, first.stdout
    pipeline_repo.commit("pipeline run and remote")  # dvc.lock, the remote, the cache: false metrics and records
    config = (pipeline_repo.root / ".dvc/config").read_text()
    assert s3_server.endpoint_url in config and "access_key" not in config, config

    pushed = pipeline_repo.dvc("push")
    assert "pushed" in pushed.stdout, pushed.stdout
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    stored = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert stored and all(key.startswith("wetterfrosch/files/md5/") for key in stored), stored

    clone_root = tmp_path / "clone"
    pipeline_repo.run("git", "clone", "-q", str(pipeline_repo.root), str(clone_root))
    clone = type(pipeline_repo)(clone_root)
    assert not (clone_root / ".dvc/cache").exists() and not (clone_root / "models/model.keras").exists()
    clone.dvc("pull")
    assert (clone_root / ".dvc/cache").is_dir()
    for output in PULLED:
        assert digest(clone_root / output) == digest(pipeline_repo.root / output), output

    status = clone.dvc("status")
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    rerun = clone.dvc("repro")
    assert "Running stage" not in rerun.stdout, rerun.stdout
    assert "Stage 'smoke' didn't change, skipping" in rerun.stdout, rerun.stdout


def test_readme_and_ci_workflow_show_the_commands_this_test_runs():
    for path in ("README.md", ".github/workflows/pipeline.yml"):
        text = (REPO_ROOT / path).read_text()
        assert re.search(r"dvc remote add (--local )?-d storage \S+", text), path
        assert re.search(r"dvc remote modify (--local )?storage endpointurl", text), path
        assert "dvc pull" in text and "dvc push" in text, path
