"""REST serving throughput and latency vs in-process SavedModel calls, and where the time goes.

    python -m benchmarks.serving [--model_dir=M] [--seconds=5] [--rounds=3] [--images_per_request=1]

Exports an encoder (the trained model in `--model_dir`, or a freshly built
AVAE of the default `color_mnist_embedded` shape: mlp, 28x28x3, latent 64),
then, on the same pre-generated images, in two input formats - float pixels
as JSON numbers (`serving_default`) and PNG bytes as `{"b64": ...}`
(`encode_image`):

1. in process: the SavedModel signature called directly, one call per
   request, from 1, 8 and 32 threads;
2. over REST: `python -m serving.server` in a subprocess, without and with
   `--enable_batching`, and with batching on 2 REST worker processes
   (`--rest_api_workers=2`), driven by 1, 8 and 32 concurrent keep-alive
   connections (an asyncio client sending pre-encoded bodies);
3. the headline, side by side: one REST process with batching at
   concurrency 32 on float JSON, alternated `--rounds` times with the
   in-process calls at concurrency 8 and 32 (the machine is shared, so the
   two are measured a few seconds apart, not minutes); the ratio is the
   median REST rate over the better median in-process rate;
4. where the time goes: the server's CPU per request by thread (event
   loop, TensorFlow, batch threads) during step 3, and a cProfile of the
   event loop running the REST application in process (no sockets).

It reports embeddings/s, p50/p99 request latency and embeddings per
CPU-second (server and client processes together, vs the in-process
caller), checks every REST answer's status and a sample of embeddings
against the in-process result, and writes results/serving.json and
results/serving.md. Target: one REST process with batching at concurrency
32 reaches >= 70% of the in-process embeddings/s.
"""

import asyncio
import cProfile
import json
import os
import platform
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import orjson

from benchmarks import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCURRENCY = (1, 8, 32)
SERVER_SETTINGS = (  # (results key, batching, REST worker processes)
    ("rest", False, 1),
    ("rest_batching", True, 1),
    ("rest_batching_2_workers", True, 2),
)
NAME = "encoder"
BATCHING_PARAMETERS = """\
max_batch_size { value: 64 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1000 }
num_batch_threads { value: 2 }
"""


def build_export(model_dir, export_base):
    import tensorflow as tf

    from export import encoder

    if model_dir:
        return encoder.export_from_model_dir(model_dir, export_base, NAME), f"trained model from {model_dir}"
    from train.loop import build_model
    from zoo import registry

    registry.import_all_models()
    model = build_model(
        registry.get_model_class("avae"),
        tf.distribute.get_strategy(),
        image_shape=(28, 28, 3),
        arch="mlp",
        latent_dim=64,
        seed=0,
    )
    model(np.zeros((1, 28, 28, 3), np.float32))
    return encoder.export(model, export_base, NAME), "AVAE, mlp, 28x28x3, latent 64 (untrained weights)"


def percentiles(latencies):
    if not latencies:
        return None, None
    values = np.array(latencies) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


# ----------------------------------------------------------------------------
# In process


def bench_in_process(path, requests, concurrency, seconds, signature="serving_default", input_name="images"):
    import tensorflow as tf

    signature_function = tf.saved_model.load(path).signatures[signature]

    def function(x):
        return signature_function(**{input_name: x})

    tensors = [tf.constant(x) for x in requests]
    for x in tensors[:20]:
        function(x)
    latencies, count, stop = [], [0], threading.Event()
    lock = threading.Lock()

    def worker(offset):
        local, images = [], 0
        i = offset
        while not stop.is_set():
            x = tensors[i % len(tensors)]
            start = time.perf_counter()
            function(x)["embedding"].numpy()
            local.append(time.perf_counter() - start)
            images += int(x.shape[0])
            i += concurrency
        with lock:
            latencies.extend(local)
            count[0] += images

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(concurrency)]
    start, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return count[0] / elapsed, *percentiles(latencies), count[0] / cpu


def reference_embeddings(path, requests, signature="serving_default", input_name="images"):
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures[signature]
    return [function(**{input_name: tf.constant(x)})["embedding"].numpy() for x in requests]


