"""TF Serving's test models, rebuilt here so that the serving tests need nothing beside the repository.

``build_testdata(directory)`` writes the same layout as TF Serving's
``tensorflow_serving/servables/tensorflow/testdata`` (which our machines keep
in ``../shared/tfserving-testdata``), made with TensorFlow's TF1 API:

* ``saved_model_half_plus_two_cpu/00000123``: a TF1 graph ``y = 0.5 x + 2``.
  ``x`` is parsed from serialized tf.Examples (``tf_example:0``) and may also
  be fed directly; signatures ``serving_default`` (predict ``x`` -> ``y``),
  ``classify_x_to_y``, ``regress_x_to_y``, ``regress_x_to_y2`` (``0.5 x + 3``)
  and ``regress_x2_to_y3`` (input ``x2:0``, ``0.5 x2 + 3``).
* ``saved_model_half_plus_two_2_versions/00000123`` and ``00000124``: the same
  model twice; 124 carries a warm-up file
  (``assets.extra/tf_serving_warmup_requests``: one Predict, one Classify,
  one Regress).
* ``saved_model_half_plus_three/00000123``: a TF1-only model ``y = 0.5 x + 3``
  whose SignatureDefs record no shapes. ``tf.saved_model.load`` rejects it
  (it reads a missing shape as a scalar, and ParseExample needs a vector),
  so the server must load it into a TF1 session, as with TF Serving's copy.
* ``good_model_config.txt``, ``bad_model_config.txt``,
  ``monitoring_config.txt``: the config files of TF Serving's tests
  (``good_config_text`` fills in the good one's paths).
* ``half_plus_two_model_metadata.json`` and
  ``saved_model_half_plus_two_2_versions_metadata.json``: the GetModelMetadata
  answers expected over REST, written from the SignatureDefs as built here.

``build_tf2_testdata(directory)`` writes the TF2 models of TF Serving's
``tensorflow_model_server_test.py``, each as version ``00000123`` of a base path:

* ``saved_model_half_plus_two_tf2_cpu``: ``y = 0.5 x + 2`` as a ``tf.Module`` saved with
  ``tf.saved_model.save``: ``serving_default`` (``x`` of shape ``[1]`` -> ``y``), ``classify_x_to_y`` and
  ``regress_x_to_y`` (serialized tf.Examples with float feature ``x``).
* ``tf_saved_model_save``: ``y = 3 * 2 * x`` behind a signature of unknown rank.
* ``tf_saved_model_save_multiple_signatures``: ``serving_default`` answers 1.0, ``custom_signature_key`` 2.0.
* ``keras_sequential``: a Keras ``Sequential`` identity model (input layer ``x``).
* ``keras_distributed``: a Keras ``Sequential`` ``Dense(1)`` with kernel 1 and bias 0, built and saved
  under a ``MirroredStrategy`` over two virtual CPUs.

The last one needs two virtual CPUs, which TensorFlow allows only before its runtime starts, so
these models are built in a fresh process: ``python -m tests.helpers.tfserving_testdata DIRECTORY``.
"""

import json
import subprocess
import sys
from pathlib import Path

import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import prediction_log_pb2

from tests.helpers.repository import REPO_ROOT

# TF Serving's own copies, beside the repository root on our machines and CI (a fresh clone need not have them)
SHARED_TESTDATA = REPO_ROOT.parent / "shared" / "tfserving-testdata"
CLASSIFY = "tensorflow/serving/classify"
PREDICT = "tensorflow/serving/predict"
REGRESS = "tensorflow/serving/regress"


