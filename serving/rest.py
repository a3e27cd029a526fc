"""TensorFlow Serving's REST API as a Starlette (ASGI) app.

Endpoints (tensorflow_serving/g3doc/api_rest.md), matched with TF Serving's
own case-insensitive path patterns:

    GET  /v1/models/${MODEL}[/versions/${VERSION}|/labels/${LABEL}]
    GET  /v1/models/${MODEL}[/versions/${VERSION}|/labels/${LABEL}]/metadata
    POST /v1/models/${MODEL}[/versions/${VERSION}|/labels/${LABEL}]:(predict|classify|regress)

Responses are the JSON TF Serving writes: GetModelStatusResponse and
GetModelMetadataResponse through the protobuf JSON mapping, `predictions` /
`outputs` for predict, and `{"error": "..."}` with TF Serving's HTTP code for
every failure. `:classify` and `:regress` answer 400 for a signature that is
not a classification / regression one (as TF Serving does) and 501 otherwise:
this server does not run tf.Example signatures.

Beyond TF Serving: a request body larger than `max_request_bytes` gets 413,
and `Content-Encoding: gzip` request bodies are accepted (decompressed under
the same limit).
"""

import asyncio
import logging
import re
import zlib

import orjson
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from serving import errors
from serving.errors import ServingError, invalid_argument, too_large
from serving.tensor_json import arrays_to_response, parse_json, request_to_arrays, signature_name_of, value_to_string

log = logging.getLogger("serving")

_V1 = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
_CLASSIFY_METHOD = "tensorflow/serving/classify"
_REGRESS_METHOD = "tensorflow/serving/regress"
_JSON = "application/json"
# A body somewhat over the limit is read and discarded before the 413, so the
# client sees the answer instead of a reset connection; beyond this, it is not.
_DRAIN_LIMIT = 256 * 1024 * 1024


def _json_response(body, status=200):
    return Response(body, status_code=status, media_type=_JSON)


def error_response(error):
    return _json_response(orjson.dumps({"error": error.message}), error.http_status)


def _version(text):
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.") from None


def _proto_json(message, preserve_names):
    return json_format.MessageToDict(
        message, preserving_proto_field_name=preserve_names, always_print_fields_with_no_presence=True
    )


class RestApi:
    """The request handlers; `app` is the ASGI application."""

    def __init__(self, manager, max_request_bytes=64 * 1024 * 1024, timeout_seconds=None):
        self.manager = manager
        self.max_request_bytes = max_request_bytes
        self.timeout_seconds = timeout_seconds
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=methods)])

    async def handle(self, request):
        path, method = request.url.path, request.method
        try:
            if not _V1.fullmatch(path):
                raise ServingError(errors.NOT_FOUND, f"Not found: {method} {path}")
            if method == "POST":
                match = _PREDICT.fullmatch(path)
                if match:
                    return await self._predict(request, *match.groups())
            elif method == "GET":
                match = _STATUS.fullmatch(path)
                if match:
                    return self._status(*match.groups())
            raise invalid_argument(f"Malformed request: {method} {path}")
        except ServingError as error:
            return error_response(error)
        except Exception as error:  # a bug, not a bad request: 500 with the reason
            log.exception("unexpected error serving %s %s", method, path)
            return error_response(errors.from_exception(error))

    # -- GET: status and metadata ---------------------------------------------------

    def _status(self, name, version, label, metadata):
        if not name:
            raise invalid_argument("Missing model name in request.")
        version = _version(version)
        if version is not None and label is not None:
            raise invalid_argument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        if metadata:
            response, signature_map = self.manager.model_metadata(name, version, label)
            body = {
                "model_spec": _proto_json(response.model_spec, True),
                "metadata": {"signature_def": _proto_json(signature_map, True)},
            }
        else:
            body = _proto_json(self.manager.model_status(name, version, label), False)
        return _json_response(orjson.dumps(body))

    # -- POST: predict, classify, regress --------------------------------------------

    async def _read_body(self, request):
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > _DRAIN_LIMIT:
            raise too_large(f"Request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > _DRAIN_LIMIT:
                break
        if size > limit:
            raise too_large(f"Request body of {size} bytes exceeds the limit of {limit} bytes")
        body = b"".join(chunks)
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = self._gunzip(body)
        return body

    def _gunzip(self, body):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, self.max_request_bytes + 1)
        except zlib.error as error:
            raise invalid_argument(f"Failed to decompress gzip request body: {error}") from None
        if len(data) > self.max_request_bytes or inflater.unconsumed_tail:
            raise too_large(f"Decompressed request body exceeds the limit of {self.max_request_bytes} bytes")
        return data

    async def _predict(self, request, name, version, label, verb):
        body = await self._read_body(request)
        version = _version(version)
        verb = verb.lower()
        doc = parse_json(body)
        signature_name = signature_name_of(doc)
        if verb != "predict":
            return self._classify_or_regress(doc, name, version, label, signature_name, verb)
        with self.manager.acquire(name, version, label) as servable:
            signature = servable.signature(signature_name)
            fmt, inputs = request_to_arrays(doc, signature.input_dtypes)
            signature.check_inputs(inputs)
            future = servable.submit(signature.name, inputs, self.manager.executor)
            try:
                outputs = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_seconds)
            except asyncio.TimeoutError:
                raise ServingError(errors.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            except Exception as error:
                raise errors.from_exception(error) from None
        return _json_response(arrays_to_response(outputs, fmt))

    def _classify_or_regress(self, doc, name, version, label, signature_name, verb):
        examples = doc.get("examples")
        if "examples" not in doc:
            raise invalid_argument(
                f"JSON Value: {value_to_string(doc)} When method is classify, key 'examples' is expected and was not found"
            )
        if not isinstance(examples, list):
            raise invalid_argument(f"JSON Value: {value_to_string(doc)} Expecting 'examples' value to be an list/array")
        if not examples:
            raise invalid_argument(f"JSON Value: {value_to_string(doc)} 'examples' value is an empty array")
        with self.manager.acquire(name, version, label) as servable:
            signature = servable.signature(signature_name)
            wanted, kind = (_CLASSIFY_METHOD, "classification") if verb == "classify" else (_REGRESS_METHOD, "regression")
            if signature.method_name != wanted:
                raise invalid_argument(
                    f"Expected {kind} signature method_name to be {wanted}. Was: {signature.method_name}"
                )
        raise ServingError(errors.UNIMPLEMENTED, f":{verb} of tf.Example signatures is not implemented by this server")
