"""TensorFlow Serving's JSON <-> tensor mapping, on numpy arrays.

Follows tensorflow_serving/util/json_tensor.cc and the REST API doc
(g3doc/api_rest.md): the row (`instances`) and columnar (`inputs`) request
formats, `{"b64": ...}` binary strings, `NaN`/`Infinity` tokens, TF
Serving's number conversion (any JSON number fills a float tensor, cast as
`static_cast<float>(double)`; integer tensors take integers only), and the
`predictions` / `outputs` response shapes. Error messages reproduce TF
Serving's wording so clients that match on them work.

Parsing (`parse_json`) has two paths with one result:

- Fast: every array that holds only numbers is located in the body text,
  checked to be dense (its bracket structure must be the one its shape
  implies, compared as text) and parsed by simdjson straight into a buffer
  of doubles (no Python object per number); it becomes a `NumberArray`,
  cast to its tensor's dtype once that is known. The rest of the document
  is parsed by orjson with a placeholder where each array was. No Python
  code runs per number.
- Exact: anything else (`NaN`/`Infinity` tokens, `true` or strings among
  numbers, ragged arrays, invalid JSON) is parsed as a whole, by orjson or,
  for the tokens orjson rejects, by the standard library, and converted
  element by element as TF Serving's FillTensorProto does, which also
  produces its error messages.
"""

import base64
import binascii
import functools
import json
import math
import re
import threading

import numpy as np
import orjson
import simdjson

from serving.errors import invalid_argument

# tensorflow/core/framework/types.proto
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_HALF, DT_UINT32, DT_UINT64, DT_UINT16, DT_BFLOAT16 = 9, 10, 19, 22, 23, 17, 14

# DataTypeString() names, as TF Serving prints them in errors.
DTYPE_NAMES = {
    DT_FLOAT: "float",
    DT_DOUBLE: "double",
    DT_INT32: "int32",
    DT_UINT8: "uint8",
    DT_INT16: "int16",
    DT_INT8: "int8",
    DT_STRING: "string",
    DT_INT64: "int64",
    DT_BOOL: "bool",
    DT_HALF: "half",
    DT_UINT32: "uint32",
    DT_UINT64: "uint64",
    DT_UINT16: "uint16",
    DT_BFLOAT16: "bfloat16",
}
NUMPY_DTYPES = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_UINT8: np.uint8,
    DT_INT16: np.int16,
    DT_INT8: np.int8,
    DT_STRING: object,
    DT_INT64: np.int64,
    DT_BOOL: np.bool_,
    DT_HALF: np.float16,
    DT_UINT32: np.uint32,
    DT_UINT64: np.uint64,
    DT_UINT16: np.uint16,
}
_INT_RANGES = {
    DT_INT32: (-(2**31), 2**31 - 1),
    DT_INT16: (-(2**31), 2**31 - 1),
    DT_INT8: (-(2**31), 2**31 - 1),
    DT_UINT8: (-(2**31), 2**31 - 1),
    DT_INT64: (-(2**63), 2**63 - 1),
    DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
}
# Any JSON number converts to these (TF Serving: val.GetFloat() / GetDouble()).
_FLOAT_TYPES = (DT_FLOAT, DT_DOUBLE, DT_HALF)

ROW = "row"
COLUMNAR = "columnar"
_MAX_VALUE_CHARS = 200  # TF Serving prints whole values in errors; we truncate.


def dtype_name(dtype):
    return DTYPE_NAMES.get(dtype, f"type enum {dtype}")


# ----------------------------------------------------------------------------
# JSON parsing


class NumberArray:
    """A dense JSON array of numbers from a request: its text, its shape and its values as doubles.

    Stands in the parsed document for the array until the dtype of the tensor
    it fills is known (`to_array`); `to_list` gives the nested lists the exact
    path and error messages need.
    """

    __slots__ = ("text", "shape", "doubles")

    def __init__(self, text, shape, doubles):
        self.text = text
        self.shape = shape
        self.doubles = doubles  # flat float64, as TF Serving reads any JSON number (GetDouble) before its cast

    def to_array(self, dtype):
        """The numpy array for a tensor of `dtype`, or None where only the exact path can answer."""
        if dtype in _FLOAT_TYPES:
            with np.errstate(over="ignore"):  # beyond float32: +-inf, as TF Serving's cast of the double gives
                return self.doubles.astype(NUMPY_DTYPES[dtype]).reshape(self.shape)
        if dtype in _INT_RANGES:
            array = _flat_numbers(self.text, "i")  # integers only: 1.0 does not fill an integer tensor
            low, high = _INT_RANGES[dtype]
            if array is None or array.min() < low or array.max() > high:
                return None
            return array.astype(NUMPY_DTYPES[dtype]).reshape(self.shape)
        return None

    def to_list(self):
        return orjson.loads(self.text)


