"""TensorFlow Serving's REST JSON rules: request JSON -> arrays/Examples, results -> JSON.

Follows the behaviour of TF Serving's ``json_tensor`` (read from its source
and tests, re-implemented here):

* Predict requests carry ``instances`` (row format: a list with one entry per
  example, plain values for a single input or objects keyed by input name) or
  ``inputs`` (columnar: one value, or an object of values, for the whole
  batch). Values are converted with the signature's dtypes; strings may be
  ``{"b64": "..."}``. The shape of a value comes from its first elements and
  every other element must agree.
* Classify/Regress requests carry ``examples`` (and an optional ``context``)
  as objects of features.
* Floats are written the way TF Serving writes them (six significant digits
  when that round-trips, else full precision; whole numbers get ``.0``;
  ``NaN``/``Infinity``/``-Infinity`` for non-finite values). Output tensors
  whose name ends in ``_bytes`` are written as ``{"b64": ...}``.

Error messages use TF Serving's wording, so clients matching on them work.
"""

import base64
import binascii
import decimal
import itertools
import json
import json.decoder
import json.scanner
import math
import re

import grpc
import numpy as np
import orjson
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving.errors import ServingError, invalid_argument

_INT_RANGES = {
    types_pb2.DT_INT8: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT16: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT32: (-(2**31), 2**31 - 1),
    types_pb2.DT_UINT8: (-(2**31), 2**31 - 1),
    types_pb2.DT_INT64: (-(2**63), 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}
_NUMPY_TYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
}
_PYTHON_TO_RAPIDJSON_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


class RawNumber(str):
    """Number text written verbatim into the JSON output."""


def _dtype_string(dtype_enum: int) -> str:
    return types_pb2.DataType.Name(dtype_enum).removeprefix("DT_").lower()


