"""serving internals in process: batching, TF Serving's JSON mapping, gRPC tensors, REST CORS and limits."""

import asyncio
import concurrent.futures
import re

import numpy as np
import orjson
import pytest
import tensorflow as tf

from serving import batching, tensor_json
from serving.errors import ServingError
from tests.conftest import run_module

# ----------------------------------------------------------------------------
# Batching parameters and scheduler


def test_batching_parameters_text_proto():
    options = batching.parse_batching_parameters(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 3 }\n"
        "max_enqueued_batches { value: 7 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
    )
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (16, 500, 3)
    assert options.max_enqueued_batches == 7 and options.allowed_batch_sizes == (8, 16)
    assert not options.enable_large_batch_splitting and options.execution_batch_size == 16
    with pytest.raises(ValueError, match="Last entry in allowed_batch_sizes must match max_batch_size"):
        batching.parse_batching_parameters("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(Exception, match="no_such_field"):  # TF Serving refuses unknown fields too
        batching.parse_batching_parameters("no_such_field { value: 1 }\n")


def test_large_batch_splitting_is_a_bool_value_and_enables_max_execution_batch_size():
    # TF Serving's proto: enable_large_batch_splitting is a google.protobuf.BoolValue.
    split = batching.parse_batching_parameters(
        "max_batch_size { value: 64 }\nenable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 16 }\n"
    )
    assert split.enable_large_batch_splitting and split.execution_batch_size == 16
    # Without splitting, max_execution_batch_size is ignored (bundle_factory_util.h GetQueueOptions).
    plain = batching.parse_batching_parameters("max_batch_size { value: 64 }\nmax_execution_batch_size { value: 16 }\n")
    assert not plain.enable_large_batch_splitting and plain.execution_batch_size == 64
    off = batching.parse_batching_parameters(
        "max_batch_size { value: 64 }\nenable_large_batch_splitting { value: false }\nmax_execution_batch_size { value: 16 }\n"
    )
    assert off.execution_batch_size == 64
    with pytest.raises(ValueError, match="input_batch_size_limit must be greater than or equal to max_execution"):
        batching.parse_batching_parameters(
            "max_batch_size { value: 8 }\nenable_large_batch_splitting { value: true }\nmax_execution_batch_size { value: 16 }\n"
        )


def _doubling_model(calls):
    def run(signature, inputs):
        calls.append(inputs["x"].shape[0])
        if np.isnan(inputs["x"]).any():
            raise tf.errors.InvalidArgumentError(None, None, "NaN")
        return {"y": inputs["x"] * 2, "sum": inputs["x"].sum(axis=1)}

    return run


def test_batch_scheduler_merges_pads_and_refuses_requests_over_max_batch_size():
    calls = []
    options = batching.BatchingOptions(
        max_batch_size=16, batch_timeout_micros=20_000, num_batch_threads=2, allowed_batch_sizes=(4, 16)
    )
    scheduler = batching.BatchScheduler(_doubling_model(calls), options)
    try:
        with pytest.raises(ServingError, match="Task size 17 is larger than maximum input batch size 16") as error:
            scheduler.submit("sig", {"x": np.ones((17, 2), np.float32)})
        assert error.value.code == "INVALID_ARGUMENT" and error.value.http_status == 400
        rows = [np.full((1 + i % 3, 2), i, np.float32) for i in range(30)]
        rows[7][0, 0] = np.nan  # fails alone; its batch-mates still succeed
        futures = [scheduler.submit("sig", {"x": x}) for x in rows]
        other = scheduler.submit("sig", {"x": np.zeros((2, 3), np.float32)})  # other shape: never merged
        for i, (future, x) in enumerate(zip(futures, rows)):
            if i == 7:
                with pytest.raises(tf.errors.InvalidArgumentError):
                    future.result(30)
                continue
            out = future.result(30)
            np.testing.assert_array_equal(out["y"], x * 2)
            np.testing.assert_array_equal(out["sum"], x.sum(axis=1))
        assert other.result(30)["y"].shape == (2, 3)
        assert any(4 < c <= 16 for c in calls), calls  # merged
        assert all(c in (4, 16) or c <= 3 for c in calls), calls  # padded to allowed sizes, never over 16
    finally:
        scheduler.stop()


def test_large_batch_splitting_runs_a_request_in_pieces_and_joins_them():
    calls = []
    options = batching.BatchingOptions(
        max_batch_size=64, num_batch_threads=1, enable_large_batch_splitting=True, max_execution_batch_size=16
    )
    scheduler = batching.BatchScheduler(_doubling_model(calls), options)
    try:
        x = np.arange(40 * 2, dtype=np.float32).reshape(40, 2)
        out = scheduler.submit("sig", {"x": x}).result(30)
        np.testing.assert_array_equal(out["y"], x * 2)
        np.testing.assert_array_equal(out["sum"], x.sum(axis=1))
        assert sorted(calls) == [8, 16, 16], calls
        with pytest.raises(ServingError, match="Task size 65 is larger than maximum input batch size 64"):
            scheduler.submit("sig", {"x": np.ones((65, 2), np.float32)})
        bad = x.copy()
        bad[20, 0] = np.nan  # one piece fails: the whole request fails, once
        with pytest.raises(tf.errors.InvalidArgumentError):
            scheduler.submit("sig", {"x": bad}).result(30)
    finally:
        scheduler.stop()


def test_batch_queue_full_is_unavailable():
    gate = concurrent.futures.Future()

    def run(signature, inputs):
        gate.result(30)
        return {"y": inputs["x"]}

    scheduler = batching.BatchScheduler(
        run, batching.BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    )
    try:
        first = scheduler.submit("s", {"x": np.zeros((2, 1))})
        while not first.running():
            pass
        scheduler.submit("s", {"x": np.zeros((2, 1))})
        with pytest.raises(ServingError, match="currently 1 batches enqueued and max_enqueued_batches is 1") as error:
            scheduler.submit("s", {"x": np.zeros((1, 1))})
        assert error.value.http_status == 503
    finally:
        gate.set_result(None)
        scheduler.stop()


def test_requests_from_an_event_loop_are_batched_per_turn_and_answered_in_the_loop():
    calls = []
    scheduler = batching.BatchScheduler(
        _doubling_model(calls), batching.BatchingOptions(max_batch_size=64, num_batch_threads=2)
    )

    async def main():
        loop = asyncio.get_running_loop()
        xs = [np.full((1, 2), i, np.float32) for i in range(20)]
        futures = [scheduler.submit("sig", {"x": x}, loop) for x in xs]  # one turn of the loop
        assert all(isinstance(f, asyncio.Future) for f in futures)
        outputs = await asyncio.gather(*futures)
        for x, out in zip(xs, outputs):
            np.testing.assert_array_equal(out["y"], x * 2)
        cancelled = scheduler.submit("sig", {"x": xs[0]}, loop)
        cancelled.cancel()  # before its batch runs: never run
        await asyncio.sleep(0.2)

    try:
        asyncio.run(main())
    finally:
        scheduler.stop()
    assert calls == [20], calls  # the 20 requests of one turn: one model call; the cancelled one: none


# ----------------------------------------------------------------------------
# JSON -> tensors


@pytest.mark.parametrize(
    "body, dtypes, expected",
    [
        (b'{"instances": [1, 2.5, NaN]}', {"x": tensor_json.DT_FLOAT}, {"x": [1.0, 2.5, np.nan]}),
        (
            b'{"inputs": {"a": [[1, 2]], "b": ["s"]}}',
            {"a": tensor_json.DT_INT64, "b": tensor_json.DT_STRING},
            {"a": [[1, 2]], "b": [b"s"]},
        ),
        (
            b'{"instances": [{"a": 1, "b": {"b64": "aGk="}}, {"a": 2, "b": "x"}]}',
            {"a": tensor_json.DT_INT32, "b": tensor_json.DT_STRING},
            {"a": [1, 2], "b": [b"hi", b"x"]},
        ),
        (b'{"inputs": 3}', {"x": tensor_json.DT_DOUBLE}, {"x": 3.0}),
        # TF Serving's current rule: any number fills a float tensor, cast from the double.
        (
            b'{"instances": [16777217, 1e39, -1e39, 0.1]}',
            {"x": tensor_json.DT_FLOAT},
            {"x": [16777216.0, np.inf, -np.inf, np.float32(0.1)]},
        ),
        (b'{"inputs": [9007199254740993]}', {"x": tensor_json.DT_DOUBLE}, {"x": [9007199254740992.0]}),
    ],
)
def test_request_json_to_tensors(body, dtypes, expected):
    _, arrays = tensor_json.request_to_arrays(tensor_json.parse_json(body), dtypes)
    for name, value in expected.items():
        if arrays[name].dtype == object:
            assert arrays[name].tolist() == value
        else:
            np.testing.assert_array_equal(arrays[name], np.array(value, arrays[name].dtype))


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"instances": [[0.5, true]]}', "JSON Value: true Type: True is not of expected type: float"),
        (b'{"inputs": [[false, 0.5]]}', "JSON Value: false Type: False is not of expected type: float"),
        (b'{"inputs": {"x": [0.5, "1"]}}', 'JSON Value: "1" Type: String is not of expected type: float'),
        (b'{"inputs": [0.5, null]}', "Type: Null is not of expected type: float"),
        (b'{"instances": [[1, 2], [3]]}', "Failed to process element: 1 of 'instances' list"),
        (b'{"inputs": [[1, 2], [3]]}', "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        (b'{"inputs": [[1], 2]}', "found at incorrect level"),
        (b'{"instances": [01]}', "JSON Parse error"),
        (b'{"instances": [1 2]}', "JSON Parse error"),
        (b'{"instances": [1,]}', "JSON Parse error"),
        (b'{"instances": [[1,2]]]}', "JSON Parse error"),
        (b"[1, 2]", "Is not object"),
    ],
)
def test_bad_tensors_get_tf_serving_errors(body, message):
    with pytest.raises(ServingError, match=None) as error:
        tensor_json.request_to_arrays(tensor_json.parse_json(body), {"x": tensor_json.DT_FLOAT})
    assert error.value.http_status == 400 and message in error.value.message, error.value.message


def _exact(body, dtypes):
    """The element-by-element path alone, for comparison."""
    return tensor_json.request_to_arrays(tensor_json._parse_exactly(body), dtypes)


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(
            {"instances": np.random.default_rng(0).uniform(size=(3, 4, 4, 2)).astype(np.float32)},
            option=orjson.OPT_SERIALIZE_NUMPY,
        ),
        b'{"signature_name": "a[1, 2]\\"[3]", "inputs": {"x": [ [ -1.5e-3 , 2E+2 ] ,\n\t[ 0 , -0.0 ] ] }}',
        b'{"instances": [{"x": [1, 2]}, {"x": [3, 4]}], "extra": [[5]]}',
        b'{"inputs": [[[1]], [[2]], [[3]]]}',
        b'{"instances": [7]}',
        b'{"inputs": [1, 2, 3], "note": "[1,2]"}',
        orjson.dumps(
            {"inputs": np.arange(150_000, dtype=np.float32) / 7}, option=orjson.OPT_SERIALIZE_NUMPY
        ),  # > 1 MiB
    ],
)
def test_fast_number_arrays_match_the_exact_path(body):
    assert tensor_json._parse_with_number_arrays(body) is not None  # the fast path takes these
    fast = tensor_json.request_to_arrays(tensor_json.parse_json(body), {"x": tensor_json.DT_FLOAT})
    exact = _exact(body, {"x": tensor_json.DT_FLOAT})
    assert fast[0] == exact[0] and set(fast[1]) == set(exact[1])
    for name in fast[1]:
        assert fast[1][name].dtype == exact[1][name].dtype == np.float32
        np.testing.assert_array_equal(fast[1][name], exact[1][name])