_SIMDJSON_TYPES = {"d": np.float64, "i": np.int64}
_parsers = threading.local()  # a simdjson parser keeps its buffers between documents; one per thread
_REUSED_PARSER_BYTES = 1 << 20  # larger arrays get a parser of their own, freed with them


def _flat_numbers(text, of_type):
    """The numbers of a JSON array (nested to any depth) as one flat array of doubles ("d") or int64 ("i").

    None when the text is not valid JSON, holds anything but numbers, or a
    number that does not fit (e.g. 1e400, integers beyond 64 bits): the exact
    path then decides.
    """
    if len(text) > _REUSED_PARSER_BYTES:  # a parser keeps buffers as large as its largest document
        parser = simdjson.Parser()
    else:
        parser = getattr(_parsers, "parser", None)
        if parser is None:
            parser = _parsers.parser = simdjson.Parser()
    try:  # the parsed document is dropped at once: a parser refuses new text while one is alive
        buffer = parser.parse(text).as_buffer(of_type=of_type)
    except (ValueError, TypeError, RuntimeError):
        return None
    return np.frombuffer(buffer, _SIMDJSON_TYPES[of_type])


def _number_array_default(value):
    """orjson's `default`: NumberArrays are written as the JSON arrays they came from."""
    if isinstance(value, NumberArray):
        return value.to_list()
    raise TypeError


def _string_default(value):
    """The standard library's `default`, for what orjson cannot write (NaN, huge integers)."""
    return value.to_list() if isinstance(value, NumberArray) else str(value)


