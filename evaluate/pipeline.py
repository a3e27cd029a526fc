"""Runs the robustness protocol: library code with explicit arguments, under `python -m evaluate.robustness`.

- `run(model_dirs, output_dir, ...)`: evaluates one or several trained models, or only compares results
  already computed; what the command line calls.
- `evaluate_model(model_dir, output_dir, stages, common, ...)`: one model, a trained model directory (loaded
  with `zoo.load`) or an encoder `export.encoder` wrote (its SavedModel version directory: evaluated through
  its serving signatures, its dataset and type read from its model card); runs
  the configured stages (`evaluate.stages`, in their registry order) and writes `robustness.json`,
  `robustness.md` and the PNG plots. Progress goes to `log` (print by default), with examples/s.
"""

import os

import keras
import numpy as np
import tensorflow as tf

import zoo
from evaluate import interface, msssim, report
from evaluate.stage_base import Common, Context, EvaluationError, load_arrays
from evaluate.stages import STAGES
from zoo import data as zoo_data
from zoo import pretrained
from zoo.export_layout import is_saved_model, list_versions
from zoo.model_dir import ModelDir, ModelDirError, atomic_open


def default_stages():
    """Every stage with its default settings."""
    return [stage() for stage in STAGES.values()]


def resolve_tasks(dataset, tasks, data_dir=None):
    """The tasks to probe, checked against the dataset (image_folder's: data_dir's labels): {task: num_classes}."""
    spec = zoo_data.get_spec(dataset, data_dir)
    if not spec.tasks:  # image_folder without labels, or without its data_dir
        given = f"data_dir {data_dir}" if data_dir else "no data_dir given"
        raise EvaluationError(f"dataset {dataset!r} has no classification task to probe ({given})")
    if not tasks:
        return dict(spec.tasks)
    missing = [t for t in tasks if t not in spec.tasks]
    if missing:
        raise EvaluationError(
            f"dataset {dataset!r} has no task {', '.join(repr(t) for t in missing)}; its tasks: {', '.join(spec.tasks)}"
        )
    return {t: spec.tasks[t] for t in tasks}


def _existing(data_dir):
    """A recorded data_dir where it exists on this machine (a shipped encoder's may not), else None."""
    return data_dir if data_dir and os.path.isdir(data_dir) else None


def load_model(model_dir):
    """(the model's `interface.Autoencoder`, its dataset or None, the data_dir it was trained on or None) for a
    trained model directory or an exported encoder's SavedModel version directory."""
    if not os.path.isdir(model_dir):
        raise EvaluationError(f"model_dir {model_dir!r} does not exist")
    if is_saved_model(model_dir):
        try:
            card = pretrained.read_model_card(model_dir)
        except FileNotFoundError:
            raise EvaluationError(
                f"{model_dir!r} is a SavedModel without the model card export.encoder writes (assets/model_card.json)"
            ) from None
        data_dir = _existing((card.get("training_flags") or {}).get("data_dir"))
        return interface.from_saved_model(model_dir, name=card.get("model_type")), card.get("dataset"), data_dir
    directory = ModelDir(model_dir)
    config = directory.read_config()
    try:
        keras_model = zoo.load(model_dir)
    except (FileNotFoundError, ModelDirError) as error:
        raise EvaluationError(str(error)) from None
    data_dir = _existing(directory.read_flags().get("data_dir"))
    return interface.from_model(keras_model, name=config.get("model")), config.get("dataset"), data_dir


def evaluate_model(model_dir, output_dir, stages=None, common=None, dataset=None, data_dir=None, log=print):
    """Runs `stages` (default: all) on the model in `model_dir`; writes and returns the result dict.

    `data_dir` defaults to the one the model was trained on (its flags.json, or its model card's training flags)
    where that exists here and the dataset is the one it was trained on.
    """
    stages = sorted(default_stages() if stages is None else stages, key=lambda s: list(STAGES).index(s.name))
    common = common or Common()
    model, model_dataset, model_data_dir = load_model(model_dir)
    dataset = dataset or model_dataset
    if not dataset:
        raise EvaluationError(f"no dataset given and {model_dir!r} has no config.json (or model card) naming one")
    if data_dir is None and dataset == model_dataset:
        data_dir = model_data_dir
    try:
        spec = zoo_data.get_spec(dataset, data_dir)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    if model.image_shape != tuple(spec.image_shape):
        raise EvaluationError(
            f"the model takes {model.image_shape} images but dataset {dataset!r} has {tuple(spec.image_shape)} images"
        )
    if common.split not in spec.splits:
        raise EvaluationError(
            f"dataset {dataset!r} has no {common.split} split (its splits: {', '.join(spec.splits)}); "
            "validation digits: the *_plus_embedded datasets"
        )
    tasks = resolve_tasks(dataset, common.tasks, data_dir)
    for stage in stages:
        stage.check_inputs(dataset, tasks, data_dir)
    zoo_data.check_available(dataset, data_dir, common.download)  # before anything is written
    os.makedirs(output_dir, exist_ok=True)
    keras.utils.set_random_seed(common.seed)
    images, labels = load_arrays(dataset, common.split, common.num_examples, data_dir, common.download)
    context = Context(model, dataset, images, labels, tasks, common, output_dir, data_dir, log)
    log(
        f"evaluating {model.name} from {model_dir} on {len(context.images)} {dataset} {common.split} examples; "
        f"stages: {', '.join(s.name for s in stages)}"
    )
    result = {"model": model.name, "model_dir": os.path.abspath(model_dir), "dataset": dataset}
    result.update({key: None for stage in STAGES.values() for key in stage.results})
    for stage in stages:
        result.update(stage.run(context))
    result["timing"] = context.timing
    result["settings"] = dict(
        common.to_dict(),
        **{key: value for stage in stages for key, value in stage.to_dict().items()},
        stages=[stage.name for stage in stages],
        num_examples=len(context.images),
        requested_examples=common.num_examples,
        tasks=list(tasks),
        data_dir=os.path.abspath(data_dir) if data_dir else None,
        ms_ssim=msssim.describe(*spec.image_shape[:2]),
        stochastic_encoder=bool(np.max(model.stddev(tf.constant(context.images[:8]))) > 0),
    )
    write_outputs(result, output_dir)
    return result


