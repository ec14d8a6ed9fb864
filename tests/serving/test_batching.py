"""--enable_batching: concurrent requests merged into one model call; a full queue answers UNAVAILABLE."""

import concurrent.futures
import shutil
import signal

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
)

from tests.helpers.model_server import ServerProcess

pytestmark = pytest.mark.slow

BATCHING_PARAMETERS = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 200000 }
max_enqueued_batches { value: 2 }
num_batch_threads { value: 1 }
"""


@pytest.fixture(scope="module")
def server(model_factory, tmp_path_factory):
    directory = tmp_path_factory.mktemp("batching")
    base = directory / "probe"
    base.mkdir()
    shutil.copytree(model_factory("batch_probe", 1.0), base / "1")
    parameters = directory / "batching.config"
    parameters.write_text(BATCHING_PARAMETERS)
    process = ServerProcess(
        directory,
        "--model_name=probe",
        f"--model_base_path={base}",
        "--enable_batching",
        f"--batching_parameters_file={parameters}",
        rest=False,
    )
    yield process
    assert process.stop(signal_number=signal.SIGINT) == 0  # Ctrl-C stops as cleanly as SIGTERM
    assert "ModelServer stopped." in process.log_text()


def call(server, rows: int, signature: str = ""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "probe"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones([rows, 1], np.float32)))
    response = server.predict_stub.Predict(request, timeout=60)
    return tf.make_ndarray(next(iter(response.outputs.values())))


def test_concurrent_requests_are_merged_and_split_back(server):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda rows: call(server, rows), [1, 1, 1, 1, 1, 1, 2]))
    assert [answer.shape for answer in answers] == [(1, 1)] * 6 + [(2, 1)]
    batch_sizes = [float(answer[0][0]) for answer in answers]
    assert max(batch_sizes) >= 4, batch_sizes  # several requests ran as one model call
    assert all(size in (1, 2, 3, 4, 5, 6, 7, 8) for size in batch_sizes)


def test_oversized_task_is_rejected(server):
    with pytest.raises(grpc.RpcError) as caught:
        call(server, 9)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Task size 9 is larger than maximum input batch size 8" in caught.value.details()


def test_full_queue_answers_unavailable(server):
    def attempt(_):
        try:
            call(server, 1, "slow")
            return "OK"
        except grpc.RpcError as error:
            return (error.code(), error.details())

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(attempt, range(48)))
    refused = [outcome for outcome in outcomes if outcome != "OK"]
    assert outcomes.count("OK") >= 8
    assert refused, "expected some requests to find the queue full"
    assert set(refused) == {
        (grpc.StatusCode.UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full")
    }
    assert call(server, 1).shape == (1, 1)  # still serving afterwards


def test_the_asynchronous_server_answers_every_service_and_error_as_the_threaded_one(server):
    """With batching the gRPC server runs on an event loop; the other RPCs and the errors must not change."""
    status = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="probe")), timeout=10
    )
    assert [(entry.version, entry.state) for entry in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    ]

    metadata = server.predict_stub.GetModelMetadata(
        get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_pb2.ModelSpec(name="probe"), metadata_field=["signature_def"]
        ),
        timeout=10,
    )
    assert metadata.model_spec.version.value == 1

    def predict_error(name="probe", alias="x", signature=""):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(np.ones([1, 1], np.float32)))
        with pytest.raises(grpc.RpcError) as caught:
            server.predict_stub.Predict(request, timeout=10)
        return caught.value.code(), caught.value.details()

    assert predict_error(name="missing") == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(missing)",
    )
    assert predict_error(signature="nope") == (
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    )
    assert predict_error(alias="z") == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input tensor alias not found in signature: z. Inputs expected to be in the set {x}.",
    )
    assert call(server, 1).shape == (1, 1)