# A string (its closing quote optional, so that an unterminated one still ends
# the scan in one step) or the start of an array.
_STRING_OR_ARRAY = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|\[')
_DIGIT = re.compile(rb"[0-9]")
_NUMBER_AND_SPACE = b"0123456789.eE+- \t\r\n"
# In a valid document an array of numbers is followed (after commas and white
# space) by the end of its object, the next key, or an object in the list
# that holds it; anything else between (true, NaN, a string in the array, ...)
# fails the structure check and leaves the document to the exact path.
_AFTER_ARRAY = (b"}", b'"', b"{")
_PLACEHOLDER = "\x00"  # a key no request can hold without writing \u0000, which disables the fast path
_MAX_FAST_RANK = 32
_CACHED_STRUCTURE_BYTES = 1 << 16  # structures up to this size have their shape cached


def _dense_structure(dims):
    """The text of a dense array of shape `dims` with its numbers (and white space) removed."""
    text = b""
    for size in reversed(dims):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


def _dense_shape_of(structure):
    """The shape whose dense structure `structure` is, or None (ragged, not an array of numbers)."""
    if len(structure) <= _CACHED_STRUCTURE_BYTES:  # requests of a model repeat a few shapes
        return _cached_dense_shape_of(structure)
    return _infer_dense_shape(structure)


@functools.lru_cache(maxsize=32)
def _cached_dense_shape_of(structure):
    return _infer_dense_shape(structure)


def _infer_dense_shape(structure):
    rank = len(structure) - len(structure.lstrip(b"["))
    if not 0 < rank <= _MAX_FAST_RANK:
        return None
    dims, child_length = [], 0
    for level in range(rank, 0, -1):  # innermost list first
        # The first list at `level` starts at offset level - 1 and ends with
        # the first run of (rank - level + 1) closing brackets.
        closing = structure.find(b"]" * (rank - level + 1))
        if closing < 0:
            return None
        length = closing + (rank - level + 1) - (level - 1)
        size, rest = divmod(length - 1, child_length + 1)  # length = 2 + size * child_length + (size - 1)
        if rest or size < 1:
            return None
        dims.append(size)
        child_length = length
    dims.reverse()
    return tuple(dims) if _dense_structure(dims) == structure else None


def _parse_with_number_arrays(body):
    """The document with each dense array of numbers as a NumberArray; None where the exact path must parse it."""
    if b"\\" in body and b"\\u0000" in body:  # memchr for the backslash first: most bodies have none
        return None
    pieces, arrays, position, done = [], [], 0, 0
    while True:
        match = _STRING_OR_ARRAY.search(body, position)
        if match is None:
            break
        if match.group() != b"[":  # a string: skipped whole
            position = match.end()
            continue
        start = match.start()
        ends = [i for i in (body.find(c, start) for c in _AFTER_ARRAY) if i >= 0]
        text = body[start : min(ends) if ends else len(body)].rstrip(b" \t\r\n,")
        if not _DIGIT.search(text):  # e.g. the `[` of a list of objects or strings
            position = start + 1
            continue
        structure = text.translate(None, _NUMBER_AND_SPACE)
        if not text.endswith(b"]") or structure.translate(None, b"[],"):
            return None  # something other than numbers: true, NaN, a string, ...
        shape = _dense_shape_of(structure)
        if shape is None:
            return None
        doubles = _flat_numbers(text, "d")
        if doubles is None or len(doubles) != math.prod(shape):
            return None  # not valid JSON numbers
        pieces += [body[done:start], b'{"\\u0000":%d}' % len(arrays)]
        arrays.append(NumberArray(text, shape, doubles))
        position = done = start + len(text)
    if not arrays:
        return None
    pieces.append(body[done:])
    try:
        doc = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        return None
    return _put_number_arrays(doc, arrays)


def _is_placeholder(value):
    return isinstance(value, dict) and len(value) == 1 and _PLACEHOLDER in value


def _put_number_arrays(doc, arrays):
    if _is_placeholder(doc):
        return arrays[doc[_PLACEHOLDER]]
    stack = [doc]
    while stack:  # iterative: documents may nest deeper than Python's recursion limit
        container = stack.pop()
        for key, value in container.items() if isinstance(container, dict) else enumerate(container):
            if _is_placeholder(value):
                container[key] = arrays[value[_PLACEHOLDER]]
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return doc


def parse_json(body):
    """Parses a request body as TF Serving does; returns the top-level object (arrays of numbers as NumberArray)."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    if isinstance(body, str):
        body = body.encode("utf-8", errors="surrogatepass")
    doc = _parse_with_number_arrays(bytes(body))
    if doc is None:
        doc = _parse_exactly(body)
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {value_to_string(doc)} Is not object")
    return doc


def _parse_exactly(body):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # orjson has no NaN or Infinity tokens; TF Serving (rapidjson) accepts them
        return json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: document nested too deeply") from None


def value_to_string(value):
    """A JSON value for an error message (TF Serving's JsonValueToString), truncated."""
    if isinstance(value, NumberArray):
        value = value.to_list()
    try:
        text = orjson.dumps(value, default=_number_array_default).decode()
    except TypeError:
        text = json.dumps(value, allow_nan=True, default=_string_default)
    if isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if len(text) > _MAX_VALUE_CHARS:
        text = text[:_MAX_VALUE_CHARS] + "...(truncated)"
    return text


def json_type_string(value):
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, (list, NumberArray)):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64_object(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


# ----------------------------------------------------------------------------
# JSON value -> numpy array (one named tensor)


def _type_error(value, dtype):
    return invalid_argument(
        f"JSON Value: {value_to_string(value)} Type: {json_type_string(value)} is not of expected type: {dtype_name(dtype)}"
    )


def _decode_b64(value):
    if not is_b64_object(value):
        return invalid_argument(f"JSON Value: {value_to_string(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        try:  # absl::Base64Unescape also accepts unpadded and web-safe input
            text = value["b64"].strip().replace("-", "+").replace("_", "/")
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            return invalid_argument("Unable to base64 decode")


def _scalar(value, dtype):
    """Converts one JSON leaf to a Python value of `dtype`, or returns a ServingError."""
    if dtype in _FLOAT_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _type_error(value, dtype)
        return value
    if dtype == DT_STRING:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            return _decode_b64(value)
        return _type_error(value, dtype)
    if dtype == DT_BOOL:
        return value if isinstance(value, bool) else _type_error(value, dtype)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return _type_error(value, dtype)
        return value
    return invalid_argument(f"Conversion of JSON Value: {value_to_string(value)} to type: {dtype_name(dtype)}")


def _dense_shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _walk(value, dtype):
    """TF Serving's FillTensorProto: the exact, element-by-element conversion."""
    shape = _dense_shape(value)
    rank = len(shape)
    flat = []

    def fill(val, level):
        if not isinstance(val, list):
            if level != rank:
                raise invalid_argument(
                    f"JSON Value: {value_to_string(val)} found at incorrect level: {level + 1} in the JSON DOM. "
                    f"Expected at level: {rank}"
                )
            if isinstance(val, dict) and dtype != DT_STRING:
                raise _type_error(val, dtype)
            result = _scalar(val, dtype)
            if isinstance(result, Exception):
                raise result
            flat.append(result)
            return
        if level >= rank:
            raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(val) != shape[level]:
            raise invalid_argument(
                f"Encountered list at unexpected size: {len(val)} at level: {level} expected size: {shape[level]}"
            )
        for item in val:
            fill(item, level + 1)

    fill(value, 0)
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise invalid_argument(f"Conversion of JSON Value: {value_to_string(value)} to type: {dtype_name(dtype)}")
    if np_dtype is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        try:
            with np.errstate(over="ignore"):
                array = np.array(flat, dtype=np_dtype)
        except OverflowError:  # an integer beyond any double (the standard library parses those)
            raise invalid_argument("JSON Parse error: Number too big to be stored in double") from None
    return array.reshape(shape)


def json_to_array(value, dtype):
    """One JSON value (scalar, nested list or NumberArray) -> numpy array of `dtype`."""
    if isinstance(value, NumberArray):
        array = value.to_array(dtype)
        if array is not None:
            return array
        value = value.to_list()  # the exact path says what is wrong
    if isinstance(value, dict) and dtype != DT_STRING:
        raise _type_error(value, dtype)
    return _walk(value, dtype)


# ----------------------------------------------------------------------------
# Predict request -> named input arrays


def _format_error(doc, message):
    return invalid_argument(f"JSON Value: {value_to_string(doc)} {message}")


def signature_name_of(doc):
    """The request's optional `signature_name` ('' when absent)."""
    name = doc.get("signature_name")
    if name is None and "signature_name" not in doc:
        return ""
    if not isinstance(name, str):
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
    return name


def _shape_string(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def _instances_to_arrays(instances, input_dtypes):
    names = sorted(input_dtypes)
    if isinstance(instances, NumberArray) and len(names) == 1:  # one dense array: its rows are the batch
        array = instances.to_array(input_dtypes[names[0]])
        if array is not None:
            return {names[0]: array}
    if isinstance(instances, NumberArray):
        instances = instances.to_list()  # the exact path says what is wrong
    first = instances[0]
    if not isinstance(first, dict) and len(names) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    elements_are_objects = isinstance(first, dict) and not is_b64_object(first)
    if not elements_are_objects:
        name = names[0]
        for index, item in enumerate(instances):
            if isinstance(item, dict) and not is_b64_object(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
        dtype = input_dtypes[name]
        rows = []
        for index, item in enumerate(instances):
            try:
                rows.append(json_to_array(item, dtype))
            except Exception as error:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: "
                    f"{getattr(error, 'message', error)}"
                ) from None
            _check_same_shape(rows, index)
        return {name: _stack(rows, dtype)}

    wanted = set(names)
    columns = {name: [] for name in names}
    for index, item in enumerate(instances):
        if not isinstance(item, dict) or is_b64_object(item):
            raise invalid_argument(f"Expecting object but got list at item {index} of input list")
        for key, value in item.items():
            if key not in wanted:
                raise invalid_argument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. Error: INVALID_ARGUMENT: "
                    f"JSON object: does not have named input: {key}"
                )
            try:
                columns[key].append(json_to_array(value, input_dtypes[key]))
            except Exception as error:
                raise invalid_argument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. Error: INVALID_ARGUMENT: "
                    f"{getattr(error, 'message', error)}"
                ) from None
            _check_same_shape(columns[key], index)
        if set(item) != wanted:
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. JSON object: {value_to_string(item)} "
                f"keys must be equal to: {','.join(names)}"
            )
    return {name: _stack(rows, input_dtypes[name]) for name, rows in columns.items()}


def _check_same_shape(rows, index):
    if len(rows) > 1 and rows[-1].shape != rows[0].shape:
        first, last = rows[0], rows[-1]
        if first.size != last.size:
            message = f"Expecting tensor size: {first.size} but got: {last.size}"
        else:
            message = f"Expecting shape {_shape_string(first.shape)} but got: {_shape_string(last.shape)}"
        raise invalid_argument(
            f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: {message}"
        )


def _stack(rows, dtype):
    if dtype == DT_STRING:
        array = np.empty((len(rows),) + rows[0].shape, dtype=object)
        for i, row in enumerate(rows):
            array[i, ...] = row
        return array
    return np.stack(rows)


def _inputs_to_arrays(value, input_dtypes):
    names = sorted(input_dtypes)
    if not isinstance(value, dict) or is_b64_object(value):
        if len(names) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        return {names[0]: json_to_array(value, input_dtypes[names[0]])}
    arrays = {}
    for name in names:
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(value[name], input_dtypes[name])
    return arrays


def request_to_arrays(doc, input_dtypes):
    """A parsed predict request -> (format, {input name: numpy array}).

    `input_dtypes` maps the signature's input names to DataType enums.
    """
    if not input_dtypes:
        raise invalid_argument("Failed to get input map for signature: DEFAULT")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, (list, NumberArray)):
            raise _format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        return ROW, _instances_to_arrays(instances, input_dtypes)
    if has_inputs:
        return COLUMNAR, _inputs_to_arrays(doc["inputs"], input_dtypes)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# ----------------------------------------------------------------------------
