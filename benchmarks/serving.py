"""REST serving throughput and latency vs in-process SavedModel calls.

    python -m benchmarks.serving [--model_dir=M] [--seconds=5] [--images_per_request=1]

Exports an encoder (the trained model in `--model_dir`, or a freshly built
AVAE of the default `color_mnist_embedded` shape: mlp, 28x28x3, latent 64),
then, on the same pre-generated requests:

1. in process: the SavedModel's `serving_default` called directly, one call
   per request, from 1, 8 and 32 threads;
2. over REST: `python -m serving.server` in a subprocess, without and with
   `--enable_batching`, driven by 1, 8 and 32 concurrent keep-alive
   connections (an asyncio client sending pre-encoded row-format bodies).

It reports embeddings/s and p50/p99 request latency per setting, checks every
REST answer's status and a sample of embeddings against the in-process
result, and writes results/serving.json and results/serving.md.
Target: REST with batching at concurrency 32 reaches >= 70% of the best
in-process throughput.
"""

import asyncio
import concurrent.futures
import json
import os
import platform
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCURRENCY = (1, 8, 32)
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
    from zoo import training

    model = training.build_model(
        "avae", tf.distribute.get_strategy(), image_shape=(28, 28, 3), arch="mlp", latent_dim=64, seed=0
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


def bench_in_process(path, requests, concurrency, seconds):
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures["serving_default"]
    tensors = [tf.constant(x) for x in requests]
    for x in tensors[:20]:
        function(images=x)
    latencies, count, stop = [], [0], threading.Event()
    lock = threading.Lock()

    def worker(offset):
        local, images = [], 0
        i = offset
        while not stop.is_set():
            x = tensors[i % len(tensors)]
            start = time.perf_counter()
            function(images=x)["embedding"].numpy()
            local.append(time.perf_counter() - start)
            images += int(x.shape[0])
            i += concurrency
        with lock:
            latencies.extend(local)
            count[0] += images

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return count[0] / elapsed, *percentiles(latencies)


def reference_embeddings(path, requests):
    import tensorflow as tf

    function = tf.saved_model.load(path).signatures["serving_default"]
    return [function(images=tf.constant(x))["embedding"].numpy() for x in requests]


# ----------------------------------------------------------------------------
# Over REST


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_base, batching_file, log_path):
    port = free_port()
    cmd = [sys.executable, "-m", "serving.server", f"--model_name={NAME}", f"--model_base_path={model_base}",
           f"--rest_api_port={port}", "--port=0", "--file_system_poll_wait_seconds=0"]  # fmt: skip
    if batching_file:
        cmd += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    log = open(log_path, "w")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {open(log_path).read()[-3000:]}")
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

    async def connection(offset):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        try:
            while time.perf_counter() < stop:
                k = i % len(bodies)
                request = f"{head}Content-Length: {len(bodies[k])}\r\n\r\n".encode() + bodies[k]
                start = time.perf_counter()
                writer.write(request)
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


def bench_rest(port, bodies, sizes, concurrency, seconds, check):
    asyncio.run(_drive(port, bodies, sizes, concurrency, min(1.0, seconds), check))  # warm-up
    rate, latencies, errors = asyncio.run(_drive(port, bodies, sizes, concurrency, seconds, check))
    return rate, *percentiles(latencies), errors


# ----------------------------------------------------------------------------


