"""TF Serving's own JSON codec tests (tensorflow_serving/util/json_tensor_test.cc), run on serving/json_tensor.py.

Each test names the C++ test it ports (``Suite.Name``; ``tests/helpers/tf_serving_coverage.py`` matches
these names against a TF Serving checkout). Requests are read with the input signatures the C++ test
builds; response tensors are the C++ test's TensorProtos, decoded as the server decodes a model's
outputs. Where the C++ test compares protos, these compare dtype, shape and values.
"""

import json
import math

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving.errors import ServingError
from serving.json_tensor import (
    classification_result,
    fill_examples,
    parse_document,
    predict_inputs,
    predict_outputs,
    regression_result,
    signature_name,
)

INT32, FLOAT, DOUBLE, STRING = types_pb2.DT_INT32, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_STRING


# ------------------------------------------------------------------ helpers
def fill_predict(body: str | bytes, **input_dtypes: int) -> tuple[dict, bool, str]:
    """FillPredictRequestFromJson: body and a signature's input dtypes -> (arrays, row format, signature name)."""
    document = parse_document(body.encode() if isinstance(body, str) else body)
    name = signature_name(document)
    signature = meta_graph_pb2.SignatureDef()
    for alias, dtype in input_dtypes.items():
        signature.inputs[alias].dtype = dtype
    arrays, row_format = predict_inputs(document, signature)
    return arrays, row_format, name


def predict_error(body: str, **input_dtypes: int) -> str:
    with pytest.raises(ServingError) as raised:
        fill_predict(body, **input_dtypes)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return raised.value.message


def assert_tensor(array: np.ndarray, dtype, shape: list[int], values: list) -> None:
    assert array.dtype == dtype
    assert list(array.shape) == shape
    np.testing.assert_array_equal(array.ravel(), np.array(values, dtype=dtype))


def tensors(**protos: str) -> dict:
    """The C++ test's text-format TensorProtos as the arrays a model answers."""
    return {name: tf.make_ndarray(text_format.Parse(text, tensor_pb2.TensorProto())) for name, text in protos.items()}


def numbers_as_text(json_text: str):
    """CompareJsonAllValuesAsStrings: numbers (NaN, Infinity too) kept as the text written."""
    return json.loads(json_text, parse_float=str, parse_int=str, parse_constant=str)


def outputs_error(arrays: dict, row_format: bool = True) -> str:
    with pytest.raises(ServingError) as raised:
        predict_outputs(arrays, row_format)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return raised.value.message


# ------------------------------------------------------- JSON -> tensors
def test_single_unnamed_tensor():
    """JsontensorTest.SingleUnnamedTensor"""
    arrays, row_format, _ = fill_predict('{"instances": [[1,2],[3,4],[5,6]]}', default=INT32)
    assert row_format and list(arrays) == ["default"]
    assert_tensor(arrays["default"], np.int32, [3, 2], [1, 2, 3, 4, 5, 6])


def test_deeply_nested_well_formed():
    """JsontensorTest.DeeplyNestedWellFormed: 500,000 levels of nesting under a key nobody reads are fine."""
    body = '{"instances":[1], "nested":' + "[" * 500000 + "]" * 500000 + "}"
    arrays, _, _ = fill_predict(body, default=INT32)
    assert list(arrays) == ["default"]
    assert_tensor(arrays["default"], np.int32, [1], [1])


def test_deeply_nested_malformed():
    """JsontensorTest.DeeplyNestedMalformed: the error echoes the document, cut short, not the whole depth."""
    body = '{"signature_name":' + "[" * 500000 + "]" * 500000 + "}"
    message = predict_error(body, default=INT32)
    assert "key must be a string value" in message
    assert len(message) < 1000


def test_mixed_input_for_float_tensor():
    """JsontensorTest.MixedInputForFloatTensor"""
    arrays, row_format, _ = fill_predict('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', default=FLOAT)
    assert row_format
    assert_tensor(arrays["default"], np.float32, [7], [1, 2.0, 3, 4, 5.003, 0.007, 0.0])


def test_mixed_input_for_double_tensor():
    """JsontensorTest.MixedInputForDoubleTensor"""
    arrays, row_format, _ = fill_predict('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', default=DOUBLE)
    assert row_format
    assert_tensor(arrays["default"], np.float64, [7], [1.0, 2, 3, 4, 0.662, 0, 0.0])