# Output arrays -> response JSON


def _has_non_finite(outputs):
    return any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in outputs.values())


def _plain_floats(array):
    """Python floats whose repr is the shortest text of each float32 value (NaN/inf kept)."""
    if array.dtype == np.float64:
        return array.tolist()
    to_float = np.vectorize(lambda x: float(str(np.float32(x))), otypes=[object])
    return to_float(array).tolist() if array.ndim else float(str(array.item()))


def _jsonable(name, array, plain=False):
    """An output array in a form the encoder writes as TF Serving does."""
    kind = array.dtype.kind
    if kind == "f":
        if array.dtype not in (np.float32, np.float64):
            array = array.astype(np.float32)
        return _plain_floats(array) if plain else np.ascontiguousarray(array)
    if kind in "iub":
        if plain or array.dtype in (np.uint16, np.uint32, np.uint64, np.int16, np.int8):
            return array.tolist()
        return np.ascontiguousarray(array)
    if kind in "OSU":
        as_bytes = name.endswith("_bytes")

        def convert(item):
            if isinstance(item, str):
                item = item.encode()
            if as_bytes:
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", errors="replace")

        flat = [convert(item) for item in array.reshape(-1)]
        if not array.ndim:
            return flat[0]
        nested = np.empty(len(flat), dtype=object)
        nested[:] = flat
        return nested.reshape(array.shape).tolist()
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _dumps(obj, plain):
    if plain:  # NaN/Infinity tokens: orjson would write null
        return json.dumps(obj, allow_nan=True, separators=(",", ":")).encode()
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def arrays_to_response(outputs, fmt):
    """{output name: numpy array} -> TF Serving's predict response body (bytes)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    plain = _has_non_finite(outputs)
    if fmt == COLUMNAR:
        if len(names) == 1:
            return _dumps({"outputs": _jsonable(names[0], outputs[names[0]], plain)}, plain)
        return _dumps({"outputs": {name: _jsonable(name, outputs[name], plain) for name in names}}, plain)
    batch_size = None
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch_size is not None and array.shape[0] != batch_size:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch_size}"
            )
        batch_size = array.shape[0]
    if len(names) == 1:
        return _dumps({"predictions": _jsonable(names[0], outputs[names[0]], plain)}, plain)
    columns = {name: _jsonable(name, outputs[name], plain) for name in names}
    rows = [{name: columns[name][i] for name in names} for i in range(batch_size)]
    return _dumps({"predictions": rows}, plain)
