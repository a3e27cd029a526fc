"""TensorFlow Serving's REST API: the request handler `RestApi.respond` (served by serving.http).

Endpoints (tensorflow_serving/g3doc/api_rest.md), matched with TF Serving's
own case-insensitive path patterns:

    GET  /v1/models/${MODEL}[/versions/${VERSION}|/labels/${LABEL}]
    GET  /v1/models/${MODEL}[/versions/${VERSION}|/labels/${LABEL}]/metadata
    POST /v1/models/${MODEL}[/versions/${VERSION}|/labels/${LABEL}]:(predict|classify|regress)
    OPTIONS /v1/...   (CORS preflight)

Responses are the JSON TF Serving writes: GetModelStatusResponse and
GetModelMetadataResponse through the protobuf JSON mapping, `predictions` /
`outputs` for predict, and `{"error": "..."}` with TF Serving's HTTP code for
every failure. `:classify` and `:regress` answer 400 for a signature that is
not a classification / regression one (as TF Serving does) and 501 otherwise:
this server does not run tf.Example signatures.

CORS as in TF Serving (http_server.cc): an OPTIONS request whose `Origin`
header holds an http(s) URL gets 200 with an empty body, one without gets 400
("Origin header is missing in CORS preflight"); with `enable_cors`
(`--rest_api_enable_cors_support`) every /v1 answer carries
`Access-Control-Allow-Origin: *`, `-Methods: POST, GET` and `-Headers:
Content-Type`.

Predict requests are handled without a coroutine: the request is parsed,
its model call queued, and the answer written from the call's completion
callback. A request that runs past `timeout_seconds` answers 504; its model
call is cancelled if it has not started (a started one finishes, and its
version is not unloaded before it does: see manager.Servable). A client that
goes away cancels its model call the same way.

Beyond TF Serving: `Content-Encoding: gzip` request bodies are accepted
(decompressed under `max_request_bytes`, the limit serving.http applies to
request bodies with a 413).
"""

import asyncio
import collections
import logging
import re
import zlib

import orjson
from google.protobuf import json_format

from serving import errors
from serving.errors import ServingError, invalid_argument, too_large
from serving.tensor_json import (
    NumberArray,
    arrays_to_response,
    parse_json,
    request_to_arrays,
    signature_name_of,
    value_to_string,
)

log = logging.getLogger("serving")