def test_float_tensor_with_precision_loss():
    """JsontensorTest.FloatTensorWithPrecisionLoss: an integer and the same decimal both round to float32."""
    for body in ('{"instances": [1435774380]}', '{"instances": [1435774380.0]}'):
        arrays, row_format, _ = fill_predict(body, default=FLOAT)
        assert row_format
        assert_tensor(arrays["default"], np.float32, [1], [1435774380])
        assert arrays["default"][0] == np.float32(1435774336.0)


def test_float_tensor_that_exceeds_max_returns_inf():
    """JsontensorTest.FloatTensorThatExceedsMaxReturnsInf (the body holds DBL_MAX as absl::Substitute writes it)."""
    for text, expected in (("1.79769e+308", math.inf), ("-1.79769e+308", -math.inf)):
        arrays, _, _ = fill_predict('{ "instances": [%s] }' % text, default=FLOAT)
        assert_tensor(arrays["default"], np.float32, [1], [expected])


def test_float_tensor_that_exceeds_min_returns_zero():
    """JsontensorTest.FloatTensorThatExceedsMinReturnsZero (DBL_MIN as absl::Substitute writes it)."""
    for text, sign in (("2.22507e-308", 1.0), ("-2.22507e-308", -1.0)):
        arrays, _, _ = fill_predict('{ "instances": [%s] }' % text, default=FLOAT)
        assert_tensor(arrays["default"], np.float32, [1], [0.0])
        assert math.copysign(1.0, arrays["default"][0]) == sign


def test_numbers_beyond_a_double_are_parse_errors():
    """rapidjson's kParseErrorNumberTooBig (reader.h), at the number's offset, for decimals and integers."""
    for literal in ("1e400", "-2.5E+999", "1" + "0" * 400):
        assert (
            predict_error('{"instances": [1.0, %s]}' % literal, default=FLOAT)
            == "JSON Parse error: Number too big to be stored in double. at offset: 20"
        )
    arrays, _, _ = fill_predict('{"instances": [1e-400]}', default=DOUBLE)
    assert_tensor(arrays["default"], np.float64, [1], [0.0])


def test_nan_and_inf_spellings_of_rapidjson():
    """json_tensor.cc parses with kParseNanAndInfFlag: NaN, Inf and Infinity, each also with a minus."""
    arrays, _, _ = fill_predict('{"instances": [NaN, -NaN, Inf, -Inf, Infinity, -Infinity]}', default=DOUBLE)
    assert_tensor(arrays["default"], np.float64, [6], [math.nan, math.nan, math.inf, -math.inf, math.inf, -math.inf])
    assert predict_error('{"instances": [Inx]}', default=DOUBLE) == "JSON Parse error: Invalid value. at offset: 15"


def test_single_unnamed_tensor_with_signature():
    """JsontensorTest.SingleUnnamedTensorWithSignature"""
    arrays, row_format, name = fill_predict('{"signature_name": "predict_images", "instances": [[1,2]]}', default=INT32)
    assert name == "predict_images" and row_format
    assert_tensor(arrays["default"], np.int32, [1, 2], [1, 2])


def test_tensor_from_non_null_terminated_buffer():
    """JsontensorTest.TensorFromNonNullTerminatedBuffer: only the bytes given are read."""
    buffer = b'{"instances": [[1,2],[3,4],[5,6]]}X'
    arrays, row_format, _ = fill_predict(memoryview(buffer)[:-1].tobytes(), default=INT32)
    assert row_format
    assert_tensor(arrays["default"], np.int32, [3, 2], [1, 2, 3, 4, 5, 6])


def test_parsing_stops_after_the_first_value():
    """json_tensor.cc parses with kParseStopWhenDoneFlag: what follows the document is not read."""
    arrays, _, _ = fill_predict(' \n{"instances": [[1,2]]} {"instances": "ignored"} X', default=INT32)
    assert_tensor(arrays["default"], np.int32, [1, 2], [1, 2])
    assert "The document is empty" in predict_error(" \n\t", default=INT32)


def test_single_unnamed_tensor_base64_scalars():
    """JsontensorTest.SingleUnnamedTensorBase64Scalars"""
    arrays, row_format, _ = fill_predict(
        '{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}', default=STRING
    )
    assert row_format
    assert arrays["default"].shape == (2,) and arrays["default"].tolist() == [b"hello", b"world"]


def test_single_unnamed_tensor_base64_lists():
    """JsontensorTest.SingleUnnamedTensorBase64Lists"""
    arrays, row_format, _ = fill_predict(
        '{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}', default=STRING
    )
    assert row_format
    assert arrays["default"].shape == (2, 1) and arrays["default"].ravel().tolist() == [b"hello", b"world"]