def write_outputs(result, output_dir):
    directory = ModelDir(output_dir)
    report.write_json(result, directory.robustness_file)
    with atomic_open(directory.robustness_report) as f:
        f.write(report.markdown(result))
    report.plot_accuracy([result], os.path.join(output_dir, "accuracy_vs_epsilon.png"))
    report.plot_ae_attacks([result], os.path.join(output_dir, "ae_attacks.png"))


def labels_for(paths, given=None):
    """Names of the compared models: `given`, or the directory names (made unique); an exported encoder's
    version directory is named by its model and version (`avae_v4`), as TF Serving names it."""
    if given:
        if len(given) != len(paths):
            raise EvaluationError(f"{len(given)} labels for {len(paths)} models")
        return list(given)
    labels = []
    for path in paths:
        base = os.path.basename(os.path.normpath(path))
        if base == ModelDir.ROBUSTNESS:
            base = os.path.basename(os.path.dirname(os.path.abspath(path)))
        elif base.isdigit() and is_saved_model(path):
            base = f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}_v{base}"
        label, k = base, 2
        while label in labels:
            label, k = f"{base}_{k}", k + 1
        labels.append(label)
    return labels


def compare(paths, output_dir, labels=None):
    """Writes the side-by-side comparison of existing results (robustness.json files or their directories).

    Returns (the results, the files written).
    """
    results = []
    for path in paths:
        if os.path.isdir(path):
            path = ModelDir(path).robustness_file
        if not os.path.exists(path):
            raise EvaluationError(f"no results to compare at {path!r}")
        try:
            results.append(report.read_json(path))
        except ValueError as error:
            raise EvaluationError(f"{path!r} is not a robustness.json ({error})") from None
    return results, report.write_comparison(results, labels_for(paths, labels), output_dir)


def run(
    model_dirs=(),
    output_dir=None,
    *,
    compare_paths=(),
    labels=None,
    dataset=None,
    data_dir=None,
    stages=None,
    common=None,
    log=print,
):
    """Evaluates the models in `model_dirs`, or compares the results in `compare_paths`; returns the results.

    One model is written to `output_dir`; several to `output_dir/<label>/` each, then side by side to
    `output_dir/comparison.md` and `comparison_*.png`. `compare_paths` (robustness.json files or
    directories holding one) only compares results already computed.
    """
    if not output_dir:
        raise EvaluationError("an output directory is required")
    if compare_paths:
        if model_dirs:
            raise EvaluationError("give either models to evaluate or results to compare, not both")
        results, written = compare(compare_paths, output_dir, labels)
        log("comparison written: " + ", ".join(written))
        return results
    if not model_dirs:
        raise EvaluationError("no model to evaluate and no results to compare")
    for model_dir in model_dirs:  # every directory is checked before hours go into the first
        if not ModelDir(model_dir).has_model() and not is_saved_model(model_dir):
            versions = list_versions(model_dir)
            if versions:  # a TF Serving model base path: name the version to audit
                raise EvaluationError(
                    f"{model_dir!r} holds exported versions {sorted(versions)}: give one version's "
                    f"directory, e.g. {versions[max(versions)]!r}"
                )
            raise EvaluationError(
                f"no trained model in {model_dir!r} (expected {ModelDir(model_dir).model_file}, "
                "or an exported encoder's saved_model.pb)"
            )
    names = labels_for(model_dirs, labels)
    results = []
    for model_dir, label in zip(model_dirs, names):
        directory = output_dir if len(model_dirs) == 1 else os.path.join(output_dir, label)
        result = evaluate_model(model_dir, directory, stages, common, dataset=dataset, data_dir=data_dir, log=log)
        results.append(result)
        log(f"results for {label}: {ModelDir(directory).robustness_file}")
        log(report.accuracy_table(result))
    if len(results) > 1:
        written = report.write_comparison(results, names, output_dir)
        log("comparison written: " + ", ".join(written))
    return results