# -------------------------------------------------------------- JSON text
def to_text(value) -> str:
    """JSON text; RawNumber values are written as they are (NaN/Infinity too)."""
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return format_float(value, np.float64)
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(key)}:{to_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_text(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _value_text(value) -> str:
    """How TF Serving quotes a JSON value in an error message (its JsonValueToDebugString).

    rapidjson's pretty writer with arrays on one line and objects indented by 4; writing stops
    at the first token that starts once 256 bytes are written (so deep or huge values cost
    nothing), and at a NaN or infinity, which rapidjson's writer refuses.
    """
    pieces, levels = [], []  # levels: [is_array, values written] per open container
    written = 0

    def put(text):
        nonlocal written
        pieces.append(text)
        written += len(text.encode("utf-8"))

    def prefix():
        if not levels:
            return
        level = levels[-1]
        if level[0]:
            put(", " if level[1] else "")
        else:
            put((",\n" if level[1] % 2 == 0 else ": ") if level[1] else "\n")
            if level[1] % 2 == 0:
                put(" " * 4 * len(levels))
        level[1] += 1

    def write(item) -> bool:
        if written >= _DEBUG_TEXT_LIMIT:
            return False
        if isinstance(item, (dict, list)):
            prefix()
            put("{" if isinstance(item, dict) else "[")
            levels.append([isinstance(item, list), 0])
            for key, member in item.items() if isinstance(item, dict) else ((None, member) for member in item):
                if key is not None and not write_scalar(key):
                    return False
                if not write(member):
                    return False
            if written >= _DEBUG_TEXT_LIMIT:
                return False
            is_array, count = levels.pop()
            if not is_array and count:
                put("\n" + " " * 4 * len(levels))
            put("]" if is_array else "}")
            return True
        return write_scalar(item)

    def write_scalar(item) -> bool:
        if written >= _DEBUG_TEXT_LIMIT or (isinstance(item, float) and not math.isfinite(item)):
            return False
        prefix()
        put(_rapidjson_scalar(item))
        return True

    write(value)
    return "".join(pieces)


_DEBUG_TEXT_LIMIT = 256
_CONTROL_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def _rapidjson_scalar(item) -> str:
    """A string, number, bool or null as rapidjson's writer writes it.

    A string longer than the debug limit is cut there, without its closing quote: rapidjson finishes
    the token however long, which would let one string make an error reply of any size.
    """
    if isinstance(item, str):
        quoted = '"' + "".join(
            _CONTROL_ESCAPES.get(char) or (f"\\u{ord(char):04X}" if char < " " else char)
            for char in item[:_DEBUG_TEXT_LIMIT]
        )
        return quoted if len(item) > _DEBUG_TEXT_LIMIT else quoted + '"'
    if item is None or isinstance(item, bool):
        return json.dumps(item)
    if isinstance(item, int) and -(2**63) <= item < 2**64:
        return str(item)
    return _rapidjson_double(float(item))  # rapidjson holds integers beyond 64 bits as doubles


def _rapidjson_double(value: float) -> str:
    """rapidjson's Writer::Double: shortest digits, plain decimals up to 21 digits, else ``d.ddde±x``."""
    sign, digits, exponent = decimal.Decimal(repr(abs(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    exponent += len(digits) - len(text)
    whole = len(text) + exponent  # digits before the decimal point
    sign_text = "-" if math.copysign(1.0, value) < 0 else ""
    if text == "0":
        return sign_text + "0.0"
    if 0 <= exponent and whole <= 21:
        return sign_text + text + "0" * exponent + ".0"
    if 0 < whole <= 21:
        return sign_text + text[:whole] + "." + text[whole:]
    if -6 < whole <= 0:
        return sign_text + "0." + "0" * -whole + text
    mantissa = text if len(text) == 1 else text[0] + "." + text[1:]
    return f"{sign_text}{mantissa}e{whole - 1}"


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def format_float(value, numpy_type) -> str:
    """TF Serving's WriteDecimal: %g if it round-trips, else max_digits10 digits."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    if numpy_type(float(text)) != numpy_type(value):
        text = f"{value:.{9 if numpy_type is np.float32 else 17}g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


_JSON_STRING_OR_NUMBER = re.compile(rb'"(?:[^"\\]|\\.)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?')
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _NumberTooBig(Exception):
    """A number literal rapidjson refuses (beyond a double's range); carries its text."""


def _json_int(text: str) -> int:
    """An integer literal, refused where rapidjson refuses it (before Python's int() would spend time on it)."""
    digits = text.lstrip("-")
    if len(digits) >= 310 or (len(digits) == 309 and float(digits[:308]) >= 1.7976931348623157e307):
        raise _NumberTooBig(text)
    return int(text)


def _json_float(text: str) -> float:
    """A decimal or exponent literal; one beyond a double's range (``1e400``) is refused, as rapidjson does."""
    value = float(text)
    if math.isinf(value):
        raise _NumberTooBig(text)
    return value


def _token_offset(body: bytes, token: bytes) -> int:
    """Byte offset of the first number literal ``token`` outside strings."""
    for match in _JSON_STRING_OR_NUMBER.finditer(body):
        if match.group() == token:
            return match.start()
    return 0


def _lone_surrogate_offset(body: bytes) -> int | None:
    """Byte offset of the first ``\\uD800``-``\\uDFFF`` escape not in a valid pair (rapidjson refuses them)."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    for string in _JSON_STRING_OR_NUMBER.finditer(body):
        if not string.group().startswith(b'"') or not _SURROGATE_ESCAPE.search(string.group()):
            continue
        pending_high = None
        for escape in _ESCAPE.finditer(string.group()):
            unit = int(escape.group(1), 16) if escape.group(1) else None
            offset = string.start() + escape.start()
            if pending_high is not None and not (unit is not None and 0xDC00 <= unit <= 0xDFFF):
                return pending_high
            if pending_high is not None:
                pending_high = None
            elif unit is not None and 0xD800 <= unit <= 0xDBFF:
                pending_high = offset
            elif unit is not None and 0xDC00 <= unit <= 0xDFFF:
                return offset
        if pending_high is not None:
            return pending_high
    return None


def parse_document(body: bytes) -> dict:
    """Request bytes -> JSON object, or TF Serving's parse error.

    Read as TF Serving's rapidjson reads it: the first JSON value counts and whatever follows it
    is ignored, NaN, Inf and Infinity (signed) are numbers, a number beyond a double is an error,
    and nesting has no depth limit.
    """
    try:  # orjson is strict RFC 8259: what it reads, rapidjson reads alike, about twice as fast as json
        document = orjson.loads(body)
    except orjson.JSONDecodeError:  # or a body only rapidjson reads (NaN, trailing bytes, deep nesting), or an error
        document = _read_as_rapidjson(body)
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {_value_text(document)} Is not object")
    return document


def _read_as_rapidjson(body: bytes):
    """The first JSON value of ``body`` as rapidjson reads it, or its parse error in rapidjson's words."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    start = _JSON_WHITESPACE.match(text).end()
    if start == len(text):
        raise invalid_argument(f"JSON Parse error: The document is empty. at offset: {len(body)}")
    try:
        try:
            document, _ = _DECODER.raw_decode(text, start)
        except RecursionError:
            document = _decode_deeply_nested(text, start)
        except json.JSONDecodeError as error:
            if not _RAPIDJSON_ONLY_CONSTANTS.match(text, error.pos):
                raise
            document = _decode_deeply_nested(text, start)
    except _NumberTooBig as error:
        offset = _token_offset(body, str(error).encode("ascii"))
        message = f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"
        raise invalid_argument(message) from None
    except json.JSONDecodeError as error:
        reason = next(
            (text for prefix, text in _PYTHON_TO_RAPIDJSON_ERRORS.items() if error.msg.startswith(prefix)), None
        )
        if reason is None and error.msg.startswith("Expecting ',' delimiter"):
            opener = text[: error.pos].rstrip()
            reason = (
                "Missing a comma or '}' after an object member."
                if opener.rfind("{") > opener.rfind("[")
                else "Missing a comma or ']' after an array element."
            )
        offset = len(text[: error.pos].encode("utf-8"))
        raise invalid_argument(f"JSON Parse error: {reason or 'Invalid value.'} at offset: {offset}") from None
    surrogate_offset = _lone_surrogate_offset(body)
    if surrogate_offset is not None:
        raise invalid_argument(
            f"JSON Parse error: The surrogate pair in string is invalid. at offset: {surrogate_offset}"
        )
    return document


_DECODER = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float)
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_JSON_WHITESPACE_CHARACTERS = " \t\n\r"
_OPENING_BRACKETS = re.compile(r"(?:\[[ \t\n\r]*)+")
_CLOSING_BRACKETS = re.compile(r"\](?:[ \t\n\r]*\])*")
# rapidjson's kParseNanAndInfFlag spellings, each before its prefixes (the first match is taken).
_JSON_CONSTANTS = {
    "true": True,
    "false": False,
    "null": None,
    "NaN": math.nan,
    "-NaN": math.nan,
    "-Infinity": -math.inf,
    "Infinity": math.inf,
    "-Inf": -math.inf,
    "Inf": math.inf,
}
# The spellings Python's reader does not know; a document with one is read by _decode_deeply_nested.
_RAPIDJSON_ONLY_CONSTANTS = re.compile(r"-NaN|-?Inf(?!inity)")


def _decode_deeply_nested(text: str, index: int):
    """The JSON value at ``index``, read without recursion (for nesting too deep for ``json``, and
    rapidjson's number spellings it does not know).

    Runs of brackets are opened and closed in bulk, so that depth costs little per level.
    """
    containers, keys = [], []  # per open object or array: it, and the key of the member being read (None in arrays)

    def skip(position):
        while position < len(text) and text[position] in _JSON_WHITESPACE_CHARACTERS:
            position += 1
        return position

    def key_at(position):
        if not text.startswith('"', position):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, position)
        key, position = json.decoder.scanstring(text, position + 1)
        position = skip(position)
        if not text.startswith(":", position):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, position)
        return key, skip(position + 1)

    while True:
        index = skip(index)
        arrays = _OPENING_BRACKETS.match(text, index)
        if arrays:
            depth = arrays.group().count("[")
            containers.extend([] for _ in range(depth))
            keys.extend([None] * depth)
            index = arrays.end()
            if not text.startswith("]", index):
                continue
            value, index = containers.pop(), index + 1
            keys.pop()
        elif text.startswith("{", index):
            index = skip(index + 1)
            if not text.startswith("}", index):
                key, index = key_at(index)
                containers.append({})
                keys.append(key)
                continue
            value, index = {}, index + 1
        elif text.startswith('"', index):
            value, index = json.decoder.scanstring(text, index + 1)
        else:
            number = json.scanner.NUMBER_RE.match(text, index)
            constant = next((name for name in _JSON_CONSTANTS if text.startswith(name, index)), None)
            if number:
                integer, fraction, exponent = number.groups()
                literal = integer + (fraction or "") + (exponent or "")
                value = _json_float(literal) if fraction or exponent else _json_int(integer)
                index = number.end()
            elif constant:
                value, index = _JSON_CONSTANTS[constant], index + len(constant)
            else:
                raise json.JSONDecodeError("Expecting value", text, index)
        while True:  # the value is complete: store it, then close every container it completes
            if not containers:
                return value
            container, key = containers[-1], keys[-1]
            if key is None:
                container.append(value)
            else:
                container[key] = value
            index = skip(index)
            if text.startswith(",", index):
                if key is None:
                    index += 1
                else:
                    keys[-1], index = key_at(skip(index + 1))
                break
            closers = _CLOSING_BRACKETS.match(text, index) if key is None else None
            if closers:  # each "]" closes the innermost array and stores it in the next one
                for position in [index + offset for offset, char in enumerate(closers.group()) if char == "]"][1:]:
                    value = containers.pop()
                    keys.pop()
                    if not containers:  # the document ended; what follows is not read
                        return value
                    if keys[-1] is not None:
                        raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
                    containers[-1].append(value)
                value, index = containers.pop(), closers.end()
                keys.pop()
            elif key is not None and text.startswith("}", index):
                value, index = containers.pop(), index + 1
                keys.pop()
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, index)


def signature_name(document: dict) -> str:
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {_value_text(document)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


# ------------------------------------------------------- JSON -> tensors
def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _scalar(value, dtype_enum: int):
    """One leaf value converted for dtype_enum (TF Serving's AddValueToTensor)."""

    def type_error():
        return invalid_argument(
            f"JSON Value: {_value_text(value)} Type: {_json_type(value)} "
            f"is not of expected type: {_dtype_string(dtype_enum)}"
        )

    if isinstance(value, dict):
        if dtype_enum != types_pb2.DT_STRING:
            raise type_error()
        if not _is_b64(value):
            raise invalid_argument(f"JSON Value: {_value_text(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None
    if dtype_enum == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise type_error()
        return value.encode("utf-8")
    if dtype_enum == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise type_error()
        return value
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype_enum in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if not is_number:
            raise type_error()
        try:  # any number, as a double first (rapidjson's GetFloat/GetDouble); float32 overflows to inf in _array
            return float(value)
        except OverflowError:
            raise invalid_argument("JSON Parse error: Number too big to be stored in double.") from None
    if dtype_enum in _INT_RANGES:
        low, high = _INT_RANGES[dtype_enum]
        if not (is_number and isinstance(value, int) and low <= value <= high):
            raise type_error()
        return value
    raise ServingError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"Conversion of JSON Value: {_value_text(value)} to type: {_dtype_string(dtype_enum)}",
    )


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype_enum: int, flat: list) -> None:
    """TF Serving's FillTensorProto: every leaf at the same level, every list the same size."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(
                f"JSON Value: {_value_text(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {len(shape)}"
            )
        flat.append(_scalar(value, dtype_enum))
        return
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype_enum, flat)


def _array(flat: list, shape: list[int], dtype_enum: int) -> np.ndarray:
    if dtype_enum == types_pb2.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if dtype_enum in _INT_RANGES:  # stored in int_val and cast, as in TF Serving: narrower types wrap around
        wide = np.uint64 if dtype_enum == types_pb2.DT_UINT64 else np.int64
        return np.array(flat, dtype=wide).astype(_NUMPY_TYPES[dtype_enum]).reshape(shape)
    with np.errstate(over="ignore"):  # doubles beyond float32 become +-inf, as C++'s float cast makes them
        return np.array(flat, dtype=_NUMPY_TYPES[dtype_enum]).reshape(shape)


def _regular_lists(value: list, shape: list[int]) -> list | None:
    """The innermost lists of ``value`` (those holding the leaves), if every item of each level above is a
    list of the shape's length there; None otherwise. Checked by C loops (``map``), one pass per level."""
    lists = [value]
    for size in shape[1:]:
        lists = list(itertools.chain.from_iterable(lists))
        if set(map(type, lists)) != {list} or set(map(len, lists)) != {size}:
            return None
    return lists


def _numeric_array(value, dtype_enum: int) -> np.ndarray | None:
    """``value`` converted by numpy's C loops, when it is a regular nested list of numbers (or bools) that
    TF Serving's rules take as they are; None otherwise, and the per-element path decides (with its errors)."""
    is_float = dtype_enum in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)
    allowed = (
        {int, float}
        if is_float
        else {bool}
        if dtype_enum == types_pb2.DT_BOOL
        else {int}
        if dtype_enum in _INT_RANGES and dtype_enum != types_pb2.DT_UINT64
        else None
    )
    shape = _dense_shape(value)
    if allowed is None or not shape or 0 in shape:
        return None
    lists = _regular_lists(value, shape)
    if lists is None:
        return None
    leaf_types = set(map(type, itertools.chain.from_iterable(lists)))
    if not leaf_types <= allowed:
        return None
    try:
        array = np.fromiter(
            itertools.chain.from_iterable(lists),
            count=math.prod(shape),
            dtype=np.float64 if is_float else np.bool_ if bool in allowed else np.int64,
        )
    except OverflowError:  # an integer beyond int64
        return None
    array = array.reshape(shape)
    if dtype_enum in _INT_RANGES:
        low, high = _INT_RANGES[dtype_enum]
        if array.min() < low or array.max() > high:
            return None
    with np.errstate(over="ignore"):  # as _array: doubles beyond float32 become +-inf
        return array.astype(_NUMPY_TYPES[dtype_enum], copy=False)


def value_to_array(value, dtype_enum: int) -> np.ndarray:
    fast = _numeric_array(value, dtype_enum)
    if fast is not None:
        return fast
    shape = _dense_shape(value)
    flat = []
    _fill(value, 0, shape, dtype_enum, flat)
    return _array(flat, shape, dtype_enum)


def _status_text(error: ServingError) -> str:
    return f"{error.code_name}: {error.message}"


def _fast_instances(instances: list, input_types: dict, named: bool) -> dict | None:
    """Row format converted a column at a time by ``_numeric_array``, when every column is regular and
    numeric (and every object has exactly the inputs' keys); None otherwise."""
    if not named:
        array = _numeric_array(instances, next(iter(input_types.values())))
        return None if array is None else {next(iter(input_types)): array}
    keys = set(input_types)
    if not all(type(instance) is dict and instance.keys() == keys for instance in instances):
        return None
    arrays = {}
    for name, dtype_enum in input_types.items():
        arrays[name] = _numeric_array([instance[name] for instance in instances], dtype_enum)
        if arrays[name] is None:
            return None
    return arrays


def _instances_to_arrays(instances: list, input_types: dict) -> dict:
    if not isinstance(instances[0], dict) and len(input_types) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple "
            "input tensors required as per tensorinfo_map"
        )
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    names = sorted(input_types)
    fast = _fast_instances(instances, input_types, named)
    if fast is not None:
        return fast
    columns = {name: [] for name in names}
    shapes = {}

    def add(item, name):
        shape = _dense_shape(item)
        flat = []
        _fill(item, 0, shape, input_types[name], flat)
        if name not in shapes:
            shapes[name] = shape
        elif math.prod(shapes[name]) != len(flat):
            raise invalid_argument(f"Expecting tensor size: {math.prod(shapes[name])} but got: {len(flat)}")
        elif shapes[name] != shape:
            raise invalid_argument(
                f"Expecting shape [{','.join(map(str, shapes[name]))}] but got: [{','.join(map(str, shape))}]"
            )
        columns[name].extend(flat)

    for index, element in enumerate(instances):
        element_is_object = isinstance(element, dict) and not _is_b64(element)
        if named:
            if not element_is_object:
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    if name not in input_types:
                        raise invalid_argument(f"JSON object: does not have named input: {name}")
                    add(item, name)
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' "
                        f"list. Error: {_status_text(error)}"
                    ) from None
            if set(element) != set(names):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_value_text(element)} keys must be equal to: {','.join(names)}"
                )
        else:
            if element_is_object:
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(element, names[0])
            except ServingError as error:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: {_status_text(error)}"
                ) from None
    return {name: _array(columns[name], [len(instances)] + shapes[name], input_types[name]) for name in names}


