"""One loaded SavedModel version and the inference calls it answers.

A ``Servable`` loads ``<base_path>/<version>``. TF1 SavedModels (no object
graph, such as TF Serving's own test models) are loaded as TF Serving loads
every model: into a session (``tf.compat.v1.saved_model.loader.load``), and
each signature runs through a callable made from the session with its feed
and fetch tensor names, which is C++ ``Session::Run``: no client-side shape
check, so a graph that accepts a shape answers as in TF Serving, and one
that does not fails with TensorFlow's own runtime error. TF2 SavedModels
load with ``tf.saved_model.load`` (falling back to the session loader if it
fails) and run through their concrete functions.

Signature metadata is read straight from ``saved_model.pb`` so that
GetModelMetadata reports exactly the SignatureDefs TensorFlow Serving reports.
Every Predict input is checked against its SignatureDef (names, dtype) before
the model runs, with TensorFlow Serving's error wording. For TF2 functions,
which refuse other shapes anyway, fixed dimensions are checked too, and an
input may leave out trailing dimensions of size 1 as in TF Serving (a scalar
per instance for a ``[-1, 1]`` input): it is fed with those dimensions added
and they are dropped again from the outputs.

``execute`` is the raw model call and ``run`` the one every request uses:
with batching on, ``batcher`` merges it with concurrent calls. A Predict is
three steps, ``prepare_request`` (decode and validate), the model call and
``predict_response``, so that an asynchronous server can await the batch
in between; ``predict_request`` does all three in the calling thread.
``predict_response`` writes the serialized PredictResponse (bytes, encoded
from the output arrays without a Python object per value). With
``max_tensor_bytes`` every input and output tensor larger than that is
refused with RESOURCE_EXHAUSTED (a gRPC input before it is allocated).
"""

import dataclasses
import logging
import os
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from serving import tensors
from serving.batching import Batcher
from serving.config import BatchingParameters
from serving.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    not_found,
    status_code_from_number,
)

log = logging.getLogger("serving")

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


@dataclasses.dataclass(frozen=True)
class ModelCall:
    """A validated Predict: what to feed the model and which outputs to return."""

    signature_name: str
    feeds: dict[str, np.ndarray]
    output_aliases: list[str]
    added_unit_dims: int


def _format_shape(dims) -> str:
    """(?, 120, 14) style, as TensorFlow prints shapes in feed errors."""
    parts = ["?" if size < 0 else str(size) for size in dims]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _read_meta_graph(path: str, tags: set[str]) -> meta_graph_pb2.MetaGraphDef:
    pb_path = os.path.join(path, "saved_model.pb")
    try:
        os.stat(pb_path)
    except PermissionError as error:  # say so, rather than that the file does not exist
        raise ServingError(grpc.StatusCode.PERMISSION_DENIED, f"{pb_path}; {error.strerror}") from error
    except OSError:
        pass  # missing: reported below
    if not os.path.isfile(pb_path):
        raise not_found(f"SavedModel file does not exist at: {path}/{{saved_model.pbtxt|saved_model.pb}}")
    saved_model = saved_model_pb2.SavedModel()
    try:
        with open(pb_path, "rb") as handle:
            saved_model.ParseFromString(handle.read())
    except Exception as error:
        raise ServingError(grpc.StatusCode.DATA_LOSS, f"Could not parse SavedModel {pb_path}: {error}") from error
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    raise not_found(
        "Could not find meta graph def matching supplied tags: { " + " ".join(sorted(tags)) + " }. "
        "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`"
    )


