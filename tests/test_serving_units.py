"""serving internals in process: batching, TF Serving's JSON mapping, config files, versions and labels."""

import concurrent.futures
import shutil

import numpy as np
import orjson
import pytest
import tensorflow as tf

from serving import batching, tensor_json
from serving.errors import ServingError
from serving.manager import ModelManager, list_versions, read_model_config_file


def test_batching_parameters_text_proto():
    options = batching.parse_batching_parameters(
        "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\nnum_batch_threads { value: 3 }\n"
        "max_enqueued_batches { value: 7 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
    )
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (16, 500, 3)
    assert options.max_enqueued_batches == 7 and options.allowed_batch_sizes == (8, 16)
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        batching.parse_batching_parameters("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")


def test_batch_scheduler_merges_pads_and_splits_rows():
    calls = []

    def run(signature, inputs):
        calls.append(inputs["x"].shape[0])
        if np.isnan(inputs["x"]).any():
            raise tf.errors.InvalidArgumentError(None, None, "NaN")
        return {"y": inputs["x"] * 2, "sum": inputs["x"].sum(axis=1)}

    options = batching.BatchingOptions(max_batch_size=16, batch_timeout_micros=20_000, num_batch_threads=2,
                                       allowed_batch_sizes=(4, 16))  # fmt: skip
    scheduler = batching.BatchScheduler(run, options)
    try:
        rows = [np.full((1 + i % 3, 2), i, np.float32) for i in range(30)]
        rows[7][0, 0] = np.nan  # fails alone; its batch-mates still succeed
        big = np.ones((40, 2), np.float32)  # larger than max_batch_size: runs on its own
        futures = [scheduler.submit("sig", {"x": x}) for x in rows] + [scheduler.submit("sig", {"x": big})]
        other = scheduler.submit("sig", {"x": np.zeros((2, 3), np.float32)})  # other shape: never merged
        for i, (future, x) in enumerate(zip(futures, rows + [big])):
            if i == 7:
                with pytest.raises(tf.errors.InvalidArgumentError):
                    future.result(30)
                continue
            out = future.result(30)
            np.testing.assert_array_equal(out["y"], x * 2)
            np.testing.assert_array_equal(out["sum"], x.sum(axis=1))
        assert other.result(30)["y"].shape == (2, 3)
        assert max(calls) == 40 and any(4 < c <= 16 for c in calls), calls
        assert all(c in (4, 16) or c == 40 or c <= 3 for c in calls), calls  # padded to allowed sizes
    finally:
        scheduler.stop()


def test_batch_queue_full_is_unavailable():
    gate = concurrent.futures.Future()

    def run(signature, inputs):
        gate.result(30)
        return {"y": inputs["x"]}

    scheduler = batching.BatchScheduler(run, batching.BatchingOptions(max_batch_size=2, max_enqueued_batches=1,
                                                                     num_batch_threads=1))  # fmt: skip
    try:
        first = scheduler.submit("s", {"x": np.zeros((2, 1))})
        while not first.running():
            pass
        scheduler.submit("s", {"x": np.zeros((2, 1))})
        with pytest.raises(ServingError) as error:
            scheduler.submit("s", {"x": np.zeros((1, 1))})
        assert error.value.http_status == 503
    finally:
        gate.set_result(None)
        scheduler.stop()


@pytest.mark.parametrize(
    "body, dtypes, expected",
    [
        (b'{"instances": [1, 2.5, NaN]}', {"x": tensor_json.DT_FLOAT}, {"x": [1.0, 2.5, np.nan]}),
        (b'{"inputs": {"a": [[1, 2]], "b": ["s"]}}', {"a": tensor_json.DT_INT64, "b": tensor_json.DT_STRING},
         {"a": [[1, 2]], "b": [b"s"]}),
        (b'{"instances": [{"a": 1, "b": {"b64": "aGk="}}, {"a": 2, "b": "x"}]}',
         {"a": tensor_json.DT_INT32, "b": tensor_json.DT_STRING}, {"a": [1, 2], "b": [b"hi", b"x"]}),
        (b'{"inputs": 3}', {"x": tensor_json.DT_DOUBLE}, {"x": 3.0}),
    ],
)  # fmt: skip
def test_request_json_to_tensors(body, dtypes, expected):
    _, arrays = tensor_json.request_to_arrays(tensor_json.parse_json(body), dtypes)
    for name, value in expected.items():
        if arrays[name].dtype == object:
            assert arrays[name].tolist() == value
        else:
            np.testing.assert_array_equal(arrays[name], np.array(value, arrays[name].dtype))


