"""Runs the project's own commands for the paper reproductions: train, then evaluate, as a user would.

Every model trains through `python -m train.<model>` and is evaluated by `python -m evaluate.robustness`
in a subprocess from the repository root, with its output kept in a log file. What the runs write is read
through `ModelDir`, the one place that knows the model directory's file names.

A study (a folder of run configs and study.json under configs/) is run by `python -m train.study`, which trains
in-process through `train.run` and evaluates through the evaluate pipeline; this module remains for the
benchmarks that are not yet studies (reproduce_colormnist's rho sweep and report, precision, and the others).
"""

import csv
import hashlib
import os
import statistics
import subprocess
import sys
import time
import zipfile
from concurrent import futures

from zoo.model_dir import ModelDir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, log_path, threads=None):
    """Runs `python -m <args>` (with `threads` TensorFlow threads, default all); exits naming the log when it fails."""
    command = [sys.executable, "-m", *args]
    print("$", " ".join(command), flush=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ)
    if threads:  # processes run side by side share the cores instead of each spreading over all of them
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads))
    with open(log_path, "a") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if completed.returncode:
        sys.exit(f"error: {args[0]} failed (exit {completed.returncode}); see {log_path}")


def run_jobs(jobs, parallel=1):
    """Runs `jobs`, (key, function, keys of the jobs it waits for) in order of preference, at most `parallel` at a time.

    A job starts once every job it waits for has finished. Returns {key: what its function returned}; a job that
    fails stops new ones from starting, and its error is raised once the running ones have ended.
    """
    keys = [key for key, _, _ in jobs]
    missing = sorted({dep for _, _, deps in jobs for dep in deps} - set(keys))
    if missing or len(set(keys)) < len(keys):
        raise ValueError(f"jobs {keys} wait for missing jobs {missing} or repeat a key")
    pending, running, results = list(jobs), {}, {}
    with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        while pending or running:
            for job in [job for job in pending if all(dep in results for dep in job[2])][: parallel - len(running)]:
                pending.remove(job)
                running[pool.submit(job[1])] = job[0]
            if not running:
                raise ValueError(f"jobs {[key for key, _, _ in pending]} wait for each other")
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    return results


def model_dir_of(work_dir, label):
    """Where `train` puts the model labelled `label`."""
    return os.path.join(work_dir, "models", label)


def train(work_dir, label, name, common_flags, model_flags=None, init_from=None, threads=None):
    """Trains registered model `name` into work_dir/models/label; returns the model directory."""
    model_dir = model_dir_of(work_dir, label)
    args = [f"train.{name}", *common_flags, f"--model_dir={model_dir}"]
    args += [f"--{key}={value}" for key, value in (model_flags or {}).items()]
    if init_from:
        args.append(f"--init_from={init_from}")
    started = time.time()
    run(args, os.path.join(work_dir, "logs", f"train_{label}.log"), threads)
    print(f"  trained {label} in {time.time() - started:.0f} s", flush=True)
    return model_dir


def evaluate(work_dir, label, model_dir, eval_flags, threads=None):
    """Evaluates a model into work_dir/eval/label; returns (the evaluation's results as a dict, output dir).

    An evaluation already there, made of the same weights with the same arguments, is read back instead of
    run again, so a rerun of a reproduction continues where the last one stopped. The evaluation's code is not
    part of that identity: after changing it, delete work_dir/eval to measure again.
    """
    output = os.path.join(work_dir, "eval", label)
    args = ["evaluate.robustness", f"--model_dir={model_dir}", *eval_flags, f"--output_dir={output}"]
    identity = {"args": args, "model": model_digest(model_dir)}
    # The evaluation writes its results under the same name as into a model directory.
    result = ModelDir(output).read_robustness_made_of(identity)
    if result:
        print(f"  {label}: evaluated before (same weights, same arguments); read from {output}", flush=True)
        return result, output
    run(args, os.path.join(work_dir, "logs", f"eval_{label}.log"), threads)
    result = ModelDir(output).read_robustness()
    if not result:
        sys.exit(f"error: evaluate.robustness wrote no results to {output}; see the log in {work_dir}/logs")
    ModelDir(output).stamp_evaluation(identity)
    return result, output


def model_digest(model_dir):
    """A fingerprint of model.keras's architecture and weights (its save date left out: a resumed run re-saves)."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(ModelDir(model_dir).model_file) as archive:
        for name in sorted(archive.namelist()):
            if name != "metadata.json":
                digest.update(name.encode() + archive.read(name))
    return digest.hexdigest()[:16]


def step_seconds(model_dir):
    """Median wall-clock seconds of a training step, leaving out the first (tracing) steps."""
    with open(ModelDir(model_dir).timing_file, newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return statistics.median(seconds[5:] or seconds)


def command_line(module):
    return f"python -m {module} " + " ".join(sys.argv[1:])


def produced_by(command):
    """The Markdown lines that close a results file with the command that made it."""
    return ["Produced by:", "", "```bash", command, "```", ""]


def describe_fid(features):
    """One line saying which features the FID used (Inception and classifier FIDs are not comparable)."""
    if features["kind"] == "classifier":
        return (
            f"{features['network']} (test accuracy {features['test_accuracy']}), cached at {features['path']}; "
            "not comparable with Inception FID"
        )
    return features.get("network", features["kind"])