def _save_tf1_model(export_dir: Path, intercept: float, record_shapes: bool) -> dict:
    """Builds ``y = 0.5 x + intercept`` and its signatures as a TF1 SavedModel; returns the SignatureDefs."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        slope = v1.Variable(0.5, name="a", use_resource=False)
        bias = v1.Variable(intercept, name="b", use_resource=False)
        second_bias = v1.Variable(intercept + 1.0, name="c", use_resource=False)
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = v1.parse_example(serialized, {"x": v1.FixedLenFeature([1], tf.float32)})
        x = tf.identity(tf.reshape(parsed["x"], [-1, 1]), name="x")  # [None, 1] although tf_example has no shape
        y = tf.add(slope * x, bias, name="y")
        y2 = tf.add(slope * x, second_bias, name="y2")
        x2 = v1.placeholder(tf.float32, [None, 1], name="x2")
        y3 = tf.add(slope * x2, second_bias, name="y3")

        def info(tensor):
            tensor_info = v1.saved_model.utils.build_tensor_info(tensor)
            if not record_shapes:
                tensor_info.ClearField("tensor_shape")
            return tensor_info

        def signature(inputs, outputs, method):
            return v1.saved_model.signature_def_utils.build_signature_def(
                {key: info(value) for key, value in inputs.items()},
                {key: info(value) for key, value in outputs.items()},
                method,
            )

        signatures = {
            "serving_default": signature({"x": x}, {"y": y}, PREDICT),
            "classify_x_to_y": signature({"inputs": serialized}, {"scores": y}, CLASSIFY),
            "regress_x_to_y": signature({"inputs": serialized}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": signature({"inputs": serialized}, {"outputs": y2}, REGRESS),
            "regress_x2_to_y3": signature({"inputs": x2}, {"outputs": y3}, REGRESS),
        }
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.builder.SavedModelBuilder(str(export_dir))
        builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map=signatures)
        builder.save()
    return signatures


def _write_warmup_file(version_dir: Path) -> None:
    def example(value):
        return tf.train.Example(
            features=tf.train.Features(feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[value]))})
        )

    records = []
    predict = prediction_log_pb2.PredictionLog()
    predict.predict_log.request.model_spec.name = "half_plus_two"
    predict.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]], dtype=tf.float32))
    records.append(predict)
    classify = prediction_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.signature_name = "classify_x_to_y"
    classify.classify_log.request.input.example_list.examples.add().CopyFrom(example(1.0))
    records.append(classify)
    regress = prediction_log_pb2.PredictionLog()
    regress.regress_log.request.model_spec.signature_name = "regress_x_to_y"
    regress.regress_log.request.input.example_list.examples.add().CopyFrom(example(1.0))
    records.append(regress)
    (version_dir / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record.SerializeToString())


def _metadata_json(model_name: str, signatures: dict) -> dict:
    """The REST GetModelMetadata answer for version 123, as TF Serving prints it."""
    signature_map = {
        name: json_format.MessageToDict(
            signature, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        for name, signature in signatures.items()
    }
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": "123"},
        "metadata": {"signature_def": {"signature_def": signature_map}},
    }


def good_config_text(testdata: Path) -> str:
    """good_model_config.txt of `testdata` with its two base paths filled in."""
    return (
        (testdata / "good_model_config.txt")
        .read_text()
        .replace("${TEST_HALF_PLUS_TWO_DIR}", str(testdata / "saved_model_half_plus_two_cpu"))
        .replace("${TEST_HALF_PLUS_THREE_DIR}", str(testdata / "saved_model_half_plus_three"))
    )


def build_testdata(directory: Path) -> Path:
    """Writes every model and file listed in the module docstring into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    half_plus_two = directory / "saved_model_half_plus_two_cpu"
    signatures = _save_tf1_model(half_plus_two / "00000123", 2.0, record_shapes=True)
    two_versions = directory / "saved_model_half_plus_two_2_versions"
    for version in ("00000123", "00000124"):
        _save_tf1_model(two_versions / version, 2.0, record_shapes=True)
    _write_warmup_file(two_versions / "00000124")
    _save_tf1_model(directory / "saved_model_half_plus_three" / "00000123", 3.0, record_shapes=False)

    (directory / "half_plus_two_model_metadata.json").write_text(
        json.dumps(_metadata_json("default", signatures), indent=1)
    )
    (directory / "saved_model_half_plus_two_2_versions_metadata.json").write_text(
        json.dumps(_metadata_json("saved_model_half_plus_two_2_versions", signatures), indent=1)
    )
    (directory / "good_model_config.txt").write_text(
        "model_config_list: {\n"
        '  config: { name: "half_plus_two", base_path: "${TEST_HALF_PLUS_TWO_DIR}", model_platform: "tensorflow" },\n'
        '  config: { name: "half_plus_three", base_path: "${TEST_HALF_PLUS_THREE_DIR}", model_platform: "tensorflow" }\n'
        "}\n"
    )
    (directory / "bad_model_config.txt").write_text("improperly formatted file")
    (directory / "monitoring_config.txt").write_text(
        'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
    )
    return directory