class Servable:
    """A loaded model version: signatures plus the calls to run them."""

    def __init__(
        self,
        model_name: str,
        version: int,
        path: str,
        tags: set[str],
        max_tensor_bytes: int = 0,
        batching: BatchingParameters | None = None,
    ):
        self.model_name = model_name
        self.max_tensor_bytes = max_tensor_bytes
        self.version = version
        self.path = path
        meta_graph = _read_meta_graph(path, tags)
        self.signature_defs = {name: signature for name, signature in meta_graph.signature_def.items()}
        self._session = None
        self._session_callables = {}  # signature name -> (input aliases, output aliases, callable)
        self._session_callables_lock = threading.Lock()
        self._loaded = None
        self._functions = {}
        self._load(tags, is_tf1=not meta_graph.HasField("object_graph_def"))
        self.batcher = Batcher(self.execute, batching) if batching is not None else None
        self._in_flight = 0
        self._drained = threading.Condition()

    # ----------------------------------------------------------------- loading
    def _load(self, tags: set[str], is_tf1: bool) -> None:
        if not is_tf1:
            try:
                loaded = tf.saved_model.load(self.path, tags=list(tags))
                self._functions = dict(loaded.signatures)
                self._loaded = loaded
                return
            except Exception as tf2_error:  # fall back to the TF1 loader below
                log.info(
                    "tf.saved_model.load failed for %s (%s); loading as a TF1 SavedModel",
                    self.path,
                    str(tf2_error).splitlines()[0][:200],
                )
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        try:
            with graph.as_default():
                tf.compat.v1.saved_model.loader.load(session, list(tags), self.path)
        except Exception as error:
            session.close()
            raise internal(f"Failed to load SavedModel at {self.path}: {str(error).splitlines()[0]}") from error
        self._session = session

    def warm_up(self, iterations: int) -> int:
        """Replays assets.extra/tf_serving_warmup_requests; returns records replayed."""
        warmup_path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.isfile(warmup_path):
            return 0
        replayed = 0
        for record in tf.compat.v1.io.tf_record_iterator(warmup_path):
            replayed += 1
            if replayed > MAX_WARMUP_RECORDS:
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {warmup_path}"
                )
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
            kind = log_entry.WhichOneof("log_type")
            for _ in range(max(iterations, 1)):
                if kind == "predict_log":
                    self.predict_request(log_entry.predict_log.request)
                elif kind == "classify_log":
                    self.classify(log_entry.classify_log.request)
                elif kind == "regress_log":
                    self.regress(log_entry.regress_log.request)
                elif kind == "multi_inference_log":
                    self.multi_inference(log_entry.multi_inference_log.request)
                else:
                    raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
        return replayed

    def close(self) -> None:
        """Waits for in-flight calls, then releases the model (and its batcher)."""
        with self._drained:
            self._drained.wait_for(lambda: self._in_flight == 0)
        if self.batcher is not None:
            self.batcher.close()
        self._session_callables = {}  # released before their session
        if self._session is not None:
            self._session.close()
        self._functions = {}
        self._loaded = None

    # ------------------------------------------------------- request tracking
    def begin_request(self) -> None:
        """Counts a request in; ``close`` waits until all are counted out."""
        with self._drained:
            self._in_flight += 1

    def end_request(self) -> None:
        with self._drained:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.notify_all()

    # ------------------------------------------------------------- signatures
    def signature(self, name: str, missing=None) -> tuple[str, meta_graph_pb2.SignatureDef]:
        """(resolved name, SignatureDef); ``missing(resolved)`` makes the error for an unknown name.

        The default is gRPC Predict's; Classify, Regress and REST word it their own way in TF Serving.
        """
        resolved = name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(resolved)
        if signature is None:
            raise (missing or _unknown_predict_signature)(resolved)
        return resolved, signature

    def metadata_response(self) -> get_model_metadata_pb2.GetModelMetadataResponse:
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    # -------------------------------------------------------------- execution
    def execute(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one signature on validated inputs; returns every output."""
        try:
            if self._session is not None:
                input_aliases, output_aliases, run_session = self._session_callable(signature_name)
                results = run_session(*(inputs[alias] for alias in input_aliases))
                return dict(zip(output_aliases, results))
            function = self._functions[signature_name]
            results = function(**{alias: tf.constant(value) for alias, value in inputs.items()})
            return {alias: tensor.numpy() for alias, tensor in results.items()}
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise invalid_argument(_first_line(error)) from error
        except tf.errors.OpError as error:
            raise ServingError(status_code_from_number(error.error_code), _first_line(error)) from error

    def _session_callable(self, signature_name: str):
        """The signature as ``Session::Run`` with its tensor names (made once, then reused)."""
        with self._session_callables_lock:
            entry = self._session_callables.get(signature_name)
            if entry is None:
                signature = self.signature_defs[signature_name]
                input_aliases, output_aliases = sorted(signature.inputs), sorted(signature.outputs)
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[alias].name for alias in input_aliases],
                    fetch=[signature.outputs[alias].name for alias in output_aliases],
                )
                # The public Session.run checks fed shapes in Python; TF Serving's C++ Session::Run does not.
                entry = (input_aliases, output_aliases, self._session._make_callable_from_options(options))
                self._session_callables[signature_name] = entry
        return entry

    def run(self, signature_name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model call of every request: through the batcher when batching is on."""
        if self.batcher is not None:
            return self.batcher(signature_name, feeds)
        return self.execute(signature_name, feeds)

    # ----------------------------------------------------------------- predict
    def prepare(self, signature_name: str, inputs: dict[str, np.ndarray], output_filter=()) -> ModelCall:
        """Validates inputs against the signature and resolves the outputs to return."""
        resolved, signature = self.signature(signature_name)
        for alias, value in inputs.items():
            tensors.check_tensor_size(
                alias, np.shape(value), tensors.dtype_enum_of(np.asarray(value)), self.max_tensor_bytes
            )
        feeds, added_unit_dims = _prepare_inputs(signature, inputs, check_shapes=self._session is None)
        return ModelCall(resolved, feeds, _select_outputs(signature, output_filter), added_unit_dims)

    def selected_outputs(self, call: ModelCall, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The requested outputs, without the unit dimensions ``prepare`` added to the inputs."""
        selected = {}
        for alias in call.output_aliases:
            value = np.asarray(outputs[alias])
            if (
                call.added_unit_dims
                and value.ndim > call.added_unit_dims
                and all(size == 1 for size in value.shape[-call.added_unit_dims :])
            ):
                value = value.reshape(value.shape[: -call.added_unit_dims])
            tensors.check_tensor_size(alias, value.shape, tensors.dtype_enum_of(value), self.max_tensor_bytes)
            selected[alias] = value
        return selected

    def predict(
        self, signature_name: str, inputs: dict[str, np.ndarray], output_filter=()
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Validates inputs against the signature, runs it, filters outputs."""
        call = self.prepare(signature_name, inputs, output_filter)
        return call.signature_name, self.selected_outputs(call, self.run(call.signature_name, call.feeds))

    def prepare_request(self, request: predict_pb2.PredictRequest) -> ModelCall:
        arrays = {
            alias: tensors.to_ndarray(proto, alias, self.max_tensor_bytes) for alias, proto in request.inputs.items()
        }
        return self.prepare(request.model_spec.signature_name, arrays, request.output_filter)

    def predict_response(self, call: ModelCall, outputs: dict[str, np.ndarray]) -> bytes:
        """The serialized PredictResponse: ``outputs`` map entries (field 1), then ``model_spec``."""
        header = predict_pb2.PredictResponse()
        self._fill_model_spec(header.model_spec, call.signature_name)
        pieces = []
        for alias, value in self.selected_outputs(call, outputs).items():
            tensor = tensors.serialized_tensor(value)
            pieces += tensors.length_delimited(
                1, *tensors.length_delimited(1, alias.encode("utf-8")), *tensors.length_delimited(2, *tensor)
            )
        pieces.append(header.SerializeToString())
        return b"".join(pieces)

    def predict_request(self, request: predict_pb2.PredictRequest) -> bytes:
        call = self.prepare_request(request)
        return self.predict_response(call, self.run(call.signature_name, call.feeds))

    def _fill_model_spec(self, model_spec, signature_name: str) -> None:
        model_spec.name = self.model_name
        model_spec.version.value = self.version
        model_spec.signature_name = signature_name

    # ------------------------------------------------- classify and regress
    def _run_on_examples(self, signature_name: str, model_input):
        """Feeds serialized tf.Examples to a one-input signature.

        Returns (resolved signature name, SignatureDef, outputs, example count).
        """
        resolved, signature = self.signature(
            signature_name, lambda name: invalid_argument(f"No signature was found with the name: {name}")
        )
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        serialized = _serialized_examples(model_input)
        alias = next(iter(signature.inputs))
        outputs = self.run(resolved, {alias: np.array(serialized, dtype=object)})
        return resolved, signature, outputs, len(serialized)

    def _answer_examples(self, request, response, fill):
        """Classify or Regress: run the request's Examples, fill ``response.result`` with ``fill``."""
        resolved, signature, outputs, count = self._run_on_examples(request.model_spec.signature_name, request.input)
        self._fill_model_spec(response.model_spec, resolved)
        fill(signature, outputs, response.result, count)
        return response

    def classify(self, request: classification_pb2.ClassificationRequest) -> classification_pb2.ClassificationResponse:
        return self._answer_examples(request, classification_pb2.ClassificationResponse(), _fill_classifications)

    def regress(self, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
        return self._answer_examples(request, regression_pb2.RegressionResponse(), _fill_regressions)

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks:
            raise invalid_argument("Tasks is empty")
        fillers = {
            CLASSIFY_METHOD: (_fill_classifications, "classification_result"),
            REGRESS_METHOD: (_fill_regressions, "regression_result"),
        }
        seen = set()
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            if task.model_spec.name != self.model_name:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature_name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
            seen.add(signature_name)
            if task.method_name not in fillers:
                raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
            fill, field = fillers[task.method_name]
            resolved, signature, outputs, count = self._run_on_examples(signature_name, request.input)
            result = response.results.add()
            fill(signature, outputs, getattr(result, field), count)
            self._fill_model_spec(result.model_spec, resolved)
        return response


def _unknown_predict_signature(name: str) -> ServingError:
    return failed_precondition(f'Serving signature key "{name}" not found.')


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _prepare_inputs(signature, inputs: dict[str, np.ndarray], check_shapes: bool) -> tuple[dict[str, np.ndarray], int]:
    """Checks names, dtypes and (``check_shapes``) shapes; returns the feeds and added unit dims."""
    expected = set(signature.inputs)
    received = set(inputs)
    if len(received) != len(expected):
        raise invalid_argument(
            f"input size does not match signature: {len(received)}!={len(expected)} "
            f"len({{{','.join(sorted(received))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(received - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - received))}}}."
        )
    for alias in sorted(received):
        if alias not in expected:
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. "
                f"Inputs expected to be in the set {{{', '.join(sorted(expected))}}}."
            )
    feeds = {}
    added_unit_dims = 0
    for index, alias in enumerate(sorted(expected)):
        info = signature.inputs[alias]
        value = inputs[alias]
        received_dtype = tensors.dtype_enum_of(value)
        if received_dtype != info.dtype:
            raise invalid_argument(
                f"Expects arg[{index}] to be {tensors.dtype_name(info.dtype)} but "
                f"{tensors.dtype_name(received_dtype)} is provided"
            )
        if check_shapes:
            value, added = _fit_shape(alias, info, value)
            added_unit_dims = max(added_unit_dims, added)
        feeds[alias] = value
    return feeds, added_unit_dims


def _fit_shape(alias: str, info, value: np.ndarray) -> tuple[np.ndarray, int]:
    """Rejects a fixed dimension that differs; fills in omitted trailing 1s."""
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        return value, 0  # no shape recorded: anything goes, as in TF Serving
    expected = [dim.size for dim in info.tensor_shape.dim]
    received = list(value.shape)
    added = len(expected) - len(received)
    fits_rank = added == 0 or (added > 0 and all(size == 1 for size in expected[len(received) :]))
    fits_dims = fits_rank and all(want < 0 or want == got for want, got in zip(expected, received))
    if not fits_dims:
        raise invalid_argument(
            f"Cannot feed value of shape {_format_shape(received)} for input '{alias}' "
            f"(Tensor {info.name}), which has shape {_format_shape(expected)}"
        )
    if added:
        value = value.reshape(received + [1] * added)
    return value, added


def _select_outputs(signature, output_filter) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    selected = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{', '.join(sorted(signature.outputs))}}}."
            )
        if alias in selected:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        selected.append(alias)
    return selected