INPUT_FORMATS = {
    # name: (signature, input name, description)
    "float_json": ("serving_default", "images", 'float32 pixels as JSON numbers: {"instances": [image]}'),
    "png_b64": (
        "encode_image",
        "image_bytes",
        'PNG bytes: {"signature_name": "encode_image", "instances": [{"b64": ...}]}',
    ),
}


def make_requests(fmt, shape, images_per_request, num_requests):
    """(in-process inputs, REST bodies) of the same images."""
    import base64

    import tensorflow as tf

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, size=(images_per_request, *shape), dtype=np.uint8) for _ in range(num_requests)]
    if fmt == "float_json":
        inputs = [(p / 255).astype(np.float32) for p in pixels]
        bodies = [orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY) for x in inputs]
        return inputs, bodies
    inputs = [np.array([tf.io.encode_png(image).numpy() for image in p], dtype=object) for p in pixels]
    bodies = [
        orjson.dumps(
            {"signature_name": "encode_image", "instances": [{"b64": base64.b64encode(b).decode()} for b in x]}
        )
        for x in inputs
    ]
    return inputs, bodies


# ----------------------------------------------------------------------------
# Over REST


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_base, batching_file, log_path, workers=1):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "serving.server",
        f"--model_name={NAME}",
        f"--model_base_path={model_base}",
        f"--rest_api_port={port}",
        "--port=0",
        "--file_system_poll_wait_seconds=0",
    ]
    if batching_file:
        cmd += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    if workers > 1:
        cmd.append(f"--rest_api_workers={workers}")
    log = open(log_path, "w")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {open(log_path).read()[-3000:]}")
        with open(log_path) as f:
            if f.read().count("Exporting HTTP/REST API at:") < 2 * workers:  # each process logs and prints it
                time.sleep(0.3)
                continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET /v1/models/{NAME} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port, cmd
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("server did not start")


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _drive(port, bodies, sizes, concurrency, seconds, check):
    latencies, errors, images, stop = [], [], [0], time.perf_counter() + seconds
    head = f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"

    requests = [f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]

    async def connection(offset):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        try:
            while time.perf_counter() < stop:
                k = i % len(bodies)
                start = time.perf_counter()
                writer.write(requests[k])
                status, body = await _read_response(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(body[:200])
                else:
                    images[0] += sizes[k]
                    if i < offset + 3 * concurrency:  # spot-check answers against the in-process result
                        check(k, body, errors)
                i += concurrency
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(c) for c in range(concurrency)))
    return images[0] / (time.perf_counter() - start), latencies, errors


def _process_cpu_seconds(pid):
    """CPU seconds of `pid` and its child processes (the REST workers)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.update(int(child) for child in f.read().split())
        except OSError:
            pass
    return seconds + sum(_process_cpu_seconds(child) for child in children)


def _thread_cpu_seconds(pid):
    """CPU seconds of `pid`'s threads by group: its main thread (the REST event loop), TensorFlow's, the others."""
    groups = {"event_loop": 0.0, "tensorflow": 0.0, "other_threads": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        group = "event_loop" if int(task) == pid else "tensorflow" if name.startswith("tf_") else "other_threads"
        groups[group] += seconds
    return groups


def _run_client(coroutine):
    """The load generator runs on uvloop when installed: it shares the machine with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def bench_rest(port, bodies, sizes, concurrency, seconds, check, server_pid):
    """(embeddings/s, p50 ms, p99 ms, errors, embeddings per CPU-second, server CPU us per request by thread group)."""
    _run_client(_drive(port, bodies, sizes, concurrency, min(1.0, seconds), check))  # warm-up
    threads = _thread_cpu_seconds(server_pid)
    server_cpu, client_cpu, start = _process_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    rate, latencies, errors = _run_client(_drive(port, bodies, sizes, concurrency, seconds, check))
    elapsed = time.perf_counter() - start
    cpu = _process_cpu_seconds(server_pid) - server_cpu + time.process_time() - client_cpu
    requests = max(len(latencies), 1)
    per_request = {
        group: (cpu_s - threads[group]) / requests * 1e6 for group, cpu_s in _thread_cpu_seconds(server_pid).items()
    }
    per_request["client"] = (time.process_time() - client_cpu) / requests * 1e6
    return rate, *percentiles(latencies), errors, rate * elapsed / cpu, per_request