def _save_half_plus_two_tf2(export_dir: Path) -> None:
    def parse_x(serialized):
        return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    module = tf.Module()
    module.slope = tf.Variable(0.5)
    module.intercept = tf.Variable(2.0)
    examples = tf.TensorSpec([None], tf.string, name="inputs")
    module.predict = tf.function(
        lambda x: {"y": module.slope * x + module.intercept}, input_signature=[tf.TensorSpec([1], tf.float32, name="x")]
    )
    module.classify = tf.function(
        lambda inputs: {"scores": module.slope * parse_x(inputs) + module.intercept}, input_signature=[examples]
    )
    module.regress = tf.function(
        lambda inputs: {"outputs": module.slope * parse_x(inputs) + module.intercept}, input_signature=[examples]
    )
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={
            "serving_default": module.predict,
            "classify_x_to_y": module.classify,
            "regress_x_to_y": module.regress,
        },
    )


def _save_checkpoint_models(directory: Path) -> None:
    """The two models TF Serving's test saves from a ``tf.train.Checkpoint`` root."""
    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.0)
    root.v2 = tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    tf.saved_model.save(
        root,
        str(directory / "tf_saved_model_save" / "00000123"),
        signatures=root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)),
    )

    two = tf.train.Checkpoint()
    unknown_rank = [tf.TensorSpec(None, tf.float32)]
    two.f = tf.function(lambda x: {"y": 1.0}, input_signature=unknown_rank)
    two.g = tf.function(lambda x: {"y": 2.0}, input_signature=unknown_rank)
    tf.saved_model.save(
        two,
        str(directory / "tf_saved_model_save_multiple_signatures" / "00000123"),
        signatures={"serving_default": two.f, "custom_signature_key": two.g},
    )


def _save_keras_models(directory: Path) -> None:
    identity = tf.keras.Sequential(
        [tf.keras.layers.Input(shape=(1,), dtype="float32", name="x"), tf.keras.layers.Lambda(lambda x: x, name="y")]
    )
    tf.saved_model.save(identity, str(directory / "keras_sequential" / "00000123"))

    strategy = tf.distribute.MirroredStrategy(devices=["/cpu:0", "/cpu:1"])
    with strategy.scope():
        dense = tf.keras.Sequential(
            [
                tf.keras.layers.Input(shape=(1,), dtype="float32", name="x"),
                tf.keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros"),
                tf.keras.layers.Lambda(lambda x: x, name="y"),
            ]
        )
    tf.saved_model.save(dense, str(directory / "keras_distributed" / "00000123"))


def build_tf2_testdata(directory: Path) -> Path:
    """Writes the TF2 models listed in the module docstring; call it in a process whose TensorFlow has not started."""
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    directory.mkdir(parents=True, exist_ok=True)
    _save_half_plus_two_tf2(directory / "saved_model_half_plus_two_tf2_cpu" / "00000123")
    _save_checkpoint_models(directory)
    _save_keras_models(directory)
    return directory


def build_tf2_testdata_in_subprocess(directory: Path, cwd: Path) -> Path:
    """``build_tf2_testdata`` in a fresh Python process (see the module docstring); raises if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.tfserving_testdata", str(directory)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the TF2 test models failed:\n{result.stderr[-4000:]}")
    return directory


if __name__ == "__main__":
    build_tf2_testdata(Path(sys.argv[1]))