def _serialized_examples(model_input) -> list[bytes]:
    """tensorflow.serving.Input -> serialized tf.Examples (context merged in)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context.SerializeToString()
        examples = [context + example.SerializeToString() for example in model_input.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    return examples


def _fill_classifications(signature, outputs, result, batch_size: int) -> None:
    classes = outputs.get("classes") if "classes" in signature.outputs else None
    scores = outputs.get("scores") if "scores" in signature.outputs else None
    if classes is None and scores is None:
        raise invalid_argument("Expected classification signature outputs to contain classes or scores.")
    reference = scores if scores is not None else classes
    reference = np.asarray(reference)
    if reference.ndim != 2 or reference.shape[0] != batch_size:
        raise invalid_argument(f"Expected Tensor shape: [{batch_size} num_classes] but got {list(reference.shape)}")
    for row in range(batch_size):
        classifications = result.classifications.add()
        for column in range(reference.shape[1]):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[row][column]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[row][column])


def _fill_regressions(signature, outputs, result, batch_size: int) -> None:
    if "outputs" not in signature.outputs:
        raise invalid_argument("No regression output tensor named 'outputs' found in signature.")
    values = np.asarray(outputs["outputs"])
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != batch_size:
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}"
        )
    for value in values:
        result.regressions.add().value = float(value)
