"""TF Serving's ``tensorflow_model_server_test.py`` cases that need models or flags no other test of ours has.

One server, started from a model config file: TF Serving's good model config (half_plus_two and
half_plus_three) followed by TF Serving's TF2 test models (``build_tf2_testdata``: a TF2
half_plus_two, models saved from a ``tf.train.Checkpoint``, Keras models), with the gRPC channel
arguments of TF Serving's test and no config polling. Each test names the case it does. The other
cases of that file are cited by the tests that already do them (``tests/helpers/tf_serving_coverage.py``
lists them), and those that cannot apply are in ``serving/README.md``, *What differs from TF Serving*.
"""

import time

import grpc
import pytest
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from tests.helpers.model_server import ServerProcess, check_predict
from tests.helpers.repository import REPO_ROOT
from tests.helpers.tfserving_testdata import build_tf2_testdata_in_subprocess, good_config_text

pytestmark = pytest.mark.slow

TF2_MODELS = (
    "saved_model_half_plus_two_tf2_cpu",
    "tf_saved_model_save",
    "tf_saved_model_save_multiple_signatures",
    "keras_sequential",
    "keras_distributed",
)


@pytest.fixture(scope="module")
def server(generated_testdata, tmp_path_factory):
    directory = tmp_path_factory.mktemp("model-server-cases")
    build_tf2_testdata_in_subprocess(directory / "models", cwd=REPO_ROOT)
    good_config = good_config_text(generated_testdata).rstrip()
    assert good_config.endswith("}")
    config = directory / "models.config"
    config.write_text(
        good_config[:-1]
        + "".join(
            f'  config: {{ name: "{name}", base_path: "{directory / "models" / name}", model_platform: "tensorflow" }}\n'
            for name in TF2_MODELS
        )
        + "}\n"
    )
    process = ServerProcess(
        directory,
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=0",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1",
    )
    process.config_path = config
    yield process
    assert process.stop() == 0


def examples_input(request) -> None:
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)


def assert_model_spec(model_spec, name: str, signature: str, version: int = 123) -> None:
    assert (model_spec.name, model_spec.signature_name, model_spec.version.value) == (name, signature, version)


# ------------------------------------------------------------------ TF2 models
def test_classify_regress_and_multi_inference_on_a_tf2_model(server):
    """tensorflow_model_server_test.py::testClassifyTf2,
    tensorflow_model_server_test.py::testRegressTf2,
    tensorflow_model_server_test.py::testMultiInferenceTf2."""
    model = "saved_model_half_plus_two_tf2_cpu"
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = model
    classify.model_spec.signature_name = "classify_x_to_y"
    examples_input(classify)
    result = server.predict_stub.Classify(classify, timeout=20)
    assert [[c.score for c in classes.classes] for classes in result.result.classifications] == [[3.0]]
    assert_model_spec(result.model_spec, model, "classify_x_to_y")

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = model
    regress.model_spec.signature_name = "regress_x_to_y"
    examples_input(regress)
    result = server.predict_stub.Regress(regress, timeout=20)
    assert [regression.value for regression in result.result.regressions] == [3.0]
    assert_model_spec(result.model_spec, model, "regress_x_to_y")

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature
    examples_input(multi)
    result = server.predict_stub.MultiInference(multi, timeout=20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for answer, signature in zip(result.results, ("regress_x_to_y", "classify_x_to_y")):
        assert_model_spec(answer.model_spec, model, signature)


def test_signature_of_unknown_rank_from_a_checkpoint_root(server):
    """tensorflow_model_server_test.py::test_tf_saved_model_save: v1 * v2 * x = 3 * 2 * 2."""
    check_predict(server.predict_stub, 12.0, 123, model="tf_saved_model_save", output_filter=())


def test_each_signature_of_a_checkpoint_root_answers_for_itself(server):
    """tensorflow_model_server_test.py::test_tf_saved_model_save_multiple_signatures."""
    model = "tf_saved_model_save_multiple_signatures"
    check_predict(server.predict_stub, 2.0, 123, model=model, signature="custom_signature_key")
    check_predict(server.predict_stub, 1.0, 123, model=model)


@pytest.mark.parametrize("model", ["keras_sequential", "keras_distributed"])
def test_keras_sequential_models(server, model):
    """tensorflow_model_server_test.py::test_sequential_keras_saved_model_save,
    tensorflow_model_server_test.py::test_distrat_sequential_keras_saved_model_save (a MirroredStrategy on two CPUs).

    The cases send ``x`` and read ``y``, the names Keras 2 gave these signatures. ``tf.keras`` in
    TensorFlow 2.21 is Keras 3, whose ``tf.saved_model.save`` names them ``inputs`` and ``output_0``:
    a request for ``x`` gets TF Serving's own error, and the request with Keras 3's names answers.
    """
    check_predict(
        server.predict_stub, 2.0, 123, model=model, shape=(1, 1), alias="inputs", output="output_0", output_filter=()
    )
    with pytest.raises(grpc.RpcError) as caught:
        check_predict(server.predict_stub, 2.0, 123, model=model, shape=(1, 1), output_filter=())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "input tensor alias not found in signature: x. Inputs expected to be in the set {inputs}."
    )


# ------------------------------------------------------- a model config file
def test_models_of_the_good_config(server):
    """tensorflow_model_server_test.py::testGoodModelConfig,
    tensorflow_model_server_test.py::testGoodGrpcChannelArgs (the server runs with
    ``grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb``)."""
    for output_filter in (("y",), ()):
        check_predict(server.predict_stub, 3.0, 123, model="half_plus_two", output_filter=output_filter)
        check_predict(server.predict_stub, 4.0, 123, model="half_plus_three", output_filter=output_filter)


def test_config_file_is_read_once_without_a_poll_period(server):
    """tensorflow_model_server_test.py::testModelConfigReloadWithZeroPollPeriod; also
    tensorflow_model_server_test.py::testGoodGrpcChannelArgs: with ``grpc.max_connection_age_ms=2000`` the channel's
    connection ages out during the wait, and the next call answers.

    The file is rewritten to serve one model from a path that does not exist; with
    ``--model_config_file_poll_wait_seconds=0`` it is not read again, so half_plus_two keeps serving. (A
    rewrite under a 1 s poll is picked up: ``test_config.py::test_reload_by_rpc_then_by_polling_the_config_file``.)
    """
    server.config_path.write_text('model_config_list { config { name: "half_plus_three" base_path: "/nonexistent" } }')
    time.sleep(2.5)
    check_predict(server.predict_stub, 3.0, 123, model="half_plus_two", output_filter=())
    assert "/nonexistent" not in server.log_text()


def test_tf2_half_plus_two_predicts_like_the_tf1_one(server):
    """The TF2 model's ``serving_default`` (``x`` of shape [1]) answers as the TF1 model's does."""
    check_predict(server.predict_stub, 3.0, 123, model="saved_model_half_plus_two_tf2_cpu")
