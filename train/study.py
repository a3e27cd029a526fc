"""Studies: experiments as data, run by one runner (issue 42).

    python -m train.study --study=configs/robustness_ablations [--only=mlp_avae,mlp_vae] [--runs_dir=runs]

A study is a folder `configs/<study>/` holding

- one run config per JSON file (`<run>.json`, the format `python -m train --config=FILE` reads: TrainSettings
  fields and the model's hyper-parameters by name, `model`, and `model_dir`, which for a study's run is
  `runs/<study>/<run>`: the runner's directory for it);
- `study.json`: what the study evaluates and reports, `{"description": ..., "evaluate": {...}, "report": {...}}`.
  `evaluate` holds `stages` (default: every stage) and the settings of `evaluate.stage_base.Common` and of the stages
  run, by name (the flags of `python -m evaluate.robustness`); `report` holds `output_dir`, a path under results/
  relative to the repository root.

For each run (the folder's order, or `--only`'s), the runner trains it (`train.run`, into
`<runs_dir>/<study>/<run>`, resuming where that directory stopped: training is resumable and exact), evaluates it
(`evaluate.pipeline.evaluate_model`, into `<output_dir>/<run>/`; an evaluation of the same weights with the same
settings is read back instead of run again) and then writes the report: the side-by-side comparison of every run
of the study evaluated so far (`evaluate.report.write_comparison`) into `<output_dir>/`, with `study_runs.json`
recording each run's config, step and weights, and the study folder as the config that made it.
Bad input (an unknown key, a missing file, a bad setting) stops before any training with one sentence.

A run that grows across sessions (a long run resumed each session) records where it stands with `--stage`, which
trains nothing: `<output_dir>/<run>/stage.json` (the step of its newest checkpoint and the digest of its weights
there) beside a copy of its robustness curve (`record_stage`).
"""

import dataclasses
import glob
import os
import sys

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

from train.settings_files import read_json_object  # noqa: E402

STUDY_FILE = "study.json"
STUDY_KEYS = ("description", "evaluate", "report")
REPORT_KEYS = ("output_dir",)
RUNS_DIR = "runs"  # ignored by git (/runs/ in .gitignore)
RECORD_FILE = "study_runs.json"  # in the report's directory: what each run was
STAGE_FILE = "stage.json"  # in <output_dir>/<run>/: where a run growing across sessions stands (`record_stage`)


class StudyError(ValueError):
    """A bad study: one clear sentence."""


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    config_path: str
    model_class: type  # looked up once, from the run config's "model", by `read_run`; `train_run` passes it on
    options: dict  # TrainSettings fields and the model's hyper-parameters, as `train.run` takes them
    starts_from: str = None  # the run of the same study whose model it starts from (init_from runs/<study>/<run>)

    @property
    def model(self):
        """The model's registry name (the run config's "model")."""
        return self.model_class.registry_name


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    path: str
    description: str
    runs: tuple  # of Run
    stages: tuple  # configured evaluate.stages
    common: object  # evaluate.stage_base.Common
    evaluate: dict  # study.json's evaluate settings, as given (the identity of an evaluation)
    output_dir: str


def _read_json(path, what):
    try:
        return read_json_object(path, what)
    except ValueError as error:
        raise StudyError(str(error)) from None


def _unknown(given, known, where):
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise StudyError(f"unknown key(s) {', '.join(unknown)} in {where}; known: {', '.join(known)}")


def read_run(path):
    """One run config as a `Run`, checked as `python -m train --config` checks it (`train.settings.resolve` and the
    model's config class); raises StudyError with one sentence."""
    import zoo
    from train import settings

    config = _read_json(path, "run config")
    name = os.path.splitext(os.path.basename(path))[0]
    if "model" not in config:
        raise StudyError(f'run config {path} names no model ("model": one of {", ".join(sorted(zoo.MODELS))})')
    try:
        model_class = zoo.get_model_class(config["model"])
        options = {key: value for key, value in config.items() if key not in ("model", "model_dir")}
        _, hyperparameters = settings.resolve(model_class, options)
        model_class.config_class(**hyperparameters)
    except ValueError as error:
        raise StudyError(f"run config {path}: {error}") from None
    return Run(name, path, model_class, options)