def test_response_json_like_tf_serving():
    outputs = {"b": np.array([[0.1, np.nan]], np.float32), "a_bytes": np.array([b"\x00\xff"], object)}
    row = orjson.loads(tensor_json.arrays_to_response(outputs, tensor_json.ROW).replace(b"NaN", b"null"))
    assert row == {"predictions": [{"a_bytes": {"b64": "AP8="}, "b": [0.1, None]}]}
    assert b"NaN" in tensor_json.arrays_to_response(outputs, tensor_json.COLUMNAR)
    single = tensor_json.arrays_to_response({"y": np.array([3.0, 0.5], np.float32)}, tensor_json.ROW)
    assert orjson.loads(single) == {"predictions": [3.0, 0.5]}
    with pytest.raises(ServingError, match="inconsistent batch size"):
        tensor_json.arrays_to_response({"a": np.zeros(2), "b": np.zeros(3)}, tensor_json.ROW)


class _Tiny(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x + 1.0}


def _save_tiny(path):
    module = _Tiny()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve.get_concrete_function()})


def test_model_config_file_versions_policies_and_labels(tmp_path):
    base = tmp_path / "m"
    _save_tiny(base / "1")
    shutil.copytree(base / "1", base / "3")
    (base / ".tmp-4-abc").mkdir()  # an export in progress is ignored
    shutil.copytree(base / "1", base / ".tmp-4-abc" / "saved_model")
    config_path = tmp_path / "models.config"
    config_path.write_text(f"""
model_config_list {{
  config {{
    name: "all" base_path: "{base}" model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 3 }}
  }}
  config {{ name: "latest" base_path: "{base}" model_platform: "tensorflow" }}
  config {{ name: "pinned" base_path: "{base}" model_version_policy {{ specific {{ versions: 1 }} }} }}
}}""")
    assert sorted(list_versions(str(base))) == [1, 3]
    manager = ModelManager(read_model_config_file(str(config_path)), poll_wait_seconds=0)
    manager.start()
    try:
        def versions(name):
            return sorted(s.version for s in manager.model_status(name).model_version_status)

        assert versions("all") == [1, 3] and versions("latest") == [3] and versions("pinned") == [1]
        for name, label, version, expected in [("all", "stable", None, 1), ("all", "canary", None, 3),
                                               ("all", None, 1, 1), ("latest", None, None, 3)]:  # fmt: skip
            with manager.acquire(name, version=version, label=label) as servable:
                assert servable.version == expected
                assert servable.run("serving_default", {"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[2, 2]]
        with pytest.raises(ServingError, match="Unrecognized servable version label: beta"):
            with manager.acquire("all", label="beta"):
                pass
        with pytest.raises(ServingError, match=r"Specific\(latest, 1\)") as error:
            with manager.acquire("latest", version=1):
                pass
        assert error.value.http_status == 404
        # A new version appears: `latest` moves to it and retires 3 once its requests are done.
        with manager.acquire("latest") as held:
            shutil.copytree(base / "1", base / "5")
            manager.poll()
            with manager.acquire("latest") as newest:
                assert newest.version == 5
            assert held.run("serving_default", {"x": np.zeros((1, 2), np.float32)})["y"].tolist() == [[1, 1]]
        for thread in manager._unloaders:
            thread.join(30)
        states = {s.version: s.state for s in manager.model_status("latest").model_version_status}
        assert set(states) == {3, 5}
        assert manager.model_status("latest", version=5).model_version_status[0].state == 30  # AVAILABLE
        assert manager.model_status("latest", version=3).model_version_status[0].state == 50  # END
        # A version that cannot load is given up on; the previous one keeps serving.
        (base / "6").mkdir()
        (base / "6" / "saved_model.pb").write_bytes(b"not a SavedModel")
        for _ in range(manager.max_num_load_retries):
            manager.poll()
        with manager.acquire("latest") as servable:
            assert servable.version == 5
        failed = manager.model_status("latest", version=6).model_version_status[0]
        assert failed.state == 50 and failed.status.error_message
    finally:
        manager.stop()
