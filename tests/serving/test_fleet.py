"""A fleet on one s3:// base path: two replicas read it directly, one through serving.sync (the S3 overlay).

8 clients predict through all three replicas while the pipeline's publisher
(serving.store, as the export stage runs it) publishes version 2 and while it
retires version 2 again at the source: no request may fail, every replica must end
on the same version, and the publish-to-all-serving times are printed.
"""

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tensorflow_serving.apis import get_model_status_pb2

from serving.store import publish, retire
from tests.helpers.model_server import ServerProcess, served_version, statuses
from tests.helpers.object_storage import os_environment_with
from tests.helpers.repository import REPO_ROOT
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow
POLL_SECONDS = 1
CLIENTS = 8
END = get_model_status_pb2.ModelVersionStatus.END


class FleetClients:
    """Client threads, each sending Predict to every replica in turn; records failures and versions seen."""

    def __init__(self, replicas, threads: int = CLIENTS):
        self.replicas, self.failures, self.count = replicas, [], 0
        self.versions = {index: set() for index in range(len(replicas))}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(offset,), daemon=True) for offset in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, offset: int):
        turn = offset
        while not self._stop.is_set():
            index = turn % len(self.replicas)
            turn += 1
            try:
                version, value = served_version(self.replicas[index].predict_stub)
                assert value == float(version), (version, value)  # model v multiplies by v
                self.versions[index].add(version)
            except Exception as error:  # recorded, asserted on below
                self.failures.append((index, repr(error)))
            self.count += 1

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def seconds_until_all_serve(replicas, version: int, timeout: float = 60) -> float:
    started = time.monotonic()
    wait_for(
        lambda: all(served_version(replica.predict_stub)[0] == version for replica in replicas),
        timeout=timeout,
        interval=0.05,
        message=f"every replica serving version {version}",
    )
    return time.monotonic() - started


def test_fleet_switches_versions_together_without_failed_requests(s3_server, model_factory, tmp_path):
    base = s3_server.create_bucket("models") + "/linear"
    assert publish(model_factory("linear", 1.0), base, keep_versions=5).version == 1
    version_two = model_factory("linear", 2.0)
    synced = tmp_path / "synced"
    sync_log = open(tmp_path / "sync.log", "w")
    sync = subprocess.Popen(
        [sys.executable, "-m", "serving.sync", base, str(synced), f"--poll_seconds={POLL_SECONDS}"],
        cwd=REPO_ROOT,
        env=os_environment_with(s3_server),
        stderr=sync_log,
    )
    replicas = []
    try:
        wait_for(lambda: (synced / "1" / "saved_model.pb").exists(), timeout=30, message="sync mirrors version 1")
        paths = [base, base, str(synced)]
        with ThreadPoolExecutor(3) as starting:
            replicas = list(
                starting.map(
                    lambda path: ServerProcess(
                        tmp_path,
                        "--model_name=linear",
                        f"--model_base_path={path}",
                        f"--file_system_poll_wait_seconds={POLL_SECONDS}",
                        rest=False,
                    ),
                    paths,
                )
            )
        clients = FleetClients(replicas)
        try:
            assert seconds_until_all_serve(replicas, 1) < 5

            started = time.monotonic()
            assert publish(version_two, base, keep_versions=5).version == 2  # saved_model.pb last
            publish_seconds = time.monotonic() - started
            rollout_seconds = seconds_until_all_serve(replicas, 2)
            rollback_started = time.monotonic()
            retire(base, 2)  # saved_model.pb first
            delete_seconds = time.monotonic() - rollback_started
            rollback_seconds = seconds_until_all_serve(replicas, 1)
            for replica in replicas:
                wait_for(
                    lambda replica=replica: statuses(replica).get(2, (None,))[0] == END, message="version 2 unloaded"
                )
        finally:
            clients.stop()
        print(
            f"\nfleet of 3 (2 direct s3://, 1 via serving.sync), poll {POLL_SECONDS} s, {CLIENTS} clients, "
            f"{clients.count} requests: publish v2 {publish_seconds:.2f} s, publish-to-all-serving "
            f"{rollout_seconds:.2f} s; delete v2 {delete_seconds:.2f} s, delete-to-all-back-on-v1 "
            f"{rollback_seconds:.2f} s"
        )
        assert clients.failures == []
        assert all({1, 2} <= seen for seen in clients.versions.values()), clients.versions
        assert [served_version(replica.predict_stub) for replica in replicas] == [(1, 1.0)] * 3
        assert rollout_seconds < 30 and rollback_seconds < 30
    finally:
        for replica in replicas:
            replica.stop()
        sync.send_signal(signal.SIGTERM)
        assert sync.wait(timeout=30) == 0
        sync_log.close()
