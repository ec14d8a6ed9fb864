"""Model config files: version policy, labels, TF1 models, warm-up, reload by RPC and by polling.

Runs on TF Serving's test models as generated here, and on its own copies when ``../shared`` has them.
"""

import json
import subprocess
import sys

import grpc
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2

from tests.helpers.model_server import ServerProcess
from tests.helpers.repository import REPO_ROOT
from tests.helpers.tfserving_testdata import good_config_text
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

TWO_VERSIONS_CONFIG = """
model_config_list {{
  config {{
    name: "two"
    base_path: "{two}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }}
    version_labels {{ key: "canary" value: 124 }}
  }}
  config {{ name: "three" base_path: "{three}" model_platform: "tensorflow" }}
}}
"""


@pytest.fixture(scope="module")
def server(testdata, tmp_path_factory):
    directory = tmp_path_factory.mktemp("config")
    config_path = directory / "models.config"
    config_path.write_text(
        TWO_VERSIONS_CONFIG.format(
            two=testdata / "saved_model_half_plus_two_2_versions", three=testdata / "saved_model_half_plus_three"
        )
    )
    process = ServerProcess(directory, f"--model_config_file={config_path}", "--model_config_file_poll_wait_seconds=1")
    process.config_path = config_path
    yield process
    assert process.stop() == 0


def predict(server, name, version=None, label=None, x=1.0):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[x]], dtype=tf.float32))
    response = server.predict_stub.Predict(request, timeout=10)
    return response.model_spec.version.value, float(tf.make_ndarray(response.outputs["y"])[0][0])


def reload(server, config_text):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    return model_service_pb2_grpc.ModelServiceStub(server.channel).HandleReloadConfigRequest(request, timeout=60)