def _in_order(runs, study_name):
    """The runs, each after the run its `init_from` names (`runs/<study>/<run>`: a run of the same study)."""
    names = {run.name for run in runs}
    linked = []
    for run in runs:
        source = run.options.get("init_from") or ""
        parts = os.path.normpath(source).split(os.sep)
        if len(parts) == 3 and parts[:2] == [RUNS_DIR, study_name]:
            if parts[2] not in names:
                raise StudyError(f"run config {run.config_path} starts from {source}, no run of study {study_name}")
            run = dataclasses.replace(run, starts_from=parts[2])
        linked.append(run)
    ordered = [run for run in linked if not run.starts_from]
    while len(ordered) < len(linked):
        done = {run.name for run in ordered}
        ready = [run for run in linked if run not in ordered and run.starts_from in done]
        if not ready:
            raise StudyError(f"the runs of study {study_name} start from each other in a circle")
        ordered += ready
    return tuple(ordered)


def _evaluation(settings, where):
    """(stages, Common) from study.json's `evaluate` object, as `python -m evaluate.robustness` builds them."""
    from evaluate import stages as stage_registry

    Common, EvaluationError = stage_registry.Common, stage_registry.EvaluationError
    owners = stage_registry.setting_owners()
    _unknown(settings, ["stages", *owners], where)
    names = settings.get("stages", list(stage_registry.STAGES))
    if not isinstance(names, list):
        raise StudyError(f"stages in {where} must be a list of stage names, got {names!r}")
    values = {key: value for key, value in settings.items() if key != "stages"}
    unused = sorted(key for key in values if owners[key] is not Common and owners[key].name not in names)
    if unused:
        raise StudyError(f"setting(s) {', '.join(unused)} in {where} belong to stages the study does not run")
    try:
        common = Common(**{key: value for key, value in values.items() if owners[key] is Common})
        return tuple(stage_registry.build(names, **values)), common
    except (EvaluationError, TypeError) as error:
        raise StudyError(f"{where}: {error}") from None


def read_study(path):
    """The study in folder `path` (`Study`), every file checked; raises StudyError with one sentence."""
    if not os.path.isdir(path):
        raise StudyError(f"study {path} is not a folder")
    study_file = os.path.join(path, STUDY_FILE)
    study = _read_json(study_file, "study file")
    _unknown(study, STUDY_KEYS, study_file)
    for key in ("evaluate", "report"):
        if not isinstance(study.get(key), dict):
            raise StudyError(f"{study_file} needs {key!r}, a JSON object")
    stages, common = _evaluation(study["evaluate"], f"{study_file} evaluate")
    _unknown(study["report"], REPORT_KEYS, f"{study_file} report")
    output_dir = study["report"].get("output_dir")
    if not isinstance(output_dir, str) or not output_dir or os.path.isabs(output_dir):
        raise StudyError(f"{study_file} report needs output_dir, a path relative to the repository (results/...)")
    paths = sorted(p for p in glob.glob(os.path.join(path, "*.json")) if os.path.basename(p) != STUDY_FILE)
    if not paths:
        raise StudyError(f"study {path} has no run config (<run>.json beside {STUDY_FILE})")
    name = os.path.basename(os.path.normpath(path))
    relative = os.path.relpath(path)
    path = relative if not relative.startswith("..") else os.path.normpath(path)  # as the report records it
    return Study(
        name=name,
        path=path,
        description=study.get("description", ""),
        runs=_in_order([read_run(p) for p in paths], name),
        stages=stages,
        common=common,
        evaluate=study["evaluate"],
        output_dir=output_dir,
    )


def select(study, only):
    """The runs named in `only` (all for an empty one), in the study's order."""
    if not only:
        return study.runs
    names = [run.name for run in study.runs]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise StudyError(f"study {study.name} has no run {', '.join(unknown)}; its runs: {', '.join(names)}")
    return tuple(run for run in study.runs if run.name in only)


def model_dir_of(study, run, runs_dir=RUNS_DIR):
    return os.path.join(runs_dir, study.name, run.name)


def train_run(study, run, runs_dir=RUNS_DIR, verbose=0):
    """Trains `run` (its model class, as `read_run` looked it up) into its model directory, resuming from its
    checkpoints; returns `train.run`'s TrainResult."""
    from train import runner

    options = dict(run.options)
    if run.starts_from:  # the study's run it starts from, wherever runs_dir puts it
        source = next(other for other in study.runs if other.name == run.starts_from)
        options["init_from"] = model_dir_of(study, source, runs_dir)
    return runner.run(run.model_class, model_dir_of(study, run, runs_dir), verbose=verbose, **options)


def evaluate_run(study, run, trained, output_dir, log=print):
    """Evaluates the trained run into output_dir/<run>/ (read back when made of the same weights and settings)."""
    from evaluate import pipeline
    from zoo.model_dir import ModelDir

    directory = os.path.join(output_dir, run.name)
    identity = {"weights_digest": trained.weights_digest, "evaluate": study.evaluate}
    result = ModelDir(directory).read_robustness_made_of(identity)
    if result:
        log(f"[{run.name}] evaluated before (same weights, same settings): {directory}")
        return result
    result = pipeline.evaluate_model(
        trained.model_dir.path,
        directory,
        list(study.stages),
        study.common,
        log=lambda line: log(f"[{run.name}] {line}"),
    )
    ModelDir(directory).stamp_evaluation(identity)
    return result


def write_report(study, output_dir, trained, command):
    """The comparison of every run of the study evaluated so far, in output_dir; returns the files written."""
    from evaluate import report
    from zoo.model_dir import ModelDir, atomic_open, read_json

    record_path = os.path.join(output_dir, RECORD_FILE)
    try:
        record = read_json(record_path) if os.path.exists(record_path) else {}
    except ValueError:
        record = {}
    runs = record.get("runs", {})
    for run in study.runs:
        if run.name in trained:
            result = trained[run.name]
            runs[run.name] = {
                "config": run.config_path,
                "model": run.model,
                "model_dir": result.model_dir.path,
                "step": result.step,
                "weights_digest": result.weights_digest,
                "evaluation": os.path.join(run.name, ModelDir.ROBUSTNESS),
            }
    names = [
        run.name for run in study.runs if os.path.exists(ModelDir(os.path.join(output_dir, run.name)).robustness_file)
    ]
    if not names:
        raise StudyError(f"no run of study {study.name} has been evaluated in {output_dir}")
    results = [report.read_json(ModelDir(os.path.join(output_dir, name)).robustness_file) for name in names]
    written = report.write_comparison(results, names, output_dir)
    missing = [run.name for run in study.runs if run.name not in names]
    with open(written[0]) as f:
        comparison = f.read()
    lines = [
        "",
        f"Made by the study `{study.path}` (its run configs and {STUDY_FILE}): {study.description}".rstrip(": "),
        "",
        *([f"Not yet run: {', '.join(missing)}.", ""] if missing else []),
        "```bash",
        command,
        "```",
        "",
    ]
    with atomic_open(written[0]) as f:
        f.write(comparison.rstrip("\n") + "\n" + "\n".join(lines))
    ModelDir(output_dir).write_json(
        record_path, {"study": study.path, "command": command, "evaluate": study.evaluate, "runs": runs}
    )
    return [*written, record_path]


def _machine():
    """The machine a stage was trained on, in words: its CPU, its cores and its GPUs."""
    import tensorflow as tf

    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo") if line.startswith("model name")),
        "unknown CPU",
    )
    gpus = tf.config.list_physical_devices("GPU")
    return f"{cpu}, {os.cpu_count()} cores, " + (f"{len(gpus)} GPU(s)" if gpus else "no GPU")