def _inputs_to_arrays(inputs, input_types: dict) -> dict:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(input_types) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple "
                "input tensors required as per tensorinfo_map"
            )
        name = next(iter(input_types))
        return {name: value_to_array(inputs, input_types[name])}
    arrays = {}
    for name in sorted(input_types):
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = value_to_array(inputs[name], input_types[name])
    return arrays


def predict_inputs(document: dict, signature) -> tuple[dict, bool]:
    """Predict body -> ({alias: ndarray}, row_format)."""
    input_types = {alias: info.dtype for alias, info in signature.inputs.items()}
    if not input_types:
        raise invalid_argument(f"Failed to get input map for signature: {document.get('signature_name') or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {_value_text(document)} Not formatted correctly expecting only "
            "one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {_value_text(document)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_value_text(document)} No values in 'instances' array")
        return _instances_to_arrays(instances, input_types), True
    if has_inputs:
        return _inputs_to_arrays(document["inputs"], input_types), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _add_to_feature(value, name: str, feature: feature_pb2.Feature) -> None:
    kind = feature.WhichOneof("kind")

    def require(wanted):
        if kind not in (None, wanted):
            raise invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: "
                f"{ {'bytes_list': 'bytes', 'float_list': 'float', 'int64_list': 'int64'}[kind] }"
            )

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        require("bytes_list")
        feature.bytes_list.value.append(_scalar(value, types_pb2.DT_STRING))
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, float) or not -(2**63) <= value < 2**64:  # rapidjson reads such integers as doubles
        require("float_list")
        feature.float_list.value.append(_scalar(value, types_pb2.DT_FLOAT))
    else:
        require("int64_list")
        if value >= 2**63:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)


