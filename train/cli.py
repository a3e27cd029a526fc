"""The training command line: `python -m train --model=NAME`, `python -m train --config=FILE` and
`python -m train.<model>`.

A thin shell over `train.run`: one flag per field of `TrainSettings` and of the model's config class
(type, default, help and choices from the field), `--model_dir`, `--config` (a JSON file of the same settings by
name), and a one-line error instead of a traceback for bad input. Only the flags given on the command line are
passed on, over the config file, so that the dataset's recipe (`train.settings.RECIPES`) fills the rest. It quiets TensorFlow's C++ log unless TF_CPP_MIN_LOG_LEVEL is set (`zoo.console`).
"""

import os
import sys

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

from train.settings_files import read_json_object  # noqa: E402
from zoo.config import define_flags  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_MODEL_DIR = "/tmp/robust_zoo/model"


def _fail(message):
    """One clear line on stderr, no traceback."""
    sys.exit(f"error: {message}")


# The datasets whose digits the shipped ColorMNIST encoders read (the embedded ones are MNIST training digits too).
_SHIPPED_DIGITS = ("color_mnist", "color_mnist_embedded")


def _where_a_run_stands(model_name, dataset, step):
    """A line that sets a run beside the shipped encoder of its model, quoted from that encoder's card; None when
    none was shipped for it."""
    from zoo import pretrained

    name = f"{model_name}_color_mnist_conv"
    if dataset not in _SHIPPED_DIGITS or name not in pretrained.names():
        return None
    card = pretrained.model_card(name)
    evaluation = card["evaluation"]
    accuracy = evaluation["adversarial_accuracy"]["digit"]
    radii = ", ".join(f"eps {float(e):g}: {100 * a:.0f} %" for e, a in accuracy.items() if float(e) > 0)
    return (
        f"  where {step:,} steps stand: the shipped {name} ({card['training_steps']:,} {card['architecture']} "
        f"steps) keeps, worst case of {evaluation['settings']['num_examples']} unseen digits under its card's "
        f"four attacks, clean {100 * accuracy['0']:.0f} %, {radii} (zoo.pretrained.model_card({name!r}))"
    )


def _print_summary(model_name, result):
    directory = result.model_dir.path
    print(
        f"\ntrained {model_name} to step {result.step} (weights digest {result.weights_digest}); "
        f"model saved in {result.model_dir.model_file}"
    )
    summary = result.summary
    if summary is None:
        return
    split, measured = summary["split"], summary["elbo"]
    if measured:
        elbo = f"ELBO {measured['elbo']:.1f}" if "elbo" in measured else f"loss {measured['loss']:.4g}"
        print(f"  {split} {elbo} (nats per image)")
    check = summary["robustness"]
    if check is None:
        print("  robustness check: skipped, the training data has no labels to probe")
    else:
        attacked = ", ".join(f"eps {e:g}: {100 * a:.1f} %" for e, a in check["pgd"].items())
        print(
            f"  robustness check ({check['task']}, linear probe on the encoder mean, {check['examples']} {split} images): "
            f"clean {100 * check['clean']:.1f} %, L-inf PGD-10 {attacked}"
        )
        stands = _where_a_run_stands(model_name, summary.get("dataset"), result.step)
        if stands:
            print(stands)
    export_base = os.path.join(os.path.dirname(os.path.abspath(directory)), "export")
    print("next:")
    print(f"  python -m evaluate.robustness --model_dir={directory}    # the full protocol")
    print(f"  python -m export.encoder --model_dir={directory} --export_base={export_base} --model_name={model_name}")
    print(f"  python -m serving.server --model_name={model_name} --model_base_path={export_base}/{model_name}")
    print(f"  tensorboard --logdir={result.model_dir.log_dir}")


def _given(names):
    """{name: value} of the flags among `names` given on the command line."""
    return {name: FLAGS[name].value for name in names if FLAGS[name].present}


def _main(model_class, config):
    from train import runner
    from train.loop import CheckpointError, NonFiniteLossError
    from train.settings import TrainSettings
    from zoo import data as zoo_data
    from zoo.model_dir import ModelDirError

    console.quiet_info_logs()
    model_name = model_class.registry_name
    # The dataset's recipe, under the config file, under the flags given (`train.settings.resolve`).
    options = {name: value for name, value in config.items() if name not in ("model", "model_dir")}
    options.update(_given([field.name for field in (*TrainSettings.fields(), *model_class.config_class.fields())]))
    model_dir = FLAGS.model_dir if FLAGS["model_dir"].present else config.get("model_dir", DEFAULT_MODEL_DIR)
    try:
        result = runner.run(model_class, model_dir, **options)  # the class looked up in `main`, not the name again
    except (
        ValueError,
        ModelDirError,
        zoo_data.DataUnavailableError,
        NonFiniteLossError,
        CheckpointError,
        FileNotFoundError,
    ) as error:
        _fail(str(error))
    if result.is_chief:
        _print_summary(model_name, result)
    else:
        print(
            f"worker trained {model_name} to step {result.step} (weights digest {result.weights_digest}); "
            "the chief saved the model"
        )


def main(model_name=None):
    """Parses the flags of `model_name` (or of `--model`, or of the model its `--config` file names) and trains."""
    import zoo
    from train.settings import TrainSettings

    config_path = _flag_from_argv("config")
    try:
        config = read_json_object(config_path, "--config") if config_path else {}
    except ValueError as error:
        _fail(str(error))
    if model_name is None:  # `python -m train --model=NAME`: the model's flags depend on --model
        flags.DEFINE_enum(
            "model", None, sorted(zoo.MODELS), "Model to train (or the config file's `model`).", module_name=sys.argv[0]
        )
        model_name = _flag_from_argv("model") or config.get("model")
        if model_name is None:
            _fail(
                "--model is required (also for --help, which then lists its flags), or a --config file naming its "
                f"model; choose one of: {', '.join(sorted(zoo.MODELS))}"
            )
    elif config.get("model", model_name) != model_name:
        _fail(f"--config {config_path} trains {config['model']!r}, not {model_name!r}: use python -m train --config")
    try:
        model_class = zoo.get_model_class(model_name)
    except ValueError as error:
        _fail(str(error))
    # In the main module, so that --help lists them with the settings (absl's own stay under --helpfull).
    flags.DEFINE_string(
        "model_dir", DEFAULT_MODEL_DIR, "Where checkpoints, logs and the final model go.", module_name=sys.argv[0]
    )
    flags.DEFINE_string(
        "config",
        None,
        "JSON file of settings and hyper-parameters by name (and optionally model "
        "and model_dir), e.g. configs/color_mnist/avae_conv.json; flags given override it.",
        module_name=sys.argv[0],
    )
    define_flags(TrainSettings, sys.argv[0])
    define_flags(model_class.config_class, sys.argv[0])
    app.run(lambda argv: _main(model_class, config) if len(argv) == 1 else _fail(f"unexpected arguments: {argv[1:]}"))


def _flag_from_argv(name):
    """The value of --name in sys.argv, before absl parses it (the flags to define depend on it); None if absent."""
    for i, arg in enumerate(sys.argv[1:], start=1):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return None