def batching_statistics(log_path):
    """The batch threads' 'N model calls, R rows per call' line from a server log (logged at shutdown)."""
    with open(log_path) as f:
        lines = [line.strip() for line in f if "rows per call" in line]
    return lines[-1].split("] ", 1)[-1].split(" INFO ", 1)[-1] if lines else None


# ----------------------------------------------------------------------------
# Side by side, and where the time goes


def side_by_side(path, data, sizes, check, batching_file, log_path, seconds, rounds):
    """Alternates one REST process (batching, c=32) with in-process calls (c=8 and 32), `rounds` times."""
    inputs, bodies, _ = data
    proc, port, cmd = start_server(os.path.dirname(path), batching_file, log_path, 1)
    rounds_out = []
    try:
        for index in range(rounds):
            in_process = {c: bench_in_process(path, inputs, c, seconds)[0] for c in (8, 32)}
            rate, p50, p99, errors, per_cpu, per_request = bench_rest(port, bodies, sizes, 32, seconds, check, proc.pid)
            rounds_out.append(
                {
                    "in_process": in_process,
                    "rest": rate,
                    "rest_p50_ms": p50,
                    "rest_p99_ms": p99,
                    "errors": len(errors),
                    "server_cpu_us_per_request": per_request,
                }
            )
            print(
                f"side by side round {index + 1}: in-process c=8 {in_process[8]:.0f}, c=32 {in_process[32]:.0f}; "
                f"REST c=32 {rate:.0f} emb/s, errors {len(errors)}; server CPU us/request "
                f"{ {k: round(v) for k, v in per_request.items()} }",
                flush=True,
            )
    finally:
        stop_server(proc)
    in_process = {c: float(np.median([r["in_process"][c] for r in rounds_out])) for c in (8, 32)}
    rest = float(np.median([r["rest"] for r in rounds_out]))
    best = max(in_process.values())
    cpu = {
        group: float(np.median([r["server_cpu_us_per_request"][group] for r in rounds_out]))
        for group in rounds_out[0]["server_cpu_us_per_request"]
    }
    return {
        "server_command": " ".join(cmd[1:]),
        "rounds": rounds_out,
        "median_in_process": in_process,
        "median_rest": rest,
        "ratio": rest / best,
        "errors": sum(r["errors"] for r in rounds_out),
        "median_server_cpu_us_per_request": cpu,
        "batching": batching_statistics(log_path),
    }


async def _drive_app(api, bodies, requests, concurrency):
    """Sends `requests` predict requests to the REST handler itself (no sockets), `concurrency` at a time."""
    loop = asyncio.get_running_loop()
    path, statuses = f"/v1/models/{NAME}:predict", []

    async def connection(offset):
        for i in range(offset, requests, concurrency):
            answered = loop.create_future()
            api.respond("POST", path, {}, bodies[i % len(bodies)], lambda *answer: answered.set_result(answer))
            statuses.append((await answered)[0])

    await asyncio.gather(*(connection(c) for c in range(concurrency)))
    if set(statuses) != {200}:
        raise RuntimeError(f"the REST handler answered {sorted(set(statuses))}")


# (label, file name ending, function name) of the steps of a predict request, in the order they run.
_STEPS = [
    ("request in, up to its queued model call (rest.RestApi.respond)", "serving/rest.py", "respond"),
    ("- of which: JSON parse (tensor_json.parse_json)", "serving/tensor_json.py", "parse_json"),
    (
        "- of which: numbers to a float32 array (tensor_json.request_to_arrays)",
        "serving/tensor_json.py",
        "request_to_arrays",
    ),
    ("- of which: queue the request for a batch (batching.BatchScheduler.submit)", "serving/batching.py", "submit"),
    ("batches handed to the batch threads (batching.BatchScheduler._flush)", "serving/batching.py", "_flush"),
    ("model call done: the answer (rest.RestApi._predict.<locals>.done)", "serving/rest.py", "done"),
    ("- of which: response JSON (tensor_json.arrays_to_response)", "serving/tensor_json.py", "arrays_to_response"),
]


