"""Conversion between TensorProto messages and numpy arrays.

Requests in ``tensor_content`` (raw bytes, what clients normally send) are
read in place with numpy; the typed ``*_val`` fields are decoded with
TensorFlow's own ``tf.make_ndarray`` (string tensors, which it would pad
through a Python list, are padded here in an object array). Responses are
encoded into the typed ``*_val`` fields, as TensorFlow Serving does with
``Tensor::AsProtoField``: numeric ones straight from the array's bytes into
the packed wire format (``serialized_tensor``), with no Python object per
element, so that a reply costs about its own size.

A tensor may be refused for its size (``TensorLimit``): a request's declared
shape before anything is allocated, and a reply before it is encoded.
"""

import functools
import math

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.errors import ServingError, invalid_argument

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
_OBJECT_POINTER_BYTES = 8  # a string element costs at least its pointer in an object array
_VARINT_CHUNK = 1 << 20  # elements encoded per step: bounds the varint encoder's scratch memory
_PACKED_FIELD_BY_DTYPE = {  # field number, wire encoding ("fixed" little-endian or "varint"), numpy type
    types_pb2.DT_FLOAT: (5, "fixed", "<f4"),
    types_pb2.DT_DOUBLE: (6, "fixed", "<f8"),
    types_pb2.DT_INT32: (7, "varint", np.int64),
    types_pb2.DT_INT16: (7, "varint", np.int64),
    types_pb2.DT_INT8: (7, "varint", np.int64),
    types_pb2.DT_UINT8: (7, "varint", np.int64),
    types_pb2.DT_UINT16: (7, "varint", np.int64),
    types_pb2.DT_INT64: (10, "varint", np.int64),
    types_pb2.DT_BOOL: (11, "varint", np.int64),
    types_pb2.DT_UINT32: (16, "varint", np.uint64),
    types_pb2.DT_UINT64: (17, "varint", np.uint64),
}


@functools.cache
def _numpy_dtype(dtype_enum: int) -> np.dtype:
    return np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)


def element_bytes(dtype_enum: int) -> int:
    """Bytes one element of this dtype costs in memory (strings: their pointer)."""
    if dtype_enum == types_pb2.DT_STRING:
        return _OBJECT_POINTER_BYTES
    return _numpy_dtype(dtype_enum).itemsize


def check_tensor_size(alias: str, shape, dtype_enum: int, max_bytes: int) -> None:
    """RESOURCE_EXHAUSTED when a tensor of this shape needs more than ``max_bytes`` (0: no limit)."""
    needed = math.prod(shape) * element_bytes(dtype_enum)
    if max_bytes and needed > max_bytes:
        raise ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Tensor {alias} of shape [{','.join(map(str, shape))}] and type {dtype_name(dtype_enum)} "
            f"needs {needed} bytes, more than --max_tensor_bytes={max_bytes}",
        )


def _string_array(proto: tensor_pb2.TensorProto, shape: list[int]) -> np.ndarray:
    """string_val padded with its last value (TensorFlow's rule) in place, not through a Python list."""
    values = list(proto.string_val)
    array = np.empty(math.prod(shape), dtype=object)
    array[: len(values)] = values
    array[len(values) :] = values[-1] if values else b""
    return array.reshape(shape)


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str, max_bytes: int = 0) -> np.ndarray:
    """Decodes a request tensor; a malformed or impossibly large one is INVALID_ARGUMENT, one over
    ``max_bytes`` (0: no limit) RESOURCE_EXHAUSTED, both before anything is allocated."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    try:
        is_string = proto.dtype == types_pb2.DT_STRING
        item_size = 1 if is_string else _numpy_dtype(proto.dtype).itemsize
        if any(size < 0 for size in shape) or math.prod(shape) * item_size > MAX_TENSOR_BYTES:
            raise ValueError("declared shape is invalid or too large")
    except Exception as error:  # any decoding failure is the client's input
        raise invalid_argument(f"tensor parsing error: {alias}") from error
    check_tensor_size(alias, shape, proto.dtype, max_bytes)
    try:
        if proto.tensor_content and not is_string:
            # The common case (what tf.make_tensor_proto writes): raw bytes, read in place.
            return np.frombuffer(proto.tensor_content, dtype=_numpy_dtype(proto.dtype)).reshape(shape)
        if is_string and len(proto.string_val) <= math.prod(shape):
            return _string_array(proto, shape)
        return tf.make_ndarray(proto)
    except Exception as error:
        raise invalid_argument(f"tensor parsing error: {alias}") from error


def dtype_enum_of(array: np.ndarray) -> int:
    """The DataType enum for a numpy array (object arrays hold bytes)."""
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return types_pb2.DT_STRING
    return tf.dtypes.as_dtype(array.dtype).as_datatype_enum


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def length_delimited(field_number: int, *parts) -> list:
    """The pieces of one length-delimited protobuf field (tag, length, then ``parts`` as they are)."""
    return [_varint(field_number << 3 | 2), _varint(sum(len(part) for part in parts)), *parts]


def _packed_varints(values: np.ndarray) -> list:
    """Protobuf varints of uint64 ``values`` (negative int64 already reinterpreted), in chunks of bytes."""
    chunks = []
    for start in range(0, len(values), _VARINT_CHUNK):
        chunk = values[start : start + _VARINT_CHUNK]
        widths = np.ones(len(chunk), dtype=np.uint8)
        for shift in range(7, 64, 7):
            widths += (chunk >> np.uint64(shift)) != 0
        table = np.empty((len(chunk), int(widths.max(initial=1))), dtype=np.uint8)
        for column in range(table.shape[1]):
            low_bits = ((chunk >> np.uint64(7 * column)) & np.uint64(0x7F)).astype(np.uint8)
            table[:, column] = low_bits | ((widths > column + 1).astype(np.uint8) << 7)
        chunks.append(table[np.arange(table.shape[1]) < widths[:, None]].tobytes())
    return chunks


def serialized_tensor(array: np.ndarray) -> list:
    """A response tensor as serialized TensorProto pieces (join them for the bytes).

    Byte for byte what protobuf writes for a TensorProto with the typed field
    (TF Serving's ``AsProtoField``): dtype and shape, then the packed values,
    encoded from the array's memory without a Python object per element.
    """
    array = np.asarray(array)
    dtype_enum = dtype_enum_of(array)
    field = _TYPED_FIELD_BY_DTYPE.get(dtype_enum)
    if field is None:
        return [tf.make_tensor_proto(array).SerializeToString()]
    proto = tensor_pb2.TensorProto(dtype=dtype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if dtype_enum == types_pb2.DT_STRING:
        getattr(proto, field).extend(item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat)
        return [proto.SerializeToString()]
    if not flat.size:
        return [proto.SerializeToString()]
    field_number, encoding, numpy_type = _PACKED_FIELD_BY_DTYPE[dtype_enum]
    if encoding == "fixed":
        values = [memoryview(np.ascontiguousarray(flat, dtype=numpy_type)).cast("B")]
    else:
        values = _packed_varints(flat.astype(numpy_type).view(np.uint64))
    return [proto.SerializeToString(), *length_delimited(field_number, *values)]
