"""Conversion between TensorProto messages and numpy arrays.

Requests in ``tensor_content`` (raw bytes, what clients normally send) are
read in place with numpy; the typed ``*_val`` fields are decoded with
TensorFlow's own ``tf.make_ndarray``. Responses are
encoded into the typed ``*_val`` fields, as TensorFlow Serving does with
``Tensor::AsProtoField``.
"""

import functools
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import invalid_argument

_TYPED_FIELD_BY_DTYPE = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_name(dtype_enum: int) -> str:
    """TensorFlow's DataTypeString for an enum, e.g. DT_FLOAT -> float."""
    return types_pb2.DataType.Name(dtype_enum).removeprefix("DT_").lower()


MAX_TENSOR_BYTES = 2**31 - 1  # no request can carry more (gRPC's message limit)


@functools.cache
def _numpy_dtype(dtype_enum: int) -> np.dtype:
    return np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """Decodes a request tensor; a malformed or impossibly large one is INVALID_ARGUMENT."""
    try:
        shape = [dim.size for dim in proto.tensor_shape.dim]
        is_string = proto.dtype == types_pb2.DT_STRING
        item_size = 1 if is_string else _numpy_dtype(proto.dtype).itemsize
        if any(size < 0 for size in shape) or math.prod(shape) * item_size > MAX_TENSOR_BYTES:
            raise ValueError("declared shape is invalid or too large")
        if proto.tensor_content and not is_string:
            # The common case (what tf.make_tensor_proto writes): raw bytes, read in place.
            return np.frombuffer(proto.tensor_content, dtype=_numpy_dtype(proto.dtype)).reshape(shape)
        return tf.make_ndarray(proto)
    except Exception as error:  # any decoding failure is the client's input
        raise invalid_argument(f"tensor parsing error: {alias}") from error


def dtype_enum_of(array: np.ndarray) -> int:
    """The DataType enum for a numpy array (object arrays hold bytes)."""
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return types_pb2.DT_STRING
    return tf.dtypes.as_dtype(array.dtype).as_datatype_enum


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encodes a response tensor into the typed value fields."""
    array = np.asarray(array)
    dtype_enum = dtype_enum_of(array)
    field = _TYPED_FIELD_BY_DTYPE.get(dtype_enum)
    if field is None:
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=dtype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if dtype_enum == types_pb2.DT_STRING:
        getattr(proto, field).extend(
            item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat
        )
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto
