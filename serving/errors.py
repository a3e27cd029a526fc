"""Errors with TensorFlow Serving's canonical codes and their HTTP mapping.

The mapping is the one TensorFlow Serving's HTTP server applies to a request's
`tensorflow::Status` (model_servers/http_server.cc), plus 413 for a request
body over this server's size limit (TF Serving has no such limit).
"""

import grpc

OK = "OK"
CANCELLED = "CANCELLED"
UNKNOWN = "UNKNOWN"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
NOT_FOUND = "NOT_FOUND"
ALREADY_EXISTS = "ALREADY_EXISTS"
PERMISSION_DENIED = "PERMISSION_DENIED"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
ABORTED = "ABORTED"
OUT_OF_RANGE = "OUT_OF_RANGE"
UNIMPLEMENTED = "UNIMPLEMENTED"
INTERNAL = "INTERNAL"
UNAVAILABLE = "UNAVAILABLE"
DATA_LOSS = "DATA_LOSS"
UNAUTHENTICATED = "UNAUTHENTICATED"

HTTP_STATUS = {
    OK: 200,
    CANCELLED: 499,
    UNKNOWN: 500,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400,
    ABORTED: 409,
    OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    DATA_LOSS: 500,
    UNAUTHENTICATED: 401,
}

# tf.errors.OpError.error_code (an int) -> canonical code name.
_TF_CODE_NAMES = {
    1: CANCELLED,
    2: UNKNOWN,
    3: INVALID_ARGUMENT,
    4: DEADLINE_EXCEEDED,
    5: NOT_FOUND,
    6: ALREADY_EXISTS,
    7: PERMISSION_DENIED,
    8: RESOURCE_EXHAUSTED,
    9: FAILED_PRECONDITION,
    10: ABORTED,
    11: OUT_OF_RANGE,
    12: UNIMPLEMENTED,
    13: INTERNAL,
    14: UNAVAILABLE,
    15: DATA_LOSS,
    16: UNAUTHENTICATED,
}


class ServingError(Exception):
    """A request failure: a canonical code (see HTTP_STATUS) and a message."""

    def __init__(self, code, message, http_status=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self._http_status = http_status

    @property
    def http_status(self):
        return self._http_status or HTTP_STATUS.get(self.code, 500)

    @property
    def grpc_code(self):
        return getattr(grpc.StatusCode, self.code, grpc.StatusCode.UNKNOWN)

    def __repr__(self):
        return f"ServingError({self.code}, {self.message!r})"


def invalid_argument(message):
    return ServingError(INVALID_ARGUMENT, message)


def not_found(message):
    return ServingError(NOT_FOUND, message)


def too_large(message):
    # RESOURCE_EXHAUSTED for gRPC; HTTP clients get 413 Payload Too Large.
    return ServingError(RESOURCE_EXHAUSTED, message, http_status=413)


def from_exception(error):
    """Maps any exception raised while serving a request to a ServingError."""
    if isinstance(error, ServingError):
        return error
    import tensorflow as tf

    if isinstance(error, tf.errors.OpError):
        code = _TF_CODE_NAMES.get(error.error_code, UNKNOWN)
        message = error.message.strip()
        return ServingError(code, message)
    if isinstance(error, (TypeError, ValueError)):
        return ServingError(INVALID_ARGUMENT, str(error))
    return ServingError(INTERNAL, f"{type(error).__name__}: {error}")
