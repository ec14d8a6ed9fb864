"""Queued experiments publishing into one shared s3:// base path at once: distinct versions, never a clash.

`dvc queue start -j 2` spawns detached workers that inherit the environment of
the process that starts them (dvc.daemon copies os.environ), and each runs its
experiment's `dvc repro` in a temporary workspace with that environment; so the
AWS_* variables set for moto here reach the export stages, as a CI job's do.
"""

import json
import time

import fsspec
import pytest

from conftest import set_params
from pipeline import store

pytestmark = pytest.mark.slow

# A tiny, quick model; the blessing and its re-check pass for both (the gate has its own tests).
QUICK = {
    "epochs": 1,
    "window.lookback_hours": 24, "window.horizon_hours": 6,
    "model.layers": 1, "model.units": 4, "train.batch_size": 64, "train.learning_rate": 0.01,
    "evaluate.margin": -1.0, "evaluate.tolerance": 100.0,
}
QUEUE_SECONDS = 900


def wait_for_queue(repo) -> str:
    """Poll `dvc queue status` until nothing is queued or running; returns the last status."""
    deadline = time.monotonic() + QUEUE_SECONDS
    while True:
        status = repo.dvc("queue", "status").stdout
        if not any(state in status for state in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"queue still busy after {QUEUE_SECONDS} s:\n{status}"
        time.sleep(3)


def test_two_queued_experiments_publish_two_distinct_versions_to_s3(pipeline_repo, s3_server):
    base_path = f"{s3_server.create_bucket('models')}/serving"
    set_params(pipeline_repo.root / "params.yaml", {**QUICK, "serving.base_path": base_path})
    pipeline_repo.dvc("repro", "window")  # data in the shared cache: the experiments restore it, not recompute
    pipeline_repo.run("git", "add", "-A")
    pipeline_repo.run("git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "s3")

    for epochs in (1, 2):
        pipeline_repo.dvc("exp", "run", "--queue", "-S", f"epochs={epochs}", "export")
    try:
        pipeline_repo.dvc("queue", "start", "-j", "2")
        status = wait_for_queue(pipeline_repo)
    finally:
        pipeline_repo.dvc("queue", "stop", "--kill", check=False)
    assert status.count("Success") == 2, status

    url = f"{base_path}/jena_temperature"
    assert store.complete_versions(url) == [1, 2]
    fs, root = fsspec.core.url_to_fs(url)
    cards = [json.loads(fs.cat_file(f"{root}/{version}/assets.extra/model_card.json")) for version in (1, 2)]
    assert sorted(card["params"]["epochs"] for card in cards) == [1, 2]
    outcomes = [json.loads(fs.cat_file(f"{root}/.publications/{n}.outcome"))["outcome"] for n in (1, 2)]
    assert outcomes == ["published", "published"]
    assert fs.find(f"{root}/.publications") == sorted(
        f"{root}/.publications/{n}.{kind}" for n in (1, 2) for kind in ("alive", "claim", "complete", "outcome"))


    # each experiment's models/publication.json, as committed in its experiment ref
    refs = pipeline_repo.run("git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
    records = [json.loads(pipeline_repo.run("git", "show", f"{ref}:models/publication.json").stdout)
               for ref in refs if ref.count("/") == 4]
    assert sorted((record["published"], record["version"], record["path"]) for record in records) == [
        (True, 1, f"{url}/1"), (True, 2, f"{url}/2")]
    claims = [json.loads(fs.cat_file(f"{root}/.publications/{n}.claim"))["started"] for n in (1, 2)]
    completes = [json.loads(fs.cat_file(f"{root}/.publications/{n}.complete"))["at"] for n in (1, 2)]
    print(f"claims at +0 s and +{claims[1] - claims[0]:.1f} s; version 1 complete at +{completes[0] - claims[0]:.1f} s, "
          f"version 2 at +{completes[1] - claims[0]:.1f} s")