def test_single_named_tensor_base64():
    """JsontensorTest.SingleNamedTensorBase64"""
    arrays, row_format, _ = fill_predict(
        '{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}', default=STRING
    )
    assert row_format
    assert arrays["default"].shape == (1, 2, 1) and arrays["default"].ravel().tolist() == [b"hello", b"world"]


def test_multiple_named_tensor():
    """JsontensorTest.MultipleNamedTensor: four inputs of four types, NaN and Infinity included."""
    arrays, row_format, _ = fill_predict(
        """{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN],
         "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity],
         "dbl_tensor": [2.0]}]}""",
        int_tensor=INT32,
        str_tensor=STRING,
        float_tensor=FLOAT,
        dbl_tensor=DOUBLE,
    )
    assert row_format and len(arrays) == 4
    assert_tensor(arrays["int_tensor"], np.int32, [2, 3, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2])
    assert arrays["str_tensor"].shape == (2, 2)
    assert arrays["str_tensor"].ravel().tolist() == [b"foo", b"bar", b"baz", b"bat"]
    assert_tensor(arrays["float_tensor"], np.float32, [2, 2], [1.0, math.nan, 2.0, math.inf])
    assert_tensor(arrays["dbl_tensor"], np.float64, [2, 1], [math.nan, 2.0])


def test_single_unnamed_tensor_columnar_format():
    """JsontensorTest.SingleUnnamedTensorColumnarFormat: with and without naming the one input."""
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        arrays, row_format, _ = fill_predict(body, int_tensor=INT32)
        assert not row_format and list(arrays) == ["int_tensor"]
        assert_tensor(arrays["int_tensor"], np.int32, [1, 3, 2], [1, 2, 3, 4, 5, 6])


def test_multiple_named_tensor_columnar_format():
    """JsontensorTest.MultipleNamedTensorColumnarFormat: a lone b64 object is a scalar string."""
    arrays, row_format, _ = fill_predict(
        """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]],
        "str_tensor": ["foo", "bar"], "bin_tensor": { "b64" : "aGVsbG8=" }}}""",
        int_tensor=INT32,
        str_tensor=STRING,
        bin_tensor=STRING,
    )
    assert not row_format and len(arrays) == 3
    assert_tensor(arrays["int_tensor"], np.int32, [1, 3, 2], [1, 2, 3, 4, 5, 6])
    assert arrays["str_tensor"].shape == (2,) and arrays["str_tensor"].tolist() == [b"foo", b"bar"]
    assert arrays["bin_tensor"].shape == () and arrays["bin_tensor"][()] == b"hello"


