"""Zero-downtime rollout: 8 clients keep predicting while the pipeline's own export
code publishes a new version and while the newest version is deleted again.

Every response is recorded with the version that answered it. Beside the
clients, a monitor polls GetModelStatus; a response counts as valid only if its
version was AVAILABLE at some poll within the request's lifetime (give or take
one poll interval).
"""

import threading
import time
from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2

from pipeline.export import write_export
from pipeline.model import build_model
from serving.store import publish, retire
from tests.helpers.model_server import ServerProcess
from tests.helpers.training import TINY_MODEL, small_windows
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

MODEL_NAME = "jena_temperature"
CLIENTS = 8
POLL_SECONDS = 0.05


def exported_model(windows, directory: Path, seed: int) -> Path:
    keras.utils.set_random_seed(seed)  # a different seed, different weights, a different fingerprint
    write_export(build_model(windows.normalization, TINY_MODEL), windows, {"model_name": MODEL_NAME}, directory)
    return directory


class Traffic:
    """Clients predicting without a version, and a monitor of AVAILABLE versions, until stopped."""

    def __init__(self, port: int, history: np.ndarray, timestamps: np.ndarray):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = MODEL_NAME
        self.request.inputs["history"].CopyFrom(tf.make_tensor_proto(history))
        self.request.inputs["timestamps"].CopyFrom(tf.make_tensor_proto(timestamps))
        self.responses, self.failures, self.available = [], [], []  # (sent, received, version|error)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._monitor))
        for thread in self.threads:
            thread.start()

    def _client(self):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                response = stub.Predict(self.request, timeout=30)
                self.responses.append((sent, time.monotonic(), response.model_spec.version.value))
            except grpc.RpcError as error:
                self.failures.append((sent, time.monotonic(), f"{error.code().name}: {error.details()}"))

    def _monitor(self):
        stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = MODEL_NAME
        while not self.stopping.is_set():
            states = stub.GetModelStatus(request, timeout=10).model_version_status
            now = time.monotonic()
            self.available.append(
                (now, {s.version for s in states if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE})
            )
            time.sleep(POLL_SECONDS)

    def latest_version(self):
        return self.responses[-1][2] if self.responses else None

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.channel.close()

    def versions_not_available_when_served(self) -> list:
        polls = np.array([moment for moment, _ in self.available])
        slack = 2 * POLL_SECONDS + 0.05
        wrong = []
        for sent, received, version in self.responses:
            window = (polls >= sent - slack) & (polls <= received + slack)
            if not any(version in self.available[i][1] for i in np.flatnonzero(window)):
                wrong.append((sent, received, version))
        return wrong


def test_publish_and_rollback_under_load_lose_no_request(tmp_path):
    windows = small_windows()
    versions_dir = tmp_path / "serving" / MODEL_NAME
    first = exported_model(windows, tmp_path / "export-1", seed=1)
    second = exported_model(windows, tmp_path / "export-2", seed=2)
    assert publish(first, versions_dir, keep_versions=5).version == 1

    server = ServerProcess(
        tmp_path,
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={versions_dir}",
        "--file_system_poll_wait_seconds=1",
        rest=False,
    )
    traffic = None
    try:
        history, timestamps = windows.history(windows.starts["test"][:1])
        traffic = Traffic(server.port, history, timestamps)
        wait_for(lambda: traffic.latest_version() == 1, timeout=120, message="version 1 answering")

        assert publish(second, versions_dir, keep_versions=5).version == 2  # the new version
        wait_for(lambda: traffic.latest_version() == 2, timeout=120, message="the switch to version 2")
        switched = len(traffic.responses)

        retire(versions_dir, 2)  # rollback: the newest version is deleted
        wait_for(lambda: traffic.latest_version() == 1, timeout=120, message="the rollback to version 1")
        time.sleep(1)
    finally:
        if traffic is not None:
            traffic.stop()
        server.stop()

    assert traffic.failures == [], traffic.failures[:5]
    served = [version for _, _, version in traffic.responses]
    assert set(served) == {1, 2}
    assert 2 in served[:switched] and served[switched:].count(1) > 0  # the switch and the rollback observed
    assert traffic.versions_not_available_when_served() == []
    assert len(served) > 100