def _example(value) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
    return example


def fill_examples(document: dict, model_input) -> None:
    """Classify/Regress body -> tensorflow.serving.Input (examples, optional context)."""
    if "context" in document:
        target = model_input.example_list_with_context
        target.context.CopyFrom(_example(document["context"]))
    else:
        target = model_input.example_list
    examples = document.get("examples")
    if "examples" not in document:
        raise invalid_argument(
            f"JSON Value: {_value_text(document)} When method is classify, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {_value_text(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {_value_text(document)} 'examples' value is an empty array")
    for example in examples:
        target.examples.add().CopyFrom(_example(example))


# ------------------------------------------------------- tensors -> JSON
def _writer_for(array: np.ndarray, name: str):
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        as_b64 = name.endswith("_bytes")

        def write_string(value):
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            return {"b64": base64.b64encode(data).decode("ascii")} if as_b64 else data.decode("utf-8", "replace")

        return write_string
    if array.dtype in (np.float32, np.float64):
        numpy_type = array.dtype.type
        return lambda value: RawNumber(format_float(value, numpy_type))
    if array.dtype.kind in ("i", "u", "b"):
        return lambda value: value.item()
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(array: np.ndarray, write):
    if array.ndim == 0:
        return write(array[()])
    if array.ndim == 1:
        return [write(value) for value in array]
    return [_nest(item, write) for item in array]