def profile_request_path(path, bodies, batching_file, requests=3000, concurrency=32):
    """cProfile of the event loop running the REST application in process, with batching."""
    from serving.batching import read_batching_parameters
    from serving.manager import ModelManager, single_model_config
    from serving.rest import RestApi

    manager = ModelManager(
        single_model_config(NAME, os.path.dirname(path)),
        poll_wait_seconds=0,
        batching_options=read_batching_parameters(batching_file),
    )
    manager.start()
    try:
        api = RestApi(manager, timeout_seconds=30)
        asyncio.run(_drive_app(api, bodies, 10 * concurrency, concurrency))  # warm-up
        start = time.thread_time()
        asyncio.run(_drive_app(api, bodies, requests, concurrency))
        unprofiled = (time.thread_time() - start) / requests * 1e6
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(_drive_app(api, bodies, requests, concurrency))
        profiler.disable()
    finally:
        manager.stop()
    # The event loop's waits for work (epoll) are not work: left out of the total.
    stats = {key: entry for key, entry in pstats.Stats(profiler).stats.items() if "select" not in key[2]}
    total = sum(entry[2] for entry in stats.values())  # every function's own time: the whole loop thread
    steps = {}
    for label, file_end, function in _STEPS:
        steps[label] = (
            sum(entry[3] for (file, _, name), entry in stats.items() if file.endswith(file_end) and name == function)
            / total
        )
    top = sorted(stats.items(), key=lambda item: -item[1][2])[:12]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "event_loop_cpu_us_per_request_unprofiled": unprofiled,
        "step_share_of_event_loop": steps,
        "top_functions_by_own_time": [
            {
                "function": f"{os.path.basename(file)}:{line}({name})" if line else name,
                "share": entry[2] / total,
                "calls_per_request": entry[1] / requests,
            }
            for (file, line, name), entry in top
        ],
    }


# ----------------------------------------------------------------------------


