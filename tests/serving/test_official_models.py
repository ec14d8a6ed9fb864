"""TF Serving's test model saved_model_half_plus_two_cpu, over gRPC and REST.

Runs on the model as ``tests/helpers/tfserving_testdata.py`` builds it, and again on TF
Serving's own copy when ``../shared`` has it (the ``testdata`` fixture).
One server per copy, started like TF Serving's integration-test
harness (UNIX socket, channel arguments, REST timeout), plus monitoring and
the gRPC health service.
"""

import json
import math

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.helpers.model_server import ServerProcess, check_predict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(testdata, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("half-plus-two")
    socket_path = log_dir / "tf-serving.sock"
    process = ServerProcess(
        log_dir,
        "--rest_api_timeout_in_ms=5000",
        f"--grpc_socket_path={socket_path}",
        "--model_name=default",
        f"--model_base_path={testdata / 'saved_model_half_plus_two_cpu'}",
        "--grpc_channel_arguments=grpc.so_reuseaddr=1",
        f"--monitoring_config_file={testdata / 'monitoring_config.txt'}",
        "--enable_grpc_healthcheck_service",
    )
    process.socket_path = socket_path
    yield process
    assert process.stop() == 0


def predict_request(values, name="default", signature="", alias="x", dtype=tf.float32, shape=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    array = np.asarray(values)
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(array, dtype=dtype, shape=shape or array.shape))
    return request


def rpc_error(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    return caught.value


def example(**features):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                key: tf.train.Feature(float_list=tf.train.FloatList(value=[value])) for key, value in features.items()
            }
        )
    )


# ---------------------------------------------------------------- REST facts
def test_rest_predict_row_and_columnar_match_tf_serving(server):
    """tensorflow_model_server_test.py::testPredictREST,
    tensorflow_model_server_test.py::testPredictColumnarREST."""
    row = requests.post(f"{server.rest}/v1/models/default:predict", json={"instances": [2.0, 3.0, 4.0]})
    assert row.status_code == 200
    assert row.json() == {"predictions": [3.0, 3.5, 4.0]}
    columnar = requests.post(f"{server.rest}/v1/models/default:predict", json={"inputs": [2.0, 3.0, 4.0]})
    assert columnar.json() == {"outputs": [3.0, 3.5, 4.0]}
    nested = requests.post(f"{server.rest}/v1/models/default/versions/123:predict", json={"instances": [[2.0], [5.0]]})
    assert nested.json() == {"predictions": [[3.0], [4.5]]}


def test_rest_status_matches_tf_serving(server):
    """tensorflow_model_server_test.py::testGetStatusREST."""
    answer = requests.get(f"{server.rest}/v1/models/default")
    assert answer.status_code == 200
    assert answer.json() == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert requests.get(f"{server.rest}/v1/models/default/versions/123").json() == answer.json()


def test_rest_metadata_is_tf_servings_exact_answer(server, testdata):
    """tensorflow_model_server_test.py::testGetModelMetadataREST (compared exactly, not only sorted)."""
    expected = json.loads((testdata / "half_plus_two_model_metadata.json").read_text())
    answer = requests.get(f"{server.rest}/v1/models/default/versions/123/metadata")
    assert answer.status_code == 200
    assert answer.json() == expected