def test_all_policy_labels_and_tf1_fallback(server, testdata):
    assert predict(server, "two") == (124, 2.5)
    assert predict(server, "two", version=123)[0] == 123
    assert predict(server, "two", label="stable")[0] == 123
    assert predict(server, "two", label="canary")[0] == 124
    assert predict(server, "three", x=2.0) == (123, 4.0)  # half_plus_three: TF1 loader fallback
    answer = requests.post(f"{server.rest}/v1/models/two/labels/stable:predict", json={"instances": [[2.0]]})
    assert answer.json() == {"predictions": [[3.0]]}
    status = requests.get(f"{server.rest}/v1/models/two/labels/canary").json()
    assert status["model_version_status"][0]["version"] == "124"
    expected = json.loads((testdata / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    expected["model_spec"]["name"] = "two"  # TF Serving's answer, served here under the name "two"
    assert requests.get(f"{server.rest}/v1/models/two/versions/123/metadata").json() == expected
    with pytest.raises(grpc.RpcError) as caught:
        predict(server, "two", label="nope")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Unrecognized servable version label: nope"


def test_tf1_only_model_is_fed_like_tf_servings_session_run(server):
    """half_plus_three's x:0 records no shape: TF Serving feeds a [1] tensor as it is and answers 4.0."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "three"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32))
    response = server.predict_stub.Predict(request, timeout=10)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [4.0]
    answer = requests.post(f"{server.rest}/v1/models/three:predict", json={"instances": [2.0, 4.0]})
    assert (answer.status_code, answer.json()) == (200, {"predictions": [4.0, 5.0]})
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float64))
    with pytest.raises(grpc.RpcError) as caught:
        server.predict_stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Expects arg[0] to be float but double is provided"


def test_warmup_records_are_replayed(server, testdata):
    """Our generated 124 carries a warm-up file of 3 records; TF Serving's copy has none."""
    warmup = (
        testdata / "saved_model_half_plus_two_2_versions" / "00000124" / "assets.extra" / "tf_serving_warmup_requests"
    )
    replayed = sum(1 for _ in tf.data.TFRecordDataset(str(warmup))) if warmup.exists() else 0
    line = f"Finished reading warmup data for model at {warmup}. Number of warmup records read: {replayed}."
    assert (line in server.log_text()) == (replayed > 0)
    assert replayed in (0, 3)


def test_reload_rejects_label_on_unavailable_version_and_keeps_serving(server, testdata):
    bad = TWO_VERSIONS_CONFIG.format(
        two=testdata / "saved_model_half_plus_two_2_versions", three=testdata / "saved_model_half_plus_three"
    ).replace("value: 124", "value: 999")
    with pytest.raises(grpc.RpcError) as caught:
        reload(server, bad)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == (
        "Request to assign label to version 999 of model two, which is not currently available for inference"
    )
    assert predict(server, "two", label="canary")[0] == 124
    with pytest.raises(grpc.RpcError) as caught:
        reload(server, 'model_config_list { config { name: "x" base_path: "" } }')
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Relabelling without a restart: "stable" moves to 124.
    relabelled = TWO_VERSIONS_CONFIG.format(
        two=testdata / "saved_model_half_plus_two_2_versions", three=testdata / "saved_model_half_plus_three"
    ).replace("value: 123", "value: 124")
    assert reload(server, relabelled).status.error_code == 0
    assert predict(server, "two", label="stable")[0] == 124


def test_reload_by_rpc_then_by_polling_the_config_file(server, testdata):
    """tensorflow_model_server_test.py::testModelConfigReload: a config file rewritten under a 1 s poll is served."""
    # By RPC: the shared good config replaces "two"/"three" with "half_plus_two"/"half_plus_three".
    response = reload(server, good_config_text(testdata))
    assert response.status.error_code == 0
    assert predict(server, "half_plus_two", x=2.0) == (123, 3.0)
    assert predict(server, "half_plus_three", x=2.0) == (123, 4.0)
    wait_for(lambda: _version_states(server, "two") == {123: "END", 124: "END"}, message="two unloaded")
    with pytest.raises(grpc.RpcError) as caught:
        predict(server, "two")
    assert caught.value.details() == "Servable not found for request: Latest(two)"

    # By polling: a broken file is rejected and the running config stays.
    server.config_path.write_text((testdata / "bad_model_config.txt").read_text())
    wait_for(lambda: "Failed to read ModelServerConfig file" in server.log_text(), message="bad config logged")
    assert predict(server, "half_plus_two", x=2.0) == (123, 3.0)
    # A specific version policy in a good file is picked up without a restart.
    server.config_path.write_text(
        f'model_config_list {{ config {{ name: "pinned" base_path: "{testdata / "saved_model_half_plus_two_2_versions"}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 123 } } } }'
    )
    wait_for(lambda: _served(server, "pinned"), message="pinned model served")
    assert predict(server, "pinned") == (123, 2.5)
    assert set(_version_states(server, "pinned")) == {123}


def _served(server, name):
    try:
        return predict(server, name)
    except grpc.RpcError:
        return None


def _version_states(server, name) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    response = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(request, timeout=10)
    return {
        status.version: get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
        for status in response.model_version_status
    }


def run_server_to_exit(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving.model_server", "--port=0", *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_unknown_flag_is_an_error():
    unknown = run_server_to_exit("--no_such_flag=1")
    assert unknown.returncode != 0
    assert "unrecognized arguments: --no_such_flag=1" in unknown.stderr


def test_startup_fails_like_tf_serving_when_the_model_cannot_load(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    failed = run_server_to_exit(
        "--model_name=broken",
        f"--model_base_path={tmp_path / 'broken'}",
        "--max_num_load_retries=1",
        "--load_retry_interval_micros=1000",
    )
    assert failed.returncode != 0
    assert (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
        "{{{name: broken version: 1} due to error: NOT_FOUND: SavedModel file does not exist at: "
    ) in failed.stderr
    assert "Retrying load on servable version {name: broken version: 1} retry: 1" in failed.stderr