def run(model_dir=None, seconds=5.0, rounds=3, images_per_request=1, num_requests=512, out_dir=None):
    work = tempfile.mkdtemp(prefix="serving-bench-")
    try:
        path, description = build_export(model_dir, os.path.join(work, "export"))
        import tensorflow as tf

        from zoo.pretrained import Encoder

        shape = Encoder(tf.saved_model.load(path)).image_shape
        batching_file = os.path.join(work, "batching_parameters.txt")
        with open(batching_file, "w") as f:
            f.write(BATCHING_PARAMETERS)
        data = {}
        for fmt, (signature, input_name, _) in INPUT_FORMATS.items():
            inputs, bodies = make_requests(fmt, shape, images_per_request, num_requests)
            data[fmt] = (inputs, bodies, reference_embeddings(path, inputs, signature, input_name))
        sizes = [images_per_request] * num_requests

        def checker(expected):
            def check(k, body, errors):
                got = np.array([row["embedding"] for row in orjson.loads(body)["predictions"]], np.float32)
                if not np.allclose(got, expected[k], rtol=1e-4, atol=1e-5):
                    errors.append(f"request {k}: embedding differs from the in-process result")

            return check

        headline = side_by_side(
            path,
            data["float_json"],
            sizes,
            checker(data["float_json"][2]),
            batching_file,
            os.path.join(work, "side_by_side.log"),
            seconds,
            rounds,
        )
        headline["server_command"] = headline["server_command"].replace(work, "<tmp>")
        print(f"one REST process / in-process, side by side: {headline['ratio']:.0%}", flush=True)
        profile = profile_request_path(path, data["float_json"][1], batching_file)
        results = {fmt: {"in_process": {}, **{key: {} for key, _, _ in SERVER_SETTINGS}} for fmt in INPUT_FORMATS}
        for fmt, (signature, input_name, _) in INPUT_FORMATS.items():
            for c in CONCURRENCY:
                rate, p50, p99, per_cpu = bench_in_process(path, data[fmt][0], c, seconds, signature, input_name)
                results[fmt]["in_process"][c] = {
                    "embeddings_per_s": rate,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "embeddings_per_cpu_s": per_cpu,
                }
                print(
                    f"{fmt:10s} in-process      c={c:2d}: {rate:8.0f} emb/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                    f"{per_cpu:6.0f} emb/cpu-s",
                    flush=True,
                )
        commands = {}
        for key, batching, workers in SERVER_SETTINGS:
            batching = batching_file if batching else None
            proc, port, cmd = start_server(os.path.dirname(path), batching, os.path.join(work, f"{key}.log"), workers)
            commands[key] = " ".join(cmd[1:]).replace(work, "<tmp>")
            try:
                for fmt in INPUT_FORMATS:
                    _, bodies, expected = data[fmt]
                    for c in CONCURRENCY:
                        rate, p50, p99, errors, per_cpu, _ = bench_rest(
                            port, bodies, sizes, c, seconds, checker(expected), proc.pid
                        )
                        results[fmt][key][c] = {
                            "embeddings_per_s": rate,
                            "p50_ms": p50,
                            "p99_ms": p99,
                            "errors": len(errors),
                            "embeddings_per_cpu_s": per_cpu,
                        }
                        print(
                            f"{fmt:10s} {key:15s} c={c:2d}: {rate:8.0f} emb/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                            f"{per_cpu:6.0f} emb/cpu-s  errors {len(errors)}",
                            flush=True,
                        )
                        if errors:
                            print("  e.g.", errors[0], flush=True)
            finally:
                stop_server(proc)
        ratios = {}
        for fmt in INPUT_FORMATS:
            r = results[fmt]
            best = max(v["embeddings_per_s"] for v in r["in_process"].values())
            best_per_cpu = max(v["embeddings_per_cpu_s"] for v in r["in_process"].values())
            ratios[fmt] = {
                key: {
                    "vs_best_in_process": r[key][32]["embeddings_per_s"] / best,
                    "vs_best_in_process_per_cpu_second": r[key][32]["embeddings_per_cpu_s"] / best_per_cpu,
                }
                for key in ("rest_batching", "rest_batching_2_workers")
            }
        report = {
            "command": runs.command_line("benchmarks.serving"),
            "side_by_side": headline,
            "profile": profile,
            "server_commands": commands,
            "batching_parameters": BATCHING_PARAMETERS,
            "model": description,
            "images_per_request": images_per_request,
            "seconds_per_setting": seconds,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "tensorflow": tf.__version__,
                "load_average_at_end": os.getloadavg(),
            },
            "input_formats": {fmt: desc for fmt, (_, _, desc) in INPUT_FORMATS.items()},
            "results": results,
            "ratios": ratios,
            "target": "one REST process with batching, float JSON, concurrency 32 >= 0.70 x in-process embeddings/s "
            "(side by side)",
            "target_met": headline["ratio"] >= 0.70,
        }
        write_reports(report, out_dir or os.path.join(REPO, "results"))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_reports(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "serving.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    machine = report["machine"]
    head = report["side_by_side"]
    lines = [
        "# Serving benchmark: REST (serving.server) vs in-process SavedModel",
        "",
        f"Model: {report['model']}; {report['images_per_request']} image(s) per request; "
        f"{report['seconds_per_setting']} s per setting; machine: {machine['cpus']} CPUs (shared with other jobs), "
        f"TensorFlow {machine['tensorflow']}, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in machine['load_average_at_end'])}.",
        "",
        "## One REST process vs in process, side by side (float JSON, batching, concurrency 32)",
        "",
        "| round | in-process c=8 emb/s | in-process c=32 emb/s | one REST process c=32 emb/s | REST p50 / p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for index, r in enumerate(head["rounds"], 1):
        lines.append(
            f"| {index} | {r['in_process'][8]:.0f} | {r['in_process'][32]:.0f} | {r['rest']:.0f} | "
            f"{r['rest_p50_ms']:.1f} / {r['rest_p99_ms']:.1f} | {r['errors']} |"
        )
    lines += [
        "",
        f"**One REST process reaches {head['ratio']:.0%} of the in-process embeddings/s** (median REST rate "
        f"{head['median_rest']:.0f} over the better median in-process rate, "
        f"{max(head['median_in_process'].values()):.0f}; target >= 70%: {'met' if report['target_met'] else 'NOT met'}). "
        f"Server: `python {head['server_command']}`; {head['batching'] or 'no batching statistics logged'}.",
        "",
        "## Where the time goes",
        "",
    ]
    cpu = head["median_server_cpu_us_per_request"]
    profile = report["profile"]
    loop_app = profile["event_loop_cpu_us_per_request_unprofiled"]
    lines += [
        "CPU per request of the REST server during the side-by-side runs (median of the rounds, from "
        "/proc/<pid>/task/*/stat), and of the load generator:",
        "",
        "| thread | CPU us per request |",
        "|---|---|",
        f"| event loop (HTTP, JSON, batching queue, response) | {cpu['event_loop']:.0f} |",
        f"| batch threads and other Python threads (model calls' Python side) | {cpu['other_threads']:.0f} |",
        f"| TensorFlow's own threads | {cpu['tensorflow']:.0f} |",
        f"| load generator (client process) | {cpu['client']:.0f} |",
        "",
        "The event loop is the serial part (it holds Python's GIL; TensorFlow's kernels run beside it). The REST "
        f"handler alone (no sockets, in process, {profile['requests']} requests at concurrency "
        f"{profile['concurrency']}) costs {loop_app:.0f} us of it per request, so about "
        f"{max(cpu['event_loop'] - loop_app, 0):.0f} us go to the HTTP server (serving.http: HTTP parsing, socket "
        "I/O). cProfile of the handler's event loop, share of its working time (waits left out):",
        "",
        "| step | share of event-loop time |",
        "|---|---|",
    ]
    lines += [f"| {label} | {share:.0%} |" for label, share in profile["step_share_of_event_loop"].items()]
    lines += [
        "",
        "Functions with the most own time (cProfile):",
        "",
        "| function | share | calls per request |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{t['function']}` | {t['share']:.0%} | {t['calls_per_request']:.1f} |"
        for t in profile["top_functions_by_own_time"]
    ]
    lines.append("")
    labels = {
        "in_process": "in-process SavedModel",
        "rest": "REST, no batching",
        "rest_batching": "REST, batching",
        "rest_batching_2_workers": "REST, batching, 2 workers",
    }
    for fmt, description in report["input_formats"].items():
        ratios = report["ratios"][fmt]
        lines += [
            f"## All settings, inputs: {fmt} ({description})",
            "",
            "| setting | concurrency | embeddings/s | p50 ms | p99 ms | embeddings per CPU-second | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, label in labels.items():
            for c, row in report["results"][fmt][key].items():
                lines.append(
                    f"| {label} | {c} | {row['embeddings_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                    f"{row['embeddings_per_cpu_s']:.0f} | {row.get('errors', '-')} |"
                )
        lines.append("")
        for key in ("rest_batching", "rest_batching_2_workers"):
            lines.append(
                f"- {labels[key]}, concurrency 32 / best in-process embeddings/s in this table (measured minutes "
                f"apart): **{ratios[key]['vs_best_in_process']:.0%}**; per CPU-second (server and client processes "
                f"together vs the in-process caller): **{ratios[key]['vs_best_in_process_per_cpu_second']:.0%}**."
            )
        lines.append("")
    lines += ["Server commands:", ""]
    lines += [f"- {key}: `python {cmd}`" for key, cmd in report["server_commands"].items()]
    lines += ["", "Batching parameters:", "", "```", report["batching_parameters"].rstrip(), "```", ""]
    lines += runs.produced_by(report["command"])
    with open(os.path.join(out_dir, "serving.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv):
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    report = run(FLAGS.model_dir, FLAGS.seconds, FLAGS.rounds, FLAGS.images_per_request, out_dir=FLAGS.out_dir)
    print(f"one REST process / in-process, side by side: {report['side_by_side']['ratio']:.0%}")
    for fmt, ratios in report["ratios"].items():
        for key, value in ratios.items():
            print(
                f"{fmt} {key}: c=32 / best in-process: {value['vs_best_in_process']:.0%} "
                f"(per CPU-second: {value['vs_best_in_process_per_cpu_second']:.0%})"
            )


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model_dir", None, "Trained model directory (model.keras); default: a freshly built AVAE.")
    flags.DEFINE_float("seconds", 5.0, "Measurement seconds per setting.")
    flags.DEFINE_integer("rounds", 3, "Side-by-side rounds of in-process and one-REST-process measurements.")
    flags.DEFINE_integer("images_per_request", 1, "Images per request (and per in-process call).")
    flags.DEFINE_string("out_dir", None, "Where serving.json / serving.md go; default: results/.")
    app.run(main)
