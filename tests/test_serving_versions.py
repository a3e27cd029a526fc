"""serving.manager in process: version policies, failed and deleted versions, labels, start-up, timeouts, CORS."""

import asyncio
import shutil
import threading
import time

import numpy as np
import orjson
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from serving import manager as manager_module
from serving.errors import ServingError
from serving.manager import ModelManager, read_model_config_file, single_model_config
from serving.rest import RestApi
from zoo.export_layout import list_versions

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END
UNLOADING = get_model_status_pb2.ModelVersionStatus.UNLOADING


class _AddN(tf.Module):
    def __init__(self, n):
        super().__init__()
        self.n = tf.constant(float(n))

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x + self.n}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two SavedModels (y = x + 1 and y = x + 2) and a broken one, to copy into version directories."""
    root = tmp_path_factory.mktemp("saved")
    for n in (1, 2):
        module = _AddN(n)
        tf.saved_model.save(
            module, str(root / f"add{n}"), signatures={"serving_default": module.serve.get_concrete_function()}
        )
    (root / "broken").mkdir()
    (root / "broken" / "saved_model.pb").write_bytes(b"not a SavedModel")
    return root


def put(saved, base, version, what):
    shutil.copytree(saved / what, base / str(version))


def states(manager, name="m"):
    return {s.version: s.state for s in manager.model_status(name).model_version_status}


def answer(manager, name="m", **spec):
    with manager.acquire(name, **spec) as servable:
        return servable.version, servable.run("serving_default", {"x": np.zeros((1, 2), np.float32)})["y"][0, 0]


def make_manager(base, **kwargs):
    kwargs = {"poll_wait_seconds": 0, "max_num_load_retries": 0, "load_retry_interval_seconds": 0, **kwargs}
    return ModelManager(single_model_config("m", str(base)), **kwargs)


def test_model_config_file_versions_policies_and_labels(saved, tmp_path):
    base = tmp_path / "m"
    put(saved, base, 1, "add1")
    put(saved, base, 3, "add1")
    shutil.copytree(saved / "add1", base / ".tmp-4-abc" / "saved_model")  # an export in progress is ignored
    config_path = tmp_path / "models.config"
    models = f"""
  config {{ name: "all" base_path: "{base}" model_platform: "tensorflow" model_version_policy {{ all {{}} }} LABELS }}
  config {{ name: "latest" base_path: "{base}" model_platform: "tensorflow" }}
  config {{ name: "pinned" base_path: "{base}" model_version_policy {{ specific {{ versions: 1 }} }} }}"""
    labels = 'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 }'
    config_path.write_text(f"model_config_list {{{models.replace('LABELS', '')}}}")
    assert sorted(list_versions(str(base))) == [1, 3]
    manager = ModelManager(read_model_config_file(str(config_path)), poll_wait_seconds=0)
    assert manager.start()
    try:
        assert sorted(states(manager, "all")) == [1, 3] and sorted(states(manager, "latest")) == [3]
        assert sorted(states(manager, "pinned")) == [1]
        # Labels may point to available versions only (TF Serving: FAILED_PRECONDITION otherwise).
        config_path.write_text(f"model_config_list {{{models.replace('LABELS', labels)}}}")
        manager.set_config(read_model_config_file(str(config_path)))
        for name, spec, expected in [
            ("all", {"label": "stable"}, 1),
            ("all", {"label": "canary"}, 3),
            ("all", {"version": 1}, 1),
            ("latest", {}, 3),
        ]:
            assert answer(manager, name, **spec) == (expected, 1.0)
        with pytest.raises(ServingError, match="Unrecognized servable version label: beta"):
            answer(manager, "all", label="beta")
        with pytest.raises(ServingError, match=r"Specific\(latest, 1\)") as error:
            answer(manager, "latest", version=1)
        assert error.value.http_status == 404
        unavailable = labels.replace("value: 3", "value: 7")
        config_path.write_text(f"model_config_list {{{models.replace('LABELS', unavailable)}}}")
        message = "assign label to version 7 of model all, which is not currently available"
        with pytest.raises(ServingError, match=message) as error:
            manager.set_config(read_model_config_file(str(config_path)))
        assert error.value.code == "FAILED_PRECONDITION"
        assert answer(manager, "all", label="canary") == (3, 1.0)  # the rejected config changed nothing
        # A new version appears: `latest` moves to it and retires 3 once its requests are done.
        with manager.acquire("latest") as held:
            put(saved, base, 5, "add2")
            manager.poll()
            assert answer(manager, "latest") == (5, 2.0)
            assert held.run("serving_default", {"x": np.zeros((1, 2), np.float32)})["y"].tolist() == [[1, 1]]
        for thread in manager._unloaders:
            thread.join(30)
        assert states(manager, "latest") == {5: AVAILABLE, 3: END}
    finally:
        manager.stop()


def test_labels_in_the_start_up_config_need_allow_version_labels_for_unavailable_models(saved, tmp_path):
    base = tmp_path / "m"
    put(saved, base, 1, "add1")
    config = single_model_config("m", str(base))
    config.model_config_list.config[0].version_labels["stable"] = 1
    with pytest.raises(ServingError, match="assign label to version 1 of model m"):
        ModelManager(config, poll_wait_seconds=0)
    manager = ModelManager(config, poll_wait_seconds=0, allow_version_labels_for_unavailable_models=True)
    assert manager.start()
    try:
        assert answer(manager, label="stable") == (1, 1.0)
    finally:
        manager.stop()


def test_a_failed_newest_version_leaves_the_serving_one_in_place(saved, tmp_path):
    base = tmp_path / "m"
    put(saved, base, 1, "add1")
    manager = make_manager(base)
    assert manager.start()
    try:
        put(saved, base, 2, "add2")  # valid, but not the newest
        put(saved, base, 3, "broken")
        for _ in range(3):
            manager.poll()
        # TF Serving aspires the newest (3); it fails; version 1 keeps serving and 2 is never loaded.
        assert answer(manager) == (1, 1.0)
        status = {s.version: s for s in manager.model_status("m").model_version_status}
        assert set(status) == {1, 3} and status[1].state == AVAILABLE
        assert status[3].state == END and "failed" in status[3].status.error_message
        shutil.rmtree(base / "3")  # the broken version leaves: the newest is 2 now
        manager.poll()
        assert answer(manager) == (2, 2.0)
    finally:
        manager.stop()


def test_deleting_every_version_unloads_the_model_but_a_missing_base_path_changes_nothing(saved, tmp_path):
    base = tmp_path / "m"
    put(saved, base, 1, "add1")
    manager = make_manager(base)
    assert manager.start()
    try:
        moved = tmp_path / "moved"
        base.rename(moved)  # the base path itself is gone: a poll error, the model keeps serving
        manager.poll()
        assert answer(manager) == (1, 1.0)
        moved.rename(base)
        shutil.rmtree(base / "1")  # every version directory is gone: the model is unloaded
        manager.poll()
        for thread in manager._unloaders:
            thread.join(30)
        assert states(manager) == {1: END}
        with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(m\)"):
            answer(manager)
        put(saved, base, 4, "add2")
        manager.poll()
        assert answer(manager) == (4, 2.0)
    finally:
        manager.stop()


def test_load_retries_follow_max_num_load_retries_and_load_retry_interval(saved, tmp_path, monkeypatch):
    base = tmp_path / "m"
    put(saved, base, 1, "broken")
    attempts = []
    real = manager_module.Servable

    def counting(*args, **kwargs):
        attempts.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(manager_module, "Servable", counting)
    manager = make_manager(base, max_num_load_retries=2, load_retry_interval_seconds=0.3)
    with pytest.raises(RuntimeError, match=r"1 model\(s\) did not become available: \{\{name: m version: 1\} due to"):
        manager.start()  # the newest version fails at start-up: start-up fails
    manager.stop()
    assert len(attempts) == 3  # one load and two retries
    assert attempts[2] - attempts[0] >= 0.55
    with pytest.raises(RuntimeError, match="Could not find base path"):
        make_manager(tmp_path / "nowhere").start()


def test_start_up_waits_for_a_first_version(saved, tmp_path):
    base = tmp_path / "m"
    base.mkdir()
    manager = make_manager(base, poll_wait_seconds=0.1)
    started = []
    thread = threading.Thread(target=lambda: started.append(manager.start()))
    thread.start()
    try:
        time.sleep(0.5)
        assert not started  # no version yet: still starting
        put(saved, base, 1, "add1")
        thread.join(30)
        assert started == [True] and answer(manager) == (1, 1.0)
    finally:
        manager.stop()
        thread.join(30)


# ----------------------------------------------------------------------------
# The REST application in process


def call(api, method, path, body=b"", headers=()):
    """(status, headers, body) of one request to the REST handler."""
    return asyncio.run(_call(api, method, path, body, headers))


async def _call(api, method, path, body=b"", headers=()):
    answered = asyncio.get_running_loop().create_future()
    api.respond(method, path, dict(headers), body, lambda *answer: answered.set_result(answer))
    status, answer_headers, answer_body = await answered
    return status, dict(answer_headers), answer_body


def test_a_timed_out_call_is_cancelled_or_finishes_before_its_version_unloads(saved, tmp_path):
    base = tmp_path / "m"
    put(saved, base, 1, "add1")
    manager = make_manager(base, num_request_threads=1)
    assert manager.start()
    api = RestApi(manager, timeout_seconds=0.3)
    try:
        v1 = manager._models["m"].available[1]
        gate, calls = threading.Event(), []

        def blocking(**tensors):
            calls.append(1)
            gate.wait(30)
            return {"y": tensors["x"] + 1.0}

        v1.signatures["serving_default"].function = blocking
        body = orjson.dumps({"instances": [[0.0, 0.0]]})

        async def two_requests():
            path = "/v1/models/m:predict"
            return await asyncio.gather(_call(api, "POST", path, body), _call(api, "POST", path, body))

        (first, _, error), (second, _, _) = asyncio.run(two_requests())
        assert (first, second) == (504, 504) and orjson.loads(error) == {"error": "Deadline Exceeded"}
        put(saved, base, 2, "add2")
        manager.poll()  # version 2 serves; version 1 is retired, its timed-out call still running
        time.sleep(0.5)
        assert states(manager)[1] == UNLOADING and v1.signatures, "no unload under a running call"
        gate.set()
        for thread in manager._unloaders:
            thread.join(30)
        assert states(manager) == {2: AVAILABLE, 1: END}
        assert calls == [1], "the queued request that timed out never ran"
    finally:
        gate.set()
        manager.stop()


def test_cors_preflight_and_headers_as_tf_serving(saved, tmp_path):
    base = tmp_path / "m"
    put(saved, base, 1, "add1")
    manager = make_manager(base)
    assert manager.start()
    try:
        plain, cors = RestApi(manager), RestApi(manager, enable_cors=True)
        allow = {
            b"access-control-allow-origin": b"*",
            b"access-control-allow-methods": b"POST, GET",
            b"access-control-allow-headers": b"Content-Type",
        }
        status, headers, body = call(
            cors, "OPTIONS", "/v1/models/m:predict", headers=[(b"origin", b"https://app.example")]
        )
        assert (status, body) == (200, b"") and allow.items() <= headers.items()
        status, headers, body = call(cors, "OPTIONS", "/v1/models/m")
        assert status == 400 and orjson.loads(body) == {"error": "Origin header is missing in CORS preflight"}
        status, headers, _ = call(cors, "GET", "/v1/models/m")
        assert status == 200 and allow.items() <= headers.items()
        status, headers, body = call(cors, "POST", "/v1/models/m:predict", b'{"instances": [[1, 2]]}')
        assert (
            status == 200 and orjson.loads(body) == {"predictions": [[2.0, 3.0]]} and allow.items() <= headers.items()
        )
        status, headers, _ = call(plain, "OPTIONS", "/v1/models/m", headers=[(b"origin", b"http://a")])
        assert status == 200 and b"access-control-allow-origin" not in headers  # preflight answered, no CORS
        status, headers, _ = call(cors, "GET", "/elsewhere")
        assert status == 404 and b"access-control-allow-origin" not in headers
    finally:
        manager.stop()