@pytest.mark.parametrize(
    "body, dtype",
    [
        (b'{"inputs": [[1, -2], [3, 4]]}', tensor_json.DT_INT32),
        (b'{"inputs": [1.0, 2]}', tensor_json.DT_INT32),  # 1.0 is no integer: the exact path's error
        (b'{"inputs": [1, 3000000000]}', tensor_json.DT_INT32),
        (b'{"inputs": [1, 18446744073709551615]}', tensor_json.DT_UINT64),  # beyond int64
        (b'{"inputs": [1, 1e400]}', tensor_json.DT_FLOAT),  # beyond a double: simdjson refuses, the exact path casts
    ],
)
def test_fast_path_agrees_with_the_exact_one_where_numbers_need_care(body, dtype):
    def outcome(parse):
        try:
            fmt, arrays = tensor_json.request_to_arrays(parse(body), {"x": dtype})
            return fmt, arrays["x"].dtype, arrays["x"].tolist()
        except ServingError as error:
            return error.message

    assert outcome(tensor_json.parse_json) == outcome(tensor_json._parse_exactly)
    # a document the fast parser refused leaves it ready for the next one
    assert tensor_json._parse_with_number_arrays(b'{"inputs": [[0.5, 1]]}')["inputs"].doubles.tolist() == [0.5, 1.0]


