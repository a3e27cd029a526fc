"""What the benchmarks share: the reports on top of the study runner (where it puts a study's evaluations, what a
report needs a study to evaluate, running the chosen runs and then making the report, a report program's flags and
main), a model's step timing, the command line and closing lines of a results file, and the FID features' description.

Studies (a folder of run configs and study.json under configs/) are trained, evaluated and compared by the one study
runner, `train.study`, in process. The paper reproductions (`benchmarks.reproduce_colormnist`,
`benchmarks.reproduce_attacks`) are reports on top of it: `report_on_studies` runs their chosen runs through the
runner, then they read what it wrote (each run's evaluation, `evaluations_of`; its model directory through `ModelDir`,
the one place that knows the model directory's file names) and write their tables beside the papers' numbers.
"""

import csv
import json
import os
import statistics
import sys
import time

from zoo import console
from zoo.model_dir import ModelDir


def evaluations_of(study, evaluations_dir=None):
    """Where the runner writes the study's evaluations (one folder per run) and its comparison: the study's own
    output_dir (study.json), or `<evaluations_dir>/<study>`."""
    return os.path.join(evaluations_dir, study.name) if evaluations_dir else study.output_dir


def require_stages(study, names):
    """Raises StudyError (one sentence) unless the study evaluates the stages `names`, which a report quotes."""
    from train.study import StudyError

    missing = [name for name in names if name not in [stage.name for stage in study.stages]]
    if missing:
        raise StudyError(f"study {study.name} does not evaluate {', '.join(missing)}, which the report quotes")


def require_values(study, stage, setting, values, what):
    """Raises StudyError (one sentence) unless the study's stage `stage` (which it runs) evaluates at least `values`
    of its setting `setting` (radii, lambdas: `what`), which a report quotes."""
    from train.study import StudyError

    given = set(getattr(next(s for s in study.stages if s.name == stage), setting))
    if not set(values) <= given:
        raise StudyError(
            f"study {study.name} evaluates at {what} {', '.join(f'{v:g}' for v in sorted(given))}; the table needs "
            + ", ".join(f"{v:g}" for v in values)
        )


def hyperparameters(run):
    """The model's hyper-parameters in a study run's config (what differs between the models a table compares)."""
    return run.model_class.config_class.split(run.options)[0]


def report_on_studies(
    chosen, read_report, write, command, runs_dir=None, output_dir="results", evaluations_dir=None, log=print
):
    """Runs the chosen runs of each study (`chosen`: [(study, its runs)]) with the study runner, one after the
    other (each trained into `<runs_dir>/<study>/<run>`, runs/ by default, and evaluated into
    `evaluations_of(study, evaluations_dir)`, with the study's comparison beside), then makes the report from what
    they wrote (`read_report(runs_dir, evaluations_dir)`), adds the wall-clock time and `command` (the command line
    that made it), and writes it (`write(report, output_dir)`, which returns the files written); returns the report."""
    from train import study as studies

    started = time.time()
    runs_dir = runs_dir or studies.RUNS_DIR
    for study, study_runs in chosen:
        only = [run.name for run in study_runs]
        studies.run_study(study, only, runs_dir, evaluations_of(study, evaluations_dir), command, log)
    report = read_report(runs_dir, evaluations_dir)
    report["settings"]["wall_clock_seconds"] = round(time.time() - started)
    report["command"] = command
    written = write(report, output_dir)
    log(f"wrote {', '.join(written)} in {report['settings']['wall_clock_seconds']} s")
    return report


def write_results(report, markdown, stem):
    """`<stem>.json` (the report) and `<stem>.md` (`markdown`), their folder made; returns the two files."""
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(f"{stem}.json", "w") as f:
        json.dump(report, f, indent=2)
    with open(f"{stem}.md", "w") as f:
        f.write(markdown)
    return [f"{stem}.json", f"{stem}.md"]


def define_report_flags(results):
    """The flags of a report on top of the study runner: where the model directories, the studies' evaluations and
    the report's files (`results`: their names, for the help) go."""
    from absl import flags

    from train import study as studies

    flags.DEFINE_string("runs_dir", studies.RUNS_DIR, "Model directories go to <runs_dir>/<study>/<run>.")
    flags.DEFINE_string("output_dir", "results", f"Where {results} go.")
    flags.DEFINE_string(
        "evaluations_dir",
        None,
        "Each study's evaluations and comparison go to <evaluations_dir>/<study>; default: the study's own "
        "output_dir (study.json).",
    )


def run_program(argv, action):
    """Runs `action()` as a program's main once the command line is checked: bad input (a bad study, missing data, a
    training run that cannot go on) ends the program with one line."""
    from train.loop import CheckpointError, NonFiniteLossError
    from zoo.data import DataUnavailableError

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    console.quiet_info_logs()
    try:
        action()
    except (ValueError, FileNotFoundError, DataUnavailableError, NonFiniteLossError, CheckpointError) as error:
        sys.exit(f"error: {error}")


def main_of_report(argv, module, make_report):
    """The main of report program `module` on top of the study runner: `make_report(**where)` (`run_program`),
    `where` being the flags of `define_report_flags` (runs_dir, output_dir, evaluations_dir) and the command line."""
    from absl import flags

    values = flags.FLAGS
    where = dict(runs_dir=values.runs_dir, output_dir=values.output_dir, evaluations_dir=values.evaluations_dir)
    run_program(argv, lambda: make_report(**where, command=command_line(module)))


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
