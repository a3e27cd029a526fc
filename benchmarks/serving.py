"""REST serving throughput and latency vs in-process SavedModel calls.

    python -m benchmarks.serving [--model_dir=M] [--seconds=5] [--images_per_request=1]

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
   connections (an asyncio client sending pre-encoded bodies).

It reports embeddings/s, p50/p99 request latency and embeddings per
CPU-second (server and client processes together, vs the in-process
caller: a figure that does not depend on what else the machine runs),
checks every REST answer's status and a sample of embeddings against the
in-process result, and writes results/serving.json and results/serving.md.
Target: REST with batching at concurrency 32 reaches >= 70% of the best
in-process embeddings/s.
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
    "png_b64": ("encode_image", "image_bytes", 'PNG bytes: {"signature_name": "encode_image", "instances": [{"b64": ...}]}'),
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
        orjson.dumps({"signature_name": "encode_image", "instances": [{"b64": base64.b64encode(b).decode()} for b in x]})
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
    cmd = [sys.executable, "-m", "serving.server", f"--model_name={NAME}", f"--model_base_path={model_base}",
           f"--rest_api_port={port}", "--port=0", "--file_system_poll_wait_seconds=0"]  # fmt: skip
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


def bench_rest(port, bodies, sizes, concurrency, seconds, check, server_pid):
    asyncio.run(_drive(port, bodies, sizes, concurrency, min(1.0, seconds), check))  # warm-up
    server_cpu, client_cpu, start = _process_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    rate, latencies, errors = asyncio.run(_drive(port, bodies, sizes, concurrency, seconds, check))
    elapsed = time.perf_counter() - start
    cpu = _process_cpu_seconds(server_pid) - server_cpu + time.process_time() - client_cpu
    return rate, *percentiles(latencies), errors, rate * elapsed / cpu


# ----------------------------------------------------------------------------


def run(model_dir=None, seconds=5.0, images_per_request=1, num_requests=512, out_dir=None):
    work = tempfile.mkdtemp(prefix="serving-bench-")
    try:
        path, description = build_export(model_dir, os.path.join(work, "export"))
        import tensorflow as tf

        shape = tuple(tf.saved_model.load(path).signatures["serving_default"].structured_input_signature[1]["images"].shape[1:])
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

        results = {fmt: {"in_process": {}, **{key: {} for key, _, _ in SERVER_SETTINGS}} for fmt in INPUT_FORMATS}
        for fmt, (signature, input_name, _) in INPUT_FORMATS.items():
            for c in CONCURRENCY:
                rate, p50, p99, per_cpu = bench_in_process(path, data[fmt][0], c, seconds, signature, input_name)
                results[fmt]["in_process"][c] = {"embeddings_per_s": rate, "p50_ms": p50, "p99_ms": p99,
                                                 "embeddings_per_cpu_s": per_cpu}  # fmt: skip
                print(f"{fmt:10s} in-process      c={c:2d}: {rate:8.0f} emb/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                      f"{per_cpu:6.0f} emb/cpu-s", flush=True)  # fmt: skip
        commands = {}
        for key, batching, workers in SERVER_SETTINGS:
            batching = batching_file if batching else None
            proc, port, cmd = start_server(os.path.dirname(path), batching, os.path.join(work, f"{key}.log"), workers)
            commands[key] = " ".join(cmd[1:]).replace(work, "<tmp>")
            try:
                for fmt in INPUT_FORMATS:
                    _, bodies, expected = data[fmt]
                    for c in CONCURRENCY:
                        rate, p50, p99, errors, per_cpu = bench_rest(
                            port, bodies, sizes, c, seconds, checker(expected), proc.pid
                        )
                        results[fmt][key][c] = {"embeddings_per_s": rate, "p50_ms": p50, "p99_ms": p99,
                                                "errors": len(errors), "embeddings_per_cpu_s": per_cpu}  # fmt: skip
                        print(f"{fmt:10s} {key:15s} c={c:2d}: {rate:8.0f} emb/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                              f"{per_cpu:6.0f} emb/cpu-s  errors {len(errors)}", flush=True)  # fmt: skip
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
            "command": "python -m benchmarks.serving " + " ".join(sys.argv[1:]),
            "server_commands": commands,
            "batching_parameters": BATCHING_PARAMETERS,
            "model": description,
            "images_per_request": images_per_request,
            "seconds_per_setting": seconds,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "tensorflow": tf.__version__, "load_average_at_end": os.getloadavg()},  # fmt: skip
            "input_formats": {fmt: desc for fmt, (_, _, desc) in INPUT_FORMATS.items()},
            "results": results,
            "ratios": ratios,
            "target": "REST with batching at concurrency 32 >= 0.70 x best in-process embeddings/s",
            "target_met": {
                fmt: {key: value["vs_best_in_process"] >= 0.70 for key, value in r.items()} for fmt, r in ratios.items()
            },
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
    ]
    labels = {
        "in_process": "in-process SavedModel",
        "rest": "REST, no batching",
        "rest_batching": "REST, batching",
        "rest_batching_2_workers": "REST, batching, 2 workers",
    }
    for fmt, description in report["input_formats"].items():
        ratios = report["ratios"][fmt]
        lines += [
            f"## Inputs: {fmt} ({description})",
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
                f"- {labels[key]}, concurrency 32 / best in-process embeddings/s: "
                f"**{ratios[key]['vs_best_in_process']:.0%}** (target >= 70%: "
                f"{'met' if report['target_met'][fmt][key] else 'NOT met'}); per CPU-second (server and client "
                f"processes together vs the in-process caller, independent of what else the machine runs): "
                f"**{ratios[key]['vs_best_in_process_per_cpu_second']:.0%}**."
            )
        lines.append("")
    lines += [
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
    for fmt, ratios in report["ratios"].items():
        for key, value in ratios.items():
            print(f"{fmt} {key}: c=32 / best in-process: {value['vs_best_in_process']:.0%} "
                  f"(per CPU-second: {value['vs_best_in_process_per_cpu_second']:.0%})")  # fmt: skip


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model_dir", None, "Trained model directory (model.keras); default: a freshly built AVAE.")
    flags.DEFINE_float("seconds", 5.0, "Measurement seconds per setting.")
    flags.DEFINE_integer("images_per_request", 1, "Images per request (and per in-process call).")
    flags.DEFINE_string("out_dir", None, "Where serving.json / serving.md go; default: results/.")
    app.run(main)