def test_documents_the_fast_path_leaves_to_the_exact_one():
    for body in [
        b'{"instances": [1, NaN]}',
        b'{"instances": [[1, 2], [3]]}',
        b'{"instances": [1, true]}',
        b'{"instances": ["\\u0000", 1]}',
        b'{"instances": [{"b64": "aGk="}]}',
    ]:
        assert tensor_json._parse_with_number_arrays(body) is None, body


def test_response_json_like_tf_serving():
    outputs = {"b": np.array([[0.1, np.nan]], np.float32), "a_bytes": np.array([b"\x00\xff"], object)}
    row = orjson.loads(tensor_json.arrays_to_response(outputs, tensor_json.ROW).replace(b"NaN", b"null"))
    assert row == {"predictions": [{"a_bytes": {"b64": "AP8="}, "b": [0.1, None]}]}
    assert b"NaN" in tensor_json.arrays_to_response(outputs, tensor_json.COLUMNAR)
    single = tensor_json.arrays_to_response({"y": np.array([3.0, 0.5], np.float32)}, tensor_json.ROW)
    assert orjson.loads(single) == {"predictions": [3.0, 0.5]}
    with pytest.raises(ServingError, match="inconsistent batch size"):
        tensor_json.arrays_to_response({"a": np.zeros(2), "b": np.zeros(3)}, tensor_json.ROW)


# ----------------------------------------------------------------------------
# gRPC tensors and flags