@pytest.mark.parametrize(
    "body, wording",
    [
        ("", "document is empty"),
        ('{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}', "must be a string value"),
        ('{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}', "Not formatted correctly"),
        ('{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size"),
        ('{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape"),
        ('{"instances": [1, [1]]}', "Expecting shape"),
        ('{"instances": [[1,2],["a", "b"]]}', "not of expected type"),
    ],
)
def test_single_unnamed_tensor_errors(body, wording):
    """JsontensorTest.SingleUnnamedTensorErrors"""
    assert wording in predict_error(body, default=INT32)


@pytest.mark.parametrize(
    "instances, inputs, wording",
    [
        (
            '[{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
            ' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]',
            {"int_tensor": INT32, "str_tensor": STRING},
            "Expecting shape",
        ),
        (
            '[{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},'
            ' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]',
            {"int_tensor": INT32, "str_tensor": STRING},
            "Expecting tensor size",
        ),
        (
            '[{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, [1, 20, 30],'
            ' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]',
            {"int_tensor": INT32, "str_tensor": STRING},
            "Expecting object but got list",
        ),
        (
            '[["baz", "bar"], {"str_tensor": ["baz", "bat"]}]',
            {"str_tensor": STRING},
            "Expecting value/list but got object",
        ),
    ],
)
def test_multiple_named_tensor_errors(instances, inputs, wording):
    """JsontensorTest.MultipleNamedTensorErrors"""
    assert wording in predict_error('{"instances": %s}' % instances, **inputs)


def test_named_instances_must_have_every_input_and_no_other():
    """json_tensor.cc's wording when an object of 'instances' lacks an input."""
    message = predict_error('{"instances": [{"a": 1}]}', a=INT32, b=INT32)
    assert message.startswith("Failed to process element: 0 of 'instances' list. JSON object: ")
    assert message.endswith(" keys must be equal to: a,b")


def test_echoed_values_are_written_as_rapidjson_writes_them():
    """json_tensor.cc's JsonValueToDebugString: pretty objects, one-line arrays, rapidjson's numbers."""
    message = predict_error('{"instances": [[1,2],[1e-5, 1e21]]}', default=INT32)
    assert message.endswith("JSON Value: 0.00001 Type: Number is not of expected type: int32")
    message = predict_error('{"signature_name": 5, "instances": [[1, 2.5], {"a": "\\n"}]}', default=INT32)
    assert message.startswith(
        'JSON Value: {\n    "signature_name": 5,\n    "instances": [[1, 2.5], {\n'
        '            "a": "\\n"\n        }]\n} not formatted correctly.'
    )


# ------------------------------------------------------- tensors -> JSON
INT_2X3X2 = """dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } dim { size: 2 } }
               int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6
               int_val: 7 int_val: 8 int_val: 9 int_val: 0 int_val: 1 int_val: 2"""
BYTES_2X2 = """dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } }
               string_val: "hello" string_val: "world" string_val: "tf" string_val: "serving" """


def test_from_json_single_tensor():
    """JsontensorTest.FromJsonSingleTensor"""
    arrays = tensors(int_tensor=INT_2X3X2)
    nested = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    assert json.loads(predict_outputs(arrays, True)) == {"predictions": nested}
    assert json.loads(predict_outputs(arrays, False)) == {"outputs": nested}


def test_from_json_single_scalar_tensor():
    """JsontensorTest.FromJsonSingleScalarTensor"""
    arrays = tensors(
        int_tensor="""dtype: DT_INT32 tensor_shape { dim { size: 5 } }
                                   int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5"""
    )
    assert json.loads(predict_outputs(arrays, True)) == {"predictions": [1, 2, 3, 4, 5]}
    assert json.loads(predict_outputs(arrays, False)) == {"outputs": [1, 2, 3, 4, 5]}


def test_from_json_single_bytes_tensor():
    """JsontensorTest.FromJsonSingleBytesTensor: outputs named *_bytes are written as base64."""
    assert json.loads(predict_outputs(tensors(str_tensor_bytes=BYTES_2X2), True)) == {
        "predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
    }


def test_from_json_single_float_tensor_six_digit_precision():
    """JsontensorTest.FromJsonSingleFloatTensorSixDigitPrecision"""
    arrays = tensors(
        float_tensor="""dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 3 } }
        float_val: 9000000 float_val: 999999 float_val: 0.50000 float_val: .0003 float_val: .00003
        float_val: 555557.5"""
    )
    assert numbers_as_text(predict_outputs(arrays, True)) == {
        "predictions": [["9e+06", "999999.0", "0.5"], ["0.0003", "3e-05", "555557.5"]]
    }


def test_from_json_single_float_tensor_non_finite():
    """JsontensorTest.FromJsonSingleFloatTensorNonFinite"""
    arrays = tensors(
        float_tensor="""dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 2 } }
        float_val: NaN float_val: Infinity float_val: 3 float_val: -Infinity"""
    )
    assert numbers_as_text(predict_outputs(arrays, True)) == {
        "predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]
    }


def test_from_json_single_tensor_errors():
    """JsontensorTest.FromJsonSingleTensorErrors"""
    assert "empty tensor map" in outputs_error({})
    complex_tensor = tensors(
        tensor="""dtype: DT_COMPLEX64 tensor_shape { dim { size: 2 } }
                                       scomplex_val: 1.0 scomplex_val: 2.0"""
    )
    assert "tensor type: complex64" in outputs_error(complex_tensor)
    assert "no shape information" in outputs_error(tensors(tensor="dtype: DT_INT32 int_val: 1"))


MULTIPLE_NAMED = {
    "int_tensor": INT_2X3X2,
    "str_tensor": """dtype: DT_STRING tensor_shape { dim { size: 2 } dim { size: 2 } }
                     string_val: "foo" string_val: "bar" string_val: "baz" string_val: "bat" """,
    "float_tensor": "dtype: DT_FLOAT tensor_shape { dim { size: 2 } dim { size: 1 } } float_val: 1.0 float_val: 2.0",
    "double_scalar_tensor": "dtype: DT_DOUBLE tensor_shape { dim { size: 2 } } double_val: 8.0 double_val: 9.0",
    "str_tensor_bytes": BYTES_2X2,
}


def test_from_json_multiple_named_tensors():
    """JsontensorTest.FromJsonMultipleNamedTensors"""
    arrays = tensors(**MULTIPLE_NAMED)
    assert json.loads(predict_outputs(arrays, True)) == {
        "predictions": [
            {
                "double_scalar_tensor": 8.0,
                "float_tensor": [1.0],
                "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"],
                "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            },
            {
                "double_scalar_tensor": 9.0,
                "float_tensor": [2.0],
                "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"],
                "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            },
        ]
    }
    assert json.loads(predict_outputs(arrays, False)) == {
        "outputs": {
            "double_scalar_tensor": [8.0, 9.0],
            "float_tensor": [[1.0], [2.0]],
            "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [
                [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            ],
        }
    }


def test_from_json_multiple_named_tensors_errors():
    """JsontensorTest.FromJsonMultipleNamedTensorsErrors"""
    arrays = tensors(
        int_tensor="""dtype: DT_INT32 tensor_shape { dim { size: 2 } dim { size: 3 } }
                      int_val: 1 int_val: 2 int_val: 3 int_val: 4 int_val: 5 int_val: 6""",
        str_tensor="""dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 3 } }
                      string_val: "foo" string_val: "bar" string_val: "baz" """,
    )
    assert "inconsistent batch size" in outputs_error(arrays)


def test_from_json_single_zero_batch_tensor():
    """JsontensorTest.FromJsonSingleZeroBatchTensor: an empty batch is an empty list."""
    arrays = tensors(int_tensor="dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }")
    assert json.loads(predict_outputs(arrays, True)) == {"predictions": []}


def test_from_json_multiple_zero_batch_tensors():
    """JsontensorTest.FromJsonMultipleZeroBatchTensors"""
    arrays = tensors(
        str_tensor="dtype: DT_STRING tensor_shape { dim { size: 0 } dim { size: 1 } dim { size: 2 } }",
        float_tensor="dtype: DT_FLOAT tensor_shape { dim { size: 0 } dim { size: 3 } dim { size: 4 } }",
    )
    assert json.loads(predict_outputs(arrays, True)) == {"predictions": []}


def test_from_json_multiple_zero_batch_tensors_errors():
    """JsontensorTest.FromJsonMultipleZeroBatchTensorsErrors"""
    arrays = tensors(
        int_tensor="dtype: DT_INT32 tensor_shape { dim { size: 0 } dim { size: 2 } }",
        str_tensor="""dtype: DT_STRING tensor_shape { dim { size: 1 } dim { size: 2 } }
                                   string_val: "foo" string_val: "bar" """,
    )
    assert "inconsistent batch size" in outputs_error(arrays)


# ------------------------------------------------- classify and regress
REQUEST_TYPES = [classification_pb2.ClassificationRequest, regression_pb2.RegressionRequest]


def fill_examples_request(body: str, request_type):
    """FillClassificationRequestFromJson / FillRegressionRequestFromJson."""
    document = parse_document(body.encode())
    request = request_type()
    if "signature_name" in document:
        request.model_spec.signature_name = signature_name(document)
    fill_examples(document, request.input)
    return request


def examples_error(body: str, request_type) -> str:
    with pytest.raises(ServingError) as raised:
        fill_examples_request(body, request_type)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return raised.value.message


def same_proto(actual, expected_text: str) -> bool:
    """Equal as text, where NaN equals NaN and features print in key order."""
    expected = text_format.Parse(expected_text, type(actual)())
    return text_format.MessageToString(actual) == text_format.MessageToString(expected)


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_classify_regress_request_no_context(request_type):
    """ClassifyRegressRequestTest.RequestNoContext"""
    request = fill_examples_request(
        """{"examples": [
        {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
        {"names": [ "baz" ], "ratings": 6.0}]}""",
        request_type,
    )
    assert same_proto(
        request,
        """input { example_list {
        examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 } } }
            feature { key: "age" value { int64_list { value: 20 } } } } }
        examples { features {
            feature { key: "names" value { bytes_list { value: "baz" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } } } } } }""",
    )


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
def test_classify_regress_request_with_context_and_signature(request_type):
    """ClassifyRegressRequestTest.RequestWithContextAndSignature"""
    request = fill_examples_request(
        """{"signature_name": "custom_signture",
        "context": {"query": "pizza", "location": [ "sfo" ]},
        "examples": [
            {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
            {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0, "intboolmix": [ 1, true, false ]},
            {"names": "bar", "ratings": -Infinity}]}""",
        request_type,
    )
    assert same_proto(
        request,
        """model_spec { signature_name: "custom_signture" }
      input { example_list_with_context {
        context { features {
            feature { key: "query" value { bytes_list { value: "pizza" } } }
            feature { key: "location" value { bytes_list { value: "sfo" } } } } }
        examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 value: nan value: inf } } }
            feature { key: "age" value { int64_list { value: 20 } } } } }
        examples { features {
            feature { key: "names" value { bytes_list { value: "baz" value: "hello" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
            feature { key: "intboolmix" value { int64_list { value: 1 value: 1 value: 0 } } } } }
        examples { features {
            feature { key: "names" value { bytes_list { value: "bar" } } }
            feature { key: "ratings" value { float_list { value: -inf } } } } } } }""",
    )


@pytest.mark.parametrize("request_type", REQUEST_TYPES)
@pytest.mark.parametrize(
    "body, wording",
    [
        (
            '{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
            "'signature_name' key must be a string",
        ),
        ('{"context": [ { "names": [ "foo", "bar" ] } ]}', "Example must be JSON object"),
        ('{"examples": { "names": [ "foo", "bar" ] }}', "list/array"),
        ('{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}', "Example must be JSON object"),
        ('{"examples": [ { "names": [ 10, null ] } ]}', "names has element with unexpected JSON type: Null"),
        ('{"examples": [ { "names": [ 10, 10.0 ] } ]}', "feature: names expecting type: int64"),
        (
            '{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
            "names has element with unexpected JSON type: Object",
        ),
        ('{"examples": [ { "names": [ [10], 20 ] } ]}', "names has element with unexpected JSON type: Array"),
        ('{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}', "Only int64_t is supported"),
    ],
)
def test_classify_regress_json_errors(request_type, body, wording):
    """ClassifyRegressRequestTest.JsonErrors"""
    assert wording in examples_error(body, request_type)


def test_integers_beyond_uint64_are_float_features():
    """json_tensor.cc's AddValueToFeature: rapidjson reads an integer beyond uint64 as a double."""
    request = fill_examples_request(
        '{"examples": [{"big": [18446744073709551616]}]}', classification_pb2.ClassificationRequest
    )
    assert list(request.input.example_list.examples[0].features.feature["big"].float_list.value) == [2.0**64]


def test_json_from_classification_result():
    """ClassifyRegressnResultTest.JsonFromClassificationResult"""
    result = text_format.Parse(
        """
        classifications { classes { label: "car" score: 0.2 } classes { label: "bike" score: 0.7 }
                          classes { label: "bus" score: 0.1 } }
        classifications { classes { label: "car" score: 0.7 } classes { label: "bike" score: 0.1 }
                          classes { label: "bus" score: 0.2 } }""",
        classification_pb2.ClassificationResult(),
    )
    assert json.loads(classification_result(result)) == {
        "results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]
    }


def test_json_from_regression_result():
    """ClassifyRegressnResultTest.JsonFromRegressionResult"""
    result = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: 0.9 } regressions { value: 1.0 }",
        regression_pb2.RegressionResult(),
    )
    assert json.loads(regression_result(result)) == {"results": [0.2, 0.9, 1.0]}


def test_json_from_regression_result_with_non_finite():
    """ClassifyRegressnResultTest.JsonFromRegressionResultWithNonFinite"""
    result = text_format.Parse(
        """regressions { value: 0.2 } regressions { value: Infinity } regressions { value: 1.0 }
        regressions { value: -Infinity } regressions { value: NaN }""",
        regression_pb2.RegressionResult(),
    )
    assert numbers_as_text(regression_result(result)) == {"results": ["0.2", "Infinity", "1.0", "-Infinity", "NaN"]}


def test_json_from_result_errors():
    """ClassifyRegressnResultTest.JsonFromResultErrors"""
    for convert, result, wording in (
        (classification_result, classification_pb2.ClassificationResult(), "empty ClassificationResults"),
        (regression_result, regression_pb2.RegressionResult(), "empty RegressionResults"),
    ):
        with pytest.raises(ServingError) as raised:
            convert(result)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert wording in raised.value.message


# MakeJsonFromTensors.StatusOK and MakeJsonFromTensors.StatusError: the REST server writes {"error": ...},
# so they are ported over HTTP in test_rest_api_handler.py.
