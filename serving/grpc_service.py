"""TensorFlow Serving's gRPC API (PredictionService, ModelService) with grpcio.

Uses the service and message definitions of the `tensorflow-serving-api`
package, so TF Serving gRPC clients (PredictionServiceStub) work unchanged.
Implemented: Predict (with `output_filter`), GetModelMetadata
(`signature_def`), GetModelStatus and HandleReloadConfigRequest; Classify,
Regress and MultiInference answer UNIMPLEMENTED.
"""

import concurrent.futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import errors
from serving.errors import ServingError, invalid_argument


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
    def __init__(self, manager, timeout_seconds=None):
        self.manager = manager
        self.timeout_seconds = timeout_seconds

    def Predict(self, request, context):
        try:
            return self._predict(request)
        except Exception as error:
            failure = error
        _abort(context, failure)

    def _predict(self, request):
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
                outputs = future.result(self.timeout_seconds)
            except concurrent.futures.TimeoutError:
                raise ServingError(errors.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature.name
            for name in wanted:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
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
            self.manager.set_config(request.config)
            self.manager.poll()
        except Exception as error:
            error = errors.from_exception(error)
            enum = response.status.DESCRIPTOR.fields_by_name["error_code"].enum_type
            response.status.error_code = enum.values_by_name[error.code].number
            response.status.error_message = error.message
        return response


def create_server(manager, address, max_workers=16, max_message_bytes=64 * 1024 * 1024, timeout_seconds=None):
    """A started grpc.Server on `address` ("host:port"); returns (server, bound port)."""
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, timeout_seconds), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"could not bind the gRPC server to {address}")
    server.start()
    return server, port
