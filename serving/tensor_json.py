"""TensorFlow Serving's JSON <-> tensor mapping, on numpy arrays.

Follows tensorflow_serving/util/json_tensor.cc and the REST API doc
(g3doc/api_rest.md): the row (`instances`) and columnar (`inputs`) request
formats, `{"b64": ...}` binary strings, `NaN`/`Infinity` tokens, lossless
number conversion, and the `predictions` / `outputs` response shapes. Error
messages reproduce TF Serving's wording so clients that match on them work.

Parsing is done with orjson; a body orjson rejects (it has no `NaN` or
`Infinity` tokens) is parsed again with the standard library, which accepts
them as TF Serving does. Numeric inputs take a vectorised numpy path and only
fall back to an element-by-element walk, which produces TF Serving's error
messages, when that path cannot convert the value exactly.
"""

import base64
import binascii
import json
import math

import numpy as np
import orjson

from serving.errors import invalid_argument

# tensorflow/core/framework/types.proto
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_HALF, DT_UINT32, DT_UINT64, DT_UINT16, DT_BFLOAT16 = 9, 10, 19, 22, 23, 17, 14

# DataTypeString() names, as TF Serving prints them in errors.
DTYPE_NAMES = {
    DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8", DT_INT16: "int16",
    DT_INT8: "int8", DT_STRING: "string", DT_INT64: "int64", DT_BOOL: "bool", DT_HALF: "half",
    DT_UINT32: "uint32", DT_UINT64: "uint64", DT_UINT16: "uint16", DT_BFLOAT16: "bfloat16",
}  # fmt: skip
NUMPY_DTYPES = {
    DT_FLOAT: np.float32, DT_DOUBLE: np.float64, DT_INT32: np.int32, DT_UINT8: np.uint8, DT_INT16: np.int16,
    DT_INT8: np.int8, DT_STRING: object, DT_INT64: np.int64, DT_BOOL: np.bool_, DT_HALF: np.float16,
    DT_UINT32: np.uint32, DT_UINT64: np.uint64, DT_UINT16: np.uint16,
}  # fmt: skip
_INT_RANGES = {
    DT_INT32: (-(2**31), 2**31 - 1), DT_INT16: (-(2**31), 2**31 - 1), DT_INT8: (-(2**31), 2**31 - 1),
    DT_UINT8: (-(2**31), 2**31 - 1), DT_INT64: (-(2**63), 2**63 - 1), DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
}  # fmt: skip
# Largest integer a float type holds exactly, and its largest finite value.
_FLOAT_LIMITS = {
    DT_FLOAT: (2**24 - 1, float(np.finfo(np.float32).max)),
    DT_HALF: (2**24 - 1, float(np.finfo(np.float32).max)),
    DT_DOUBLE: (2**53 - 1, float(np.finfo(np.float64).max)),
}  # fmt: skip

ROW = "row"
COLUMNAR = "columnar"
_MAX_VALUE_CHARS = 200  # TF Serving prints whole values in errors; we truncate.


def dtype_name(dtype):
    return DTYPE_NAMES.get(dtype, f"type enum {dtype}")


# ----------------------------------------------------------------------------
# JSON parsing


def parse_json(body):
    """Parses a request body as TF Serving does; returns the top-level object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            text = body.decode("utf-8") if isinstance(body, (bytes, bytearray, memoryview)) else body
            doc = json.loads(text)
        except UnicodeDecodeError as error:
            raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
        except json.JSONDecodeError as error:
            raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
        except RecursionError:
            raise invalid_argument("JSON Parse error: document nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {value_to_string(doc)} Is not object")
    return doc


def value_to_string(value):
    """A JSON value for an error message (TF Serving's JsonValueToString), truncated."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = json.dumps(value, allow_nan=True, default=str)
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
    if isinstance(value, list):
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
    if dtype in _FLOAT_LIMITS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _type_error(value, dtype)
        max_int, max_value = _FLOAT_LIMITS[dtype]
        if isinstance(value, int):
            if abs(value) > max_int:
                return invalid_argument(
                    f"Cannot convert JSON value: {value} to {dtype_name(dtype)} without loss of precision."
                )
        elif math.isfinite(value) and abs(value) > max_value:
            return invalid_argument(
                f"Cannot convert JSON value: {value_to_string(value)} to {dtype_name(dtype)} without loss of precision."
            )
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
        array = np.array(flat, dtype=np_dtype)
    return array.reshape(shape)


def _fast_numeric(value, dtype):
    """Vectorised conversion of numbers; None when the exact walk is needed."""
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged or otherwise irregular
    kind = array.dtype.kind
    if dtype in _FLOAT_LIMITS:
        if kind == "f":
            finite = array[np.isfinite(array)] if array.size else array
            if finite.size and np.abs(finite).max() > _FLOAT_LIMITS[dtype][1]:
                return None
        elif kind in "iu":
            if array.size and np.abs(array).max() > _FLOAT_LIMITS[dtype][0]:
                return None
        else:
            return None
        return array.astype(NUMPY_DTYPES[dtype], copy=False)
    if dtype in _INT_RANGES:
        if kind not in "iu":
            return None
        low, high = _INT_RANGES[dtype]
        if array.size and (array.min() < low or array.max() > high):
            return None
        return array.astype(NUMPY_DTYPES[dtype], copy=False)
    if dtype == DT_BOOL:
        return array if kind == "b" else None
    return None


def json_to_array(value, dtype):
    """One JSON value (scalar or nested list) -> numpy array of `dtype`."""
    if dtype != DT_STRING and isinstance(value, (list, int, float)) and not isinstance(value, bool):
        array = _fast_numeric(value, dtype)
        if array is not None and array.dtype != object:
            return array
    if not isinstance(value, list):  # scalar: rank 0
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
        array = None
        if dtype != DT_STRING:
            array = _fast_numeric(instances, dtype)
        if array is None or array.dtype == object:
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
            array = _stack(rows, dtype)
        return {name: array}

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
        if not isinstance(instances, list):
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