_TEXT_CHUNK = 1 << 18  # elements formatted per step: bounds the scratch memory of _array_text


def _number_texts(chunk: np.ndarray) -> np.ndarray:
    """Each number's JSON text as ``_writer_for`` writes it, formatted by C loops (a numpy string array)."""
    if chunk.dtype == np.bool_:
        return np.where(chunk, "true", "false")
    if chunk.dtype.kind in "iu":
        return chunk.astype(np.str_)
    texts = np.array(("%g\n" * chunk.size % tuple(chunk.tolist())).split("\n")[:-1])
    finite = np.isfinite(chunk)
    with np.errstate(over="ignore"):
        inexact = finite & (texts.astype(np.float64).astype(chunk.dtype) != chunk)
    if inexact.any():  # %g does not round-trip: max_digits10, as format_float
        digits = 9 if chunk.dtype == np.float32 else 17
        redone = chunk[inexact].tolist()
        texts = texts.astype(object)
        texts[inexact] = (f"%.{digits}g\n" * len(redone) % tuple(redone)).split("\n")[:-1]
        texts = texts.astype(np.str_)
    whole = finite & (np.strings.find(texts, ".") < 0) & (np.strings.find(texts, "e") < 0)
    texts = np.where(whole, np.strings.add(texts, ".0"), texts)
    texts = np.where(np.isnan(chunk), "NaN", texts)
    return np.where(np.isinf(chunk), np.where(chunk > 0, "Infinity", "-Infinity"), texts)


