"""Queued experiments publishing into one shared s3:// base path at once: distinct versions, never a clash.

Both experiments' publications are held at the same moment behind a third
(ours) so that they certainly overlap, whatever the machine's speed.

`dvc queue start -j 2` spawns detached workers that inherit the environment of
the process that starts them (dvc.daemon copies os.environ), and each runs its
experiment's `dvc repro` in a temporary workspace with that environment; so the
AWS_* variables set for moto here reach the export stages, as a CI job's do.
"""

import json
import os
import socket
import subprocess
import sys
import time

import fsspec
import pytest

from serving import store
from tests.helpers.repository import QUICK_PARAMS, set_params

pytestmark = pytest.mark.slow

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


def start_queue(repo, workers: int) -> None:
    """`dvc queue start -j N`, its output to a file: the detached workers inherit the starter's output,
    and capturing it through a pipe (as `repo.run` does) would only return once they exit."""
    environment = dict(
        os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PYTHONPATH=str(repo.root)
    )
    log_path = repo.root.parent / "queue-start.log"
    with open(log_path, "w") as log:
        started = subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "-j", str(workers)],
            cwd=repo.root,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert started.returncode == 0, log_path.read_text()


def wait_for_records(repo, fs, root: str, names: list[str]) -> list[str]:
    """Poll the store until publication records `names` (e.g. `2.claim`) exist; returns the records present
    then. Fails at once if the queue finishes without them (an experiment that failed or was not blessed):
    `dvc queue status` is a DVC process, so it is asked every 10 s, the store twice a second."""
    deadline = time.monotonic() + QUEUE_SECONDS
    next_status = time.monotonic() + 10
    while True:
        fs.invalidate_cache()
        records = [path.rsplit("/", 1)[1] for path in fs.find(f"{root}/.publications")]
        if set(names) <= set(records):
            return records
        if time.monotonic() > next_status:
            status = repo.dvc("queue", "status").stdout
            assert "Queued" in status or "Running" in status, f"queue done, records {records}:\n{status}"
            next_status = time.monotonic() + 10
        assert time.monotonic() < deadline, f"no records {names} after {QUEUE_SECONDS} s: {records}"
        time.sleep(0.5)


def test_two_queued_experiments_publish_two_distinct_versions_to_s3(pipeline_repo, s3_server):
    base_path = f"{s3_server.create_bucket('models')}/serving"
    set_params(pipeline_repo.root / "params.yaml", {**QUICK_PARAMS, "serving.base_path": base_path})
    pipeline_repo.dvc("repro", "window")  # data in the shared cache: the experiments restore it, not recompute
    pipeline_repo.commit("s3")

    url = f"{base_path}/jena_temperature"
    fs, root = fsspec.core.url_to_fs(url)
    # A publication of ours (number 1, this live process) holds both experiments at the gate, so
    # that their publications are certainly in flight at the same time; then it settles.
    fs.pipe_file(
        f"{root}/.publications/1.claim",
        json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "token": "test", "started": time.time()}
        ).encode(),
    )

    for epochs in (1, 2):
        pipeline_repo.dvc("exp", "run", "--queue", "-S", f"epochs={epochs}", "export")
    try:
        start_queue(pipeline_repo, workers=2)
        waiting = wait_for_records(pipeline_repo, fs, root, ["2.claim", "3.claim"])
        fs.pipe_file(f"{root}/.publications/1.outcome", json.dumps({"outcome": "abandoned"}).encode())
        wait_for_records(pipeline_repo, fs, root, ["2.outcome", "3.outcome"])
        status = wait_for_queue(pipeline_repo)
    finally:
        pipeline_repo.dvc("queue", "stop", "--kill", check=False)
    assert status.count("Success") == 2, status
    assert not {"2.outcome", "3.outcome"} & set(waiting)  # both were waiting, undecided, at once

    assert store.complete_versions(url) == [2, 3]
    cards = [json.loads(fs.cat_file(f"{root}/{version}/assets.extra/model_card.json")) for version in (2, 3)]
    assert sorted(card["params"]["epochs"] for card in cards) == [1, 2]
    outcomes = [json.loads(fs.cat_file(f"{root}/.publications/{n}.outcome"))["outcome"] for n in (2, 3)]
    assert outcomes == ["published", "published"]

    # each experiment's models/publication.json, as committed in its experiment ref
    refs = pipeline_repo.run("git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
    records = [
        json.loads(pipeline_repo.run("git", "show", f"{ref}:models/publication.json").stdout)
        for ref in refs
        if ref.count("/") == 4
    ]
    assert sorted((record["published"], record["version"], record["path"]) for record in records) == [
        (True, 2, f"{url}/2"),
        (True, 3, f"{url}/3"),
    ]
