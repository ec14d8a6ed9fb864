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
  ``monitoring_config.txt``: the config files of TF Serving's tests.
* ``half_plus_two_model_metadata.json`` and
  ``saved_model_half_plus_two_2_versions_metadata.json``: the GetModelMetadata
  answers expected over REST, written from the SignatureDefs as built here.
"""

import json
from pathlib import Path

import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import prediction_log_pb2

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
                {key: info(value) for key, value in outputs.items()}, method)

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
        return tf.train.Example(features=tf.train.Features(
            feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[value]))}))

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
        name: json_format.MessageToDict(signature, always_print_fields_with_no_presence=True,
                                        preserving_proto_field_name=True)
        for name, signature in signatures.items()
    }
    return {"model_spec": {"name": model_name, "signature_name": "", "version": "123"},
            "metadata": {"signature_def": {"signature_def": signature_map}}}


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
        json.dumps(_metadata_json("default", signatures), indent=1))
    (directory / "saved_model_half_plus_two_2_versions_metadata.json").write_text(
        json.dumps(_metadata_json("saved_model_half_plus_two_2_versions", signatures), indent=1))
    (directory / "good_model_config.txt").write_text(
        'model_config_list: {\n'
        '  config: { name: "half_plus_two", base_path: "${TEST_HALF_PLUS_TWO_DIR}", model_platform: "tensorflow" },\n'
        '  config: { name: "half_plus_three", base_path: "${TEST_HALF_PLUS_THREE_DIR}", model_platform: "tensorflow" }\n'
        '}\n')
    (directory / "bad_model_config.txt").write_text("improperly formatted file")
    (directory / "monitoring_config.txt").write_text(
        'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    return directory