def _array_text(array: np.ndarray, name: str) -> str:
    """An output tensor as nested JSON lists. Numbers are formatted a chunk at a time by numpy, with no
    Python object per element kept; strings and empty tensors go through ``_nest``."""
    if (
        array.size == 0
        or array.ndim == 0
        or array.dtype not in (np.float32, np.float64)
        and array.dtype.kind not in "iub"
    ):
        return to_text(_nest(array, _writer_for(array, name)))
    strides = [math.prod(array.shape[level:]) for level in range(1, array.ndim)]
    # After element i: "]" and "[" for every inner list that closes there, around the comma.
    separators = np.array(["]" * count + "," + "[" * count for count in range(array.ndim)])
    flat = array.reshape(-1)
    pieces = ["[" * array.ndim]
    for start in range(0, flat.size, _TEXT_CHUNK):
        chunk = flat[start : start + _TEXT_CHUNK]
        following = np.arange(start + 1, start + 1 + chunk.size)
        closing = (
            sum((following % stride == 0).astype(np.int64) for stride in strides)
            if strides
            else np.zeros(chunk.size, dtype=np.int64)
        )
        chunk_separators = separators[closing]
        if start + chunk.size == flat.size:
            chunk_separators[-1] = ""
        pieces.append("".join(np.strings.add(_number_texts(chunk), chunk_separators).tolist()))
    pieces.append("]" * array.ndim)
    return "".join(pieces)