def test_grpc_outputs_fill_typed_fields_as_tf_serving():
    from tensorflow.core.framework import types_pb2

    from serving.grpc_service import array_to_tensor_proto
    from serving.options import parse_channel_arguments

    floats = array_to_tensor_proto(np.array([[0.5, -1.25]], np.float32))
    assert list(floats.float_val) == [0.5, -1.25] and not floats.tensor_content
    assert floats.dtype == types_pb2.DT_FLOAT and [d.size for d in floats.tensor_shape.dim] == [1, 2]
    assert list(array_to_tensor_proto(np.array([3, 4], np.int64)).int64_val) == [3, 4]
    assert list(array_to_tensor_proto(np.array([7], np.uint8)).int_val) == [7]
    assert list(array_to_tensor_proto(np.array([True])).bool_val) == [True]
    assert list(array_to_tensor_proto(np.array([b"a", "b"], object)).string_val) == [b"a", b"b"]
    assert list(array_to_tensor_proto(np.array([1.0], np.float16)).half_val) == [0x3C00]
    for array in (np.array([[0.5, -1.25]], np.float32), np.array([3, 4], np.int64), np.array([b"a"], object)):
        np.testing.assert_array_equal(tf.make_ndarray(array_to_tensor_proto(array)), array)
    content = array_to_tensor_proto(np.array([0.5], np.float32), as_tensor_content=True)
    assert content.tensor_content and not content.float_val  # --enable_serialization_as_tensor_content
    assert parse_channel_arguments("grpc.max_receive_message_length=1000,grpc.lb_policy_name=round_robin") == {
        "grpc.max_receive_message_length": 1000,
        "grpc.lb_policy_name": "round_robin",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_channel_arguments("grpc.max_receive_message_length")


def test_default_rest_body_limit_holds_1000_celeba_images_as_json():
    from serving.options import DEFAULT_MAX_REQUEST_BYTES

    images = np.random.default_rng(0).uniform(size=(10, 64, 64, 3)).astype(np.float32)  # CelebA: 64x64x3
    per_10 = len(orjson.dumps({"instances": images}, option=orjson.OPT_SERIALIZE_NUMPY))
    assert 100 * per_10 < DEFAULT_MAX_REQUEST_BYTES


# ----------------------------------------------------------------------------
# Server options and their flags


def test_server_flags_are_made_from_the_options_and_fill_them():
    from absl import flags

    from serving.options import ServerOptions
    from zoo.config import define_flags

    values = flags.FlagValues()
    define_flags(ServerOptions, "test", flag_values=values)
    values(
        [
            "server",
            "--model_base_path=/models/m",
            "--rest_api_port=8501",
            "--enable_batching",
            "--saved_model_tags=serve,gpu",
            "--grpc_channel_arguments=grpc.max_receive_message_length=1000",
        ]
    )
    options = ServerOptions(**{field.name: values[field.name].value for field in ServerOptions.fields()})
    assert options == ServerOptions(
        model_base_path="/models/m",
        rest_api_port=8501,
        enable_batching=True,
        saved_model_tags="serve,gpu",
        grpc_channel_arguments="grpc.max_receive_message_length=1000",
    )
    assert (options.port, options.file_system_poll_wait_seconds, options.host) == (8500, 1.0, "127.0.0.1")
    assert options.meta_graph_tags == ("serve", "gpu")
    assert options.channel_arguments == {"grpc.max_receive_message_length": 1000}
    assert not options.shares_rest_port and ServerOptions(model_base_path="/m", rest_api_parent_pid=7).shares_rest_port
    # Every option has its flag, with the option's default.
    assert set(values) == {field.name for field in ServerOptions.fields()}
    assert all(values[field.name].default == field.default for field in ServerOptions.fields())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model_base_path": ""}, "server_options.model_base_path and server_options.model_config_file are empty!"),
        ({"batching_parameters_file": "b.txt"}, "batching_parameters_file is set without setting server_options"),
        ({"rest_api_workers": 0}, "rest_api_workers must be at least 1, got 0"),
        ({"rest_api_workers": 2}, "--rest_api_workers needs a fixed --rest_api_port"),
        ({"port": 8501, "rest_api_port": 8501}, "--port and --rest_api_port must differ"),
        ({"grpc_channel_arguments": "grpc.lb_policy_name"}, "--grpc_channel_arguments: expected key=value"),
        (
            {
                "tensorflow_session_parallelism": 2,
                "tensorflow_intra_op_parallelism": 2,
                "tensorflow_inter_op_parallelism": 2,
            },
            "You cannot configure all",
        ),
        ({"rest_api_port": "8501"}, "rest_api_port must be a int, got '8501'"),
    ],
)
def test_wrong_server_options_say_what_is_expected(options, message):
    from serving.options import ServerOptions

    with pytest.raises(ValueError, match=re.escape(message)):
        ServerOptions(**{"model_base_path": "/models/m", **options})


def test_server_help_lists_every_flag():
    from serving.options import IgnoredTFServingFlags, ServerOptions

    # absl's --help exits with status 1, which run_module does not check.
    result = run_module("serving.server", "--help", timeout=120)
    listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", result.stdout, re.MULTILINE))
    declared = {field.name for options in (ServerOptions, IgnoredTFServingFlags) for field in options.fields()}
    assert listed == declared | {"version"}
