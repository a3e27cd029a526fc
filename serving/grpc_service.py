"""TensorFlow Serving's gRPC API (PredictionService, ModelService) with grpcio.

Uses the service and message definitions of the `tensorflow-serving-api`
package, so TF Serving gRPC clients (PredictionServiceStub) work unchanged.
Implemented: Predict (with `output_filter`), GetModelMetadata
(`signature_def`), GetModelStatus and HandleReloadConfigRequest; Classify,
Regress and MultiInference answer UNIMPLEMENTED.

As in TF Serving: Predict outputs fill the TensorProto's typed fields
(`float_val`, `int64_val`, ...; `tensor_content` with
`as_tensor_content`, TF Serving's `--enable_serialization_as_tensor_content`),
a request runs until the client's deadline, messages may be up to INT32_MAX
bytes, and `--grpc_channel_arguments` (`key=value,...`, a value that parses
as a 32-bit integer passed as one; `serving.options.parse_channel_arguments`)
overrides any server channel argument.
"""

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import errors
from serving.errors import ServingError, invalid_argument

# numpy dtype -> (DataType, the TensorProto field Tensor::AsProtoField fills)
_TYPED_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
    np.dtype(np.float16): (types_pb2.DT_HALF, "half_val"),
}
INT32_MAX = 2**31 - 1


def array_to_tensor_proto(array, as_tensor_content=False):
    """A numpy output as TF Serving writes it: typed fields (Tensor::AsProtoField) or tensor_content
    (Tensor::AsProtoTensorContent; strings always use string_val)."""
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto()
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(item.encode() if isinstance(item, str) else bytes(item) for item in array.reshape(-1))
        return proto
    if array.dtype not in _TYPED_FIELDS:
        return tf.make_tensor_proto(array)  # complex, bfloat16, ...: TensorFlow's own encoding
    proto.dtype, field = _TYPED_FIELDS[array.dtype]
    if as_tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
        return proto
    flat = array.reshape(-1)
    if field == "half_val":  # the 16 bits of each half, as TensorFlow stores them
        flat = flat.view(np.uint16)
    getattr(proto, field).extend(flat.tolist())
    return proto


def _version_and_label(model_spec):
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return model_spec.version.value, None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _abort(context, error):
    error = errors.from_exception(error)
    context.abort(error.grpc_code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, as_tensor_content=False):
        self.manager = manager
        self.as_tensor_content = as_tensor_content

    def Predict(self, request, context):
        try:
            return self._predict(request, context.time_remaining())
        except Exception as error:
            failure = error
        _abort(context, failure)

    def _predict(self, request, timeout):
        spec = request.model_spec
        if not spec.name:
            raise invalid_argument("Missing ModelSpec")
        version, label = _version_and_label(spec)
        with self.manager.acquire(spec.name, version, label) as servable:
            signature = servable.signature(spec.signature_name)
            try:
                inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            except Exception as error:
                raise invalid_argument(f"Failed to convert an input TensorProto: {error}") from None
            signature.check_inputs(inputs)
            wanted = list(request.output_filter) or signature.output_names
            unknown = [name for name in wanted if name not in signature.output_names]
            if unknown:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be in the set "
                    f"{{{','.join(signature.output_names)}}}."
                )
            future = servable.submit(signature.name, inputs, self.manager.executor)
            try:
                outputs = future.result(timeout)
            except TimeoutError:
                future.cancel()  # a call that has not started never runs
                raise ServingError(errors.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature.name
            for name in wanted:
                response.outputs[name].CopyFrom(array_to_tensor_proto(outputs[name], self.as_tensor_content))
            return response

    def GetModelMetadata(self, request, context):
        try:
            spec = request.model_spec
            if not spec.name:
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid_argument(f"Metadata field {field} is not supported")
            version, label = _version_and_label(spec)
            response, _ = self.manager.model_metadata(spec.name, version, label)
            return response
        except Exception as error:
            failure = error
        _abort(context, failure)

    def _unimplemented(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by this server: use Predict")

    Classify = Regress = MultiInference = _unimplemented


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            spec = request.model_spec
            if not spec.name:
                raise invalid_argument("Missing ModelSpec")
            version, label = _version_and_label(spec)
            return self.manager.model_status(spec.name, version, label)
        except Exception as error:
            failure = error
        _abort(context, failure)

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument("only model_config_list configs are supported")
            self.manager.reload_config(request.config)
        except Exception as error:
            error = errors.from_exception(error)
            enum = response.status.DESCRIPTOR.fields_by_name["error_code"].enum_type
            response.status.error_code = enum.values_by_name[error.code].number
            response.status.error_message = error.message
        return response


def create_server(manager, addresses, max_workers=16, channel_arguments=None, as_tensor_content=False):
    """A started grpc.Server on `addresses` ("host:port" or "unix:path"); returns (server, bound ports)."""
    import concurrent.futures

    options = {
        "grpc.max_receive_message_length": INT32_MAX,
        "grpc.max_send_message_length": INT32_MAX,
        "grpc.so_reuseport": 0,
    }
    options.update(channel_arguments or {})
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=list(options.items()),
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, as_tensor_content), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    ports = []
    for address in addresses:
        port = server.add_insecure_port(address)
        if not port:
            raise OSError(f"could not bind the gRPC server to {address}")
        ports.append(port)
    server.start()
    return server, ports