def run(model_dir=None, seconds=5.0, images_per_request=1, num_requests=512, out_dir=None):
    work = tempfile.mkdtemp(prefix="serving-bench-")
    try:
        path, description = build_export(model_dir, os.path.join(work, "export"))
        import tensorflow as tf

        shape = tuple(tf.saved_model.load(path).signatures["serving_default"].structured_input_signature[1]["images"].shape[1:])
        rng = np.random.default_rng(0)
        requests = [rng.uniform(size=(images_per_request, *shape)).astype(np.float32) for _ in range(num_requests)]
        bodies = [orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY) for x in requests]
        sizes = [images_per_request] * num_requests
        expected = reference_embeddings(path, requests)

        def check(k, body, errors):
            got = np.array([row["embedding"] for row in orjson.loads(body)["predictions"]], np.float32)
            if not np.allclose(got, expected[k], rtol=1e-4, atol=1e-5):
                errors.append(f"request {k}: embedding differs from the in-process result")

        results = {"in_process": {}, "rest": {}, "rest_batching": {}}
        for c in CONCURRENCY:
            rate, p50, p99 = bench_in_process(path, requests, c, seconds)
            results["in_process"][c] = {"embeddings_per_s": rate, "p50_ms": p50, "p99_ms": p99}
            print(f"in-process      c={c:2d}: {rate:8.0f} emb/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms", flush=True)
        batching_file = os.path.join(work, "batching_parameters.txt")
        with open(batching_file, "w") as f:
            f.write(BATCHING_PARAMETERS)
        commands = {}
        for key, batching in (("rest", None), ("rest_batching", batching_file)):
            proc, port, cmd = start_server(os.path.dirname(path), batching, os.path.join(work, f"{key}.log"))
            commands[key] = " ".join(cmd[1:]).replace(work, "<tmp>")
            try:
                for c in CONCURRENCY:
                    rate, p50, p99, errors = bench_rest(port, bodies, sizes, c, seconds, check)
                    results[key][c] = {"embeddings_per_s": rate, "p50_ms": p50, "p99_ms": p99, "errors": len(errors)}
                    print(f"{key:15s} c={c:2d}: {rate:8.0f} emb/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                          f"errors {len(errors)}", flush=True)  # fmt: skip
                    if errors:
                        print("  e.g.", errors[0], flush=True)
            finally:
                stop_server(proc)
        best_in_process = max(v["embeddings_per_s"] for v in results["in_process"].values())
        ratio = results["rest_batching"][32]["embeddings_per_s"] / best_in_process
        report = {
            "command": "python -m benchmarks.serving " + " ".join(sys.argv[1:]),
            "server_commands": commands,
            "batching_parameters": BATCHING_PARAMETERS,
            "model": description,
            "images_per_request": images_per_request,
            "seconds_per_setting": seconds,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "tensorflow": tf.__version__, "load_average_at_end": os.getloadavg()},  # fmt: skip
            "results": results,
            "rest_batching_c32_vs_best_in_process": ratio,
            "target": ">= 0.70",
            "target_met": ratio >= 0.70,
        }
        write_reports(report, out_dir or os.path.join(REPO, "results"))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_reports(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "serving.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    lines = [
        "# Serving benchmark: REST (serving.server) vs in-process SavedModel",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: {report['model']}; {report['images_per_request']} image(s) per request; "
        f"{report['seconds_per_setting']} s per setting; machine: {report['machine']['cpus']} CPUs, "
        f"TensorFlow {report['machine']['tensorflow']}, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in report['machine']['load_average_at_end'])}.",
        "",
        "| setting | concurrency | embeddings/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"in_process": "in-process SavedModel", "rest": "REST, no batching", "rest_batching": "REST, batching"}
    for key, label in labels.items():
        for c, row in report["results"][key].items():
            lines.append(
                f"| {label} | {c} | {row['embeddings_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                f"{row.get('errors', '-')} |"
            )
    lines += [
        "",
        f"REST with batching at concurrency 32 / best in-process throughput: "
        f"**{report['rest_batching_c32_vs_best_in_process']:.0%}** (target {report['target']}: "
        f"{'met' if report['target_met'] else 'NOT met'}).",
        "",
        "Server commands:",
        "",
    ]
    lines += [f"- {key}: `python {cmd}`" for key, cmd in report["server_commands"].items()]
    lines += ["", "Batching parameters:", "", "```", report["batching_parameters"].rstrip(), "```", ""]
    with open(os.path.join(out_dir, "serving.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv):
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    report = run(FLAGS.model_dir, FLAGS.seconds, FLAGS.images_per_request, out_dir=FLAGS.out_dir)
    print(f"REST batching c=32 / best in-process: {report['rest_batching_c32_vs_best_in_process']:.0%} "
          f"(target met: {report['target_met']})")  # fmt: skip


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model_dir", None, "Trained model directory (model.keras); default: a freshly built AVAE.")
    flags.DEFINE_float("seconds", 5.0, "Measurement seconds per setting.")
    flags.DEFINE_integer("images_per_request", 1, "Images per request (and per in-process call).")
    flags.DEFINE_string("out_dir", None, "Where serving.json / serving.md go; default: results/.")
    app.run(main)