def _read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def record_stage(study, run, runs_dir=RUNS_DIR, output_dir=None):
    """Records the stage of a run that grows across sessions into <output_dir>/<run>/: a copy of its robustness
    curve and `stage.json` (the step of its newest checkpoint that restores, the digest of its weights there, its
    config, the command that grows it and the machine); returns stage.json's contents. Reads the model directory
    and writes nothing into it."""
    import shutil

    import tensorflow as tf

    import zoo
    from train import loop
    from train.settings import TrainSettings
    from zoo.model_dir import ModelDir

    directory = ModelDir(model_dir_of(study, run, runs_dir))
    config, settings = directory.read_config(), directory.read_flags()
    if not config or not settings:
        raise StudyError(
            f"run {run.name} of study {study.name} has not started in {directory.path}: no stage to record"
        )
    model_kwargs = {key: value for key, value in config.items() if key not in ("model", "dataset", "init_from")}
    recorded = TrainSettings(**TrainSettings.split(settings)[0])  # flags.json: the settings it was trained with
    model = loop.build_for_settings(run.model_class, tf.distribute.get_strategy(), recorded, **model_kwargs)
    step = loop.restore(model, directory, move_damaged=False)
    out = os.path.join(output_dir or study.output_dir, run.name)
    os.makedirs(out, exist_ok=True)
    if os.path.exists(directory.robustness_curve_file):
        shutil.copy(directory.robustness_curve_file, os.path.join(out, ModelDir.ROBUSTNESS_CURVE))
    stage = {
        "run": run.name,
        "config": run.config_path,
        "command": f"python -m train.study --study={study.path} --only={run.name} --runs_dir=$RUNS",
        "step": step,
        "train_steps": recorded.train_steps,
        "weights_digest_at_step": zoo.weights_digest(model),
        "machine": _machine(),
        "precision": recorded.precision,
    }
    ModelDir(out).write_json(os.path.join(out, STAGE_FILE), stage)
    return stage


def run_study(study, only=(), runs_dir=RUNS_DIR, output_dir=None, command=None, log=print):
    """Trains, evaluates and reports the study's runs (those in `only`, default all); returns the files written."""
    output_dir = output_dir or study.output_dir
    chosen = select(study, only)
    command = command or f"python -m train.study --study={study.path}"
    trained = {}
    for run in chosen:
        log(f"[{run.name}] training {run.model} into {model_dir_of(study, run, runs_dir)}")
        trained[run.name] = train_run(study, run, runs_dir)
        log(f"[{run.name}] trained to step {trained[run.name].step} (weights {trained[run.name].weights_digest})")
        evaluate_run(study, run, trained[run.name], output_dir, log)
    written = write_report(study, output_dir, trained, command)
    log("report written: " + ", ".join(written))
    return written


FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS, module_name=__name__):
    kwargs = dict(flag_values=flag_values, module_name=module_name)
    flags.DEFINE_string("study", None, "The study's folder (configs/<study>: run configs and study.json).", **kwargs)
    flags.DEFINE_list(
        "only", [], "Runs to train and evaluate (default: all); the report shows every run evaluated.", **kwargs
    )
    flags.DEFINE_string("runs_dir", RUNS_DIR, "Model directories go to <runs_dir>/<study>/<run>.", **kwargs)
    flags.DEFINE_string("output_dir", None, "Where the report goes; default: study.json's report output_dir.", **kwargs)
    flags.DEFINE_bool(
        "stage",
        False,
        "Train nothing: record where each run (of --only) stands, for runs that grow across sessions: "
        f"<output_dir>/<run>/{STAGE_FILE} (step, weights digest) and a copy of its robustness curve.",
        **kwargs,
    )


def _main(argv):
    from evaluate.stages import EvaluationError
    from train.loop import CheckpointError, NonFiniteLossError
    from zoo import data as zoo_data
    from zoo.model_dir import ModelDirError

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments: {argv[1:]}")
    if not FLAGS.study:
        sys.exit(
            "error: --study is required: a folder of run configs and study.json, e.g. configs/robustness_ablations"
        )
    console.quiet_info_logs()
    try:
        study = read_study(FLAGS.study)
        chosen = select(study, FLAGS.only)  # before any training
        if FLAGS.stage:
            for run in chosen:
                print(record_stage(study, run, FLAGS.runs_dir, FLAGS.output_dir))
            return
        run_study(
            study,
            FLAGS.only,
            FLAGS.runs_dir,
            FLAGS.output_dir,
            command="python -m train.study " + " ".join(sys.argv[1:]),
        )
    except (
        StudyError,
        EvaluationError,
        ModelDirError,
        zoo_data.DataUnavailableError,
        NonFiniteLossError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
    ) as error:
        sys.exit(f"error: {error}")


def main():
    define_flags(FLAGS, sys.argv[0])
    app.run(_main)


if __name__ == "__main__":
    main()