def predict_outputs(outputs: dict, row_format: bool) -> str:
    """Output tensors -> response JSON text in the request's format."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    if not row_format:
        if len(arrays) == 1:
            return '{"outputs":' + _array_text(*next(iter(arrays.items()))[::-1]) + "}"
        return (
            '{"outputs":{'
            + ",".join(f"{json.dumps(name)}:{_array_text(array, name)}" for name, array in arrays.items())
            + "}}"
        )
    batch_size = None
    for name, array in arrays.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch_size is not None and array.shape[0] != batch_size:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch_size}"
            )
        batch_size = array.shape[0]
    if len(arrays) == 1:
        return '{"predictions":' + _array_text(*next(iter(arrays.items()))[::-1]) + "}"
    values = {name: _nest(array, _writer_for(array, name)) for name, array in arrays.items()}
    return to_text(
        {"predictions": [{name: column[index] for name, column in values.items()} for index in range(batch_size)]}
    )


def classification_result(result) -> str:
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    return to_text(
        {
            "results": [
                [[entry.label, RawNumber(format_float(entry.score, np.float32))] for entry in classifications.classes]
                for classifications in result.classifications
            ]
        }
    )


def regression_result(result) -> str:
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return to_text(
        {"results": [RawNumber(format_float(regression.value, np.float32)) for regression in result.regressions]}
    )