_V1 = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
_HTTP_ORIGIN = re.compile(rb"https?://")
_CLASSIFY_METHOD = "tensorflow/serving/classify"
_REGRESS_METHOD = "tensorflow/serving/regress"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
]


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
    """The REST request handler: `respond(method, path, headers, body, reply)`."""

    def __init__(self, manager, max_request_bytes=256 * 1024 * 1024, timeout_seconds=None, enable_cors=False):
        self.manager = manager
        self.max_request_bytes = max_request_bytes  # also the limit of a gzip body, decompressed
        self.timeout_seconds = timeout_seconds
        self.enable_cors = enable_cors
        self._deadlines = collections.deque()  # (deadline, model call future, expired flag) in arrival order
        self._sweeping = None  # the event loop whose sweep is scheduled
        self._sweep_seconds = min(timeout_seconds / 10, 0.05) if timeout_seconds else None

    def respond(self, method, path, headers, body, reply):
        """Answers one request: calls `reply(status, headers, body)` once, now or when its model call completes.

        `headers` maps lower-case header names (bytes) to values (bytes).
        Returns a function that cancels the request's model call (for a
        client that goes away), or None when it was answered at once.
        """
        cors = self.enable_cors and _V1.fullmatch(path) is not None

        def answer(status, payload, content_type=True):
            answer_headers = _JSON_HEADERS if content_type else []
            reply(status, answer_headers + _CORS_HEADERS if cors else answer_headers, payload)

        try:
            if not _V1.fullmatch(path):
                raise ServingError(errors.NOT_FOUND, f"Not found: {method} {path}")
            if method == "POST":
                match = _PREDICT.fullmatch(path)
                if match:
                    return self._predict(headers, body, *match.groups(), answer)
            elif method == "GET":
                match = _STATUS.fullmatch(path)
                if match:
                    answer(200, self._status(*match.groups()))
                    return None
            elif method == "OPTIONS":
                if not _HTTP_ORIGIN.search(headers.get(b"origin", b"")):
                    raise ServingError(errors.FAILED_PRECONDITION, "Origin header is missing in CORS preflight")
                answer(200, b"", content_type=False)
                return None
            raise invalid_argument(f"Malformed request: {method} {path}")
        except Exception as error:
            answer_error(answer, error, method, path)
        return None

    # -- GET: status and metadata ---------------------------------------------------

    def _status(self, name, version, label, metadata):
        if not name:
            raise invalid_argument("Missing model name in request.")
        version = _version(version)
        if version is not None and label is not None:
            raise invalid_argument(
                f"Both model version ({version}) and model version label ({label}) cannot be supplied."
            )
        if metadata:
            response, signature_map = self.manager.model_metadata(name, version, label)
            body = {
                "model_spec": _proto_json(response.model_spec, True),
                "metadata": {"signature_def": _proto_json(signature_map, True)},
            }
        else:
            body = _proto_json(self.manager.model_status(name, version, label), False)
        return orjson.dumps(body)

    # -- POST: predict, classify, regress --------------------------------------------

    def _gunzip(self, body):
        limit = self.max_request_bytes
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error as error:
            raise invalid_argument(f"Failed to decompress gzip request body: {error}") from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise too_large(f"Decompressed request body exceeds the limit of {limit} bytes")
        return data

    def _predict(self, headers, body, name, version, label, verb, answer):
        if headers.get(b"content-encoding", b"").lower() == b"gzip":
            body = self._gunzip(body)
        version = _version(version)
        doc = parse_json(body)
        signature_name = signature_name_of(doc)
        if verb.lower() != "predict":
            self._classify_or_regress(doc, name, version, label, signature_name, verb.lower())
        servable, release = self.manager.hold(name, version, label)
        try:
            signature = servable.signature(signature_name)
            fmt, inputs = request_to_arrays(doc, signature.input_dtypes)
            signature.check_inputs(inputs)
            loop = asyncio.get_running_loop()
            future = servable.submit(signature.name, inputs, self.manager.executor, loop)
        except BaseException:
            release()
            raise
        expired = []  # set by the deadline sweep
        if self.timeout_seconds:
            self._deadlines.append((loop.time() + self.timeout_seconds, future, expired))
            if self._sweeping is not loop:
                self._sweeping = loop
                loop.call_later(self._sweep_seconds, self._expire_requests, loop)

        def done(future):
            release()
            if future.cancelled():
                error = ServingError(
                    errors.DEADLINE_EXCEEDED if expired else errors.CANCELLED,
                    "Deadline Exceeded" if expired else "Request cancelled",
                )
                answer_error(answer, error, "POST", name)
                return
            try:
                answer(200, arrays_to_response(future.result(), fmt))
            except Exception as error:
                answer_error(answer, error, "POST", name)

        future.add_done_callback(done)
        return future.cancel

    def _expire_requests(self, loop):
        """Cancels the model calls of requests past their deadline (504); a call that has not started never runs.

        One timeout for all requests makes their deadlines come in arrival
        order: a queue and one periodic sweep replace a timer per request.
        """
        if self._sweeping is not loop:  # another loop took over (a handler used by several loops in turn)
            return
        now, deadlines = loop.time(), self._deadlines
        while deadlines and (
            deadlines[0][1].done() or deadlines[0][0] <= now or deadlines[0][1].get_loop() is not loop
        ):
            _, future, expired = deadlines.popleft()
            if not future.done() and future.get_loop() is loop:
                expired.append(True)
                future.cancel()
        if deadlines:
            loop.call_later(self._sweep_seconds, self._expire_requests, loop)
        else:
            self._sweeping = None

    def _classify_or_regress(self, doc, name, version, label, signature_name, verb):
        examples = doc.get("examples")
        if isinstance(examples, NumberArray):
            examples = examples.to_list()
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
            wanted, kind = (
                (_CLASSIFY_METHOD, "classification") if verb == "classify" else (_REGRESS_METHOD, "regression")
            )
            if signature.method_name != wanted:
                raise invalid_argument(
                    f"Expected {kind} signature method_name to be {wanted}. Was: {signature.method_name}"
                )
        raise ServingError(errors.UNIMPLEMENTED, f":{verb} of tf.Example signatures is not implemented by this server")


def answer_error(answer, error, method, path):
    """Answers `error` as {"error": message} with TF Serving's HTTP status; an unexpected one is logged (500)."""
    serving_error = errors.from_exception(error)
    if serving_error.code == errors.INTERNAL and not isinstance(error, ServingError):
        log.error("unexpected error serving %s %s", method, path, exc_info=error)
    answer(serving_error.http_status, orjson.dumps({"error": serving_error.message}))