def test_rest_regress_and_classify(server):
    """tensorflow_model_server_test.py::testRegressREST,
    tensorflow_model_server_test.py::testClassifyREST."""
    regress = requests.post(
        f"{server.rest}/v1/models/default:regress",
        json={"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]},
    )
    assert regress.status_code == 200, regress.text
    assert regress.json() == {"results": [3.0, 4.0]}
    for x, y in ((2.0, 3.0), (6.0, 5.0)):
        classify = requests.post(
            f"{server.rest}/v1/models/default:classify",
            json={"signature_name": "classify_x_to_y", "examples": [{"x": x}]},
        )
        assert classify.status_code == 200, classify.text
        assert classify.json() == {"results": [[["", y]]]}


def test_rest_nan_and_infinity_pass_through(server):
    answer = requests.post(
        f"{server.rest}/v1/models/default:predict", data='{"instances": [[NaN], [Infinity], [-Infinity]]}'
    )
    assert answer.status_code == 200
    assert "NaN" in answer.text and "-Infinity" in answer.text
    values = [row[0] for row in json.loads(answer.text)["predictions"]]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


def test_rest_writes_floats_like_tf_serving(server):
    answer = requests.post(f"{server.rest}/v1/models/default:predict", json={"instances": [[0.1], [2.0]]})
    assert answer.text.replace(" ", "").replace("\n", "") == '{"predictions":[[2.05],[3.0]]}'


@pytest.mark.parametrize(
    "method, path, status, wording",
    [
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v1/foo", 400, "Malformed request: GET /v1/foo"),
        ("GET", "/v1/models/default:predict", 400, "Malformed request"),
        ("POST", "/v1/models/default/metadata", 400, "Malformed request"),
        ("POST", "/v1/models/default/versions/18446744073709551615:regress", 400, "Failed to convert version"),
    ],
)
def test_rest_routes_tf_serving_rejects(server, method, path, status, wording):
    answer = requests.request(method, f"{server.rest}{path}", data="{}")
    assert answer.status_code == status
    assert wording in answer.json()["error"]


@pytest.mark.parametrize(
    "path, body, status, wording",
    [
        ("/v1/models/default:predict", "", 400, "JSON Parse error: The document is empty"),
        ("/v1/models/default:predict", "instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
        ("/v1/models/default:predict", '{"signature_name": 100}', 400, "'signature_name' key must be a string value."),
        (
            "/v1/models/default:predict",
            '{"instances": [[1.0], [1.0, 2.0]]}',
            400,
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2",
        ),
        ("/v1/models/default:predict", '{"instances": [1.0', 400, "JSON Parse error"),
        (
            "/v1/models/default:predict",
            '{"instances": ["a"]}',
            400,
            'JSON Value: "a" Type: String is not of expected type: float',
        ),
        ("/v1/models/default:predict", '{"values": [1.0]}', 400, "Missing 'inputs' or 'instances' key"),
        ("/v1/models/missing:predict", '{"instances": [1.0]}', 404, "Servable not found for request: Latest(missing)"),
        (
            "/v1/models/default/versions/7:predict",
            '{"instances": [1.0]}',
            404,
            "Servable not found for request: Specific(default, 7)",
        ),
        (
            "/v1/models/default/labels/nope:predict",
            '{"instances": [1.0]}',
            400,
            "Unrecognized servable version label: nope",
        ),
        (
            "/v1/models/default:predict",
            '{"signature_name": "nope", "instances": [1.0]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
    ],
)
def test_rest_errors_use_tf_serving_codes_and_wording(server, path, body, status, wording):
    answer = requests.post(f"{server.rest}{path}", data=body)
    assert answer.status_code == status
    assert wording in answer.json()["error"]


def test_rest_unknown_model_status_is_not_found(server):
    answer = requests.get(f"{server.rest}/v1/models/missing")
    assert answer.status_code == 404
    assert answer.json() == {"error": "Could not find any versions of model missing"}


# ---------------------------------------------------------------------- gRPC
def test_grpc_predict_as_tf_servings_harness_checks_it(server):
    """tensorflow_model_server_test.py::testPredictSavedModel,
    tensorflow_model_server_test.py::testPredictUDS: a [1] float of 2.0, with and without an output filter,
    answers 3.0 in ``float_val`` from version 123, over TCP and the UNIX socket."""
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        for stub in (server.predict_stub, prediction_service_pb2_grpc.PredictionServiceStub(channel)):
            for output_filter in (("y",), ()):
                check_predict(stub, 3.0, 123, output_filter=output_filter)


def test_grpc_predict_over_tcp_and_unix_socket(server):
    response = server.predict_stub.Predict(predict_request([[1.0], [2.0]]), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5], [3.0]]
    assert response.model_spec.name == "default"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"
    with grpc.insecure_channel(f"unix:{server.socket_path}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request([[4.0]]), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0]]


def test_grpc_output_filter(server):
    request = predict_request([[1.0]])
    request.output_filter.append("y")
    assert list(server.predict_stub.Predict(request, timeout=10).outputs) == ["y"]
    request.output_filter[:] = ["z"]
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "output tensor alias not found in signature: z Outputs expected to be in the set {y}."


def test_grpc_nan_passes_through(server):
    response = server.predict_stub.Predict(predict_request([[float("nan")], [float("inf")]]), timeout=10)
    values = tf.make_ndarray(response.outputs["y"]).ravel()
    assert math.isnan(values[0]) and values[1] == math.inf


def test_grpc_metadata(server, testdata):
    """tensorflow_model_server_test.py::testGetModelMetadata."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    response = server.predict_stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    assert signatures.signature_def["serving_default"].inputs["x"].name == "x:0"
    assert response.model_spec.version.value == 123
    request.metadata_field[:] = ["bogus"]
    error = rpc_error(server.predict_stub.GetModelMetadata, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Metadata field bogus is not supported"


def test_grpc_model_status(server):
    """tensorflow_model_server_test.py::testGetModelStatus."""
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    response = stub.GetModelStatus(request, timeout=10)
    assert [(status.version, status.state, status.status.error_code) for status in response.model_version_status] == [
        (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    ]
    request.model_spec.version.value = 5
    error = rpc_error(stub.GetModelStatus, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Could not find version 5 of model default"


def test_grpc_classify_regress_and_multi_inference(server):
    """tensorflow_model_server_test.py::testClassify,
    tensorflow_model_server_test.py::testRegress,
    tensorflow_model_server_test.py::testMultiInference (on the TF1 model)."""
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "default"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().CopyFrom(example(x=2.0))
    result = server.predict_stub.Classify(classify, timeout=10)
    assert [[c.score for c in classes.classes] for classes in result.result.classifications] == [[3.0]]
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "default",
        "classify_x_to_y",
        123,
    )

    classify.model_spec.signature_name = "nope"
    error = rpc_error(server.predict_stub.Classify, classify)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: nope",
    )

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    regress.input.example_list.examples.add().CopyFrom(example(x=4.0))
    result = server.predict_stub.Regress(regress, timeout=10)
    assert [regression.value for regression in result.result.regressions] == [4.0]
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "default",
        "regress_x_to_y",
        123,
    )

    multi = inference_pb2.MultiInferenceRequest()
    multi.input.example_list.examples.add().CopyFrom(example(x=2.0))
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
    response = server.predict_stub.MultiInference(multi, timeout=10)
    assert len(response.results) == 2
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [
        (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value)
        for result in response.results
    ] == [("default", "regress_x_to_y", 123), ("default", "classify_x_to_y", 123)]


@pytest.mark.parametrize(
    "build, code, wording",
    [
        (
            lambda: predict_request([[1.0]], name="missing"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(missing)",
        ),
        (lambda: predict_request([[1.0]], name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name"),
        (
            lambda: predict_request([[1.0]], alias="z"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input tensor alias not found in signature: z. Inputs expected to be in the set {x}.",
        ),
        (
            lambda: predict_request([[1.0]], dtype=tf.float64),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but double is provided",
        ),
        (
            lambda: predict_request([b"not an Example"], signature="classify_x_to_y", alias="inputs", dtype=tf.string),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Could not parse example input, value: 'not an Example'",
        ),
        (
            lambda: predict_request([[1.0]], signature="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
    ],
)
def test_grpc_predict_errors(server, build, code, wording):
    error = rpc_error(server.predict_stub.Predict, build())
    assert error.code() == code
    assert wording in error.details()


def test_tf1_graph_is_fed_like_tf_servings_session_run(server):
    """No client-side shape check: whatever shape the graph computes with is answered, as in TF Serving."""
    response = server.predict_stub.Predict(predict_request([2.0]), timeout=10)  # [1] into x:0 of [None, 1]
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [3.0]
    response = server.predict_stub.Predict(predict_request([[1.0, 2.0, 3.0]]), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[2.5, 3.0, 3.5]]
    # TF Serving's own REST test: [[1.0, 2.0]] into the [-1, 1] input broadcasts.
    answer = requests.post(f"{server.rest}/v1/models/default:predict", json={"instances": [[1.0, 2.0]]})
    assert (answer.status_code, answer.json()) == (200, {"predictions": [[2.5, 3.0]]})
    answer = requests.post(
        f"{server.rest}/v1/models/default:predict",
        json={"signature_name": "classify_x_to_y", "inputs": {"inputs": [{"b64": "bm90IGFuIEV4YW1wbGU="}]}},
    )
    assert answer.status_code == 400
    assert "Could not parse example input" in answer.json()["error"]


def test_grpc_missing_and_extra_inputs(server):
    request = predict_request([[1.0]])
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    error = rpc_error(server.predict_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sent extra: {extra}" in error.details()
    missing = predict_pb2.PredictRequest()
    missing.model_spec.name = "default"
    error = rpc_error(server.predict_stub.Predict, missing)
    assert "Missing but required: {x}" in error.details()


def test_health_service_and_metrics(server):
    """tensorflow_model_server_test.py::testPrometheusEndpoint (``# TYPE`` lines), and the health service."""
    health = health_pb2_grpc.HealthStub(server.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService"), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    metrics = requests.get(f"{server.rest}/monitoring/prometheus/metrics")
    assert metrics.status_code == 200
    assert "# TYPE :tensorflow:serving:request_count counter" in metrics.text
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in metrics.text
    assert ":tensorflow:serving:request_latency_bucket" in metrics.text


def test_server_survives_garbage(server):
    garbage = predict_pb2.PredictRequest()
    garbage.model_spec.name = "default"
    garbage.inputs["x"].dtype = tf.float32.as_datatype_enum
    garbage.inputs["x"].tensor_shape.dim.add(size=3)
    garbage.inputs["x"].tensor_content = b"\x00\x01"  # 2 bytes for 3 floats
    error = rpc_error(server.predict_stub.Predict, garbage)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    huge = predict_pb2.PredictRequest()
    huge.model_spec.name = "default"
    huge.inputs["x"].dtype = tf.float32.as_datatype_enum
    huge.inputs["x"].tensor_shape.dim.add(size=10**12)
    huge.inputs["x"].tensor_shape.dim.add(size=1)
    error = rpc_error(server.predict_stub.Predict, huge)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x")
    assert requests.post(f"{server.rest}/v1/models/default:predict", data=b"\xff\xfe").status_code == 400
    assert requests.post(f"{server.rest}/v1/models/default:predict", json=[1, 2]).status_code == 400
    response = server.predict_stub.Predict(predict_request([[2.0]]), timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[3.0]]
