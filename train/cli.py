"""The training command line: `python -m train --model=NAME` and `python -m train.<model>`.

A thin shell over `train.run`: one flag per field of `TrainSettings` and of the model's config class
(type, default, help and choices from the field), `--model_dir`, and a one-line error instead of a
traceback for bad input. It quiets TensorFlow's C++ log unless TF_CPP_MIN_LOG_LEVEL is set (`zoo.console`).
"""

import os
import sys

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_MODEL_DIR = "/tmp/robust_zoo/model"

_DEFINE_BY_TYPE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_flags(config_class, module_name, flag_values=FLAGS):
    """One flag per field of the dataclass `config_class`, listed by `--help` under `module_name`."""
    for field in config_class.fields():
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        kwargs = dict(module_name=module_name, flag_values=flag_values)
        if choices:
            flags.DEFINE_enum(field.name, field.default, list(choices), help_text, **kwargs)
        else:
            _DEFINE_BY_TYPE[field.type](field.name, field.default, help_text, **kwargs)


def _fail(message):
    """One clear line on stderr, no traceback."""
    sys.exit(f"error: {message}")


def _print_summary(model_name, result):
    directory = result.model_dir.path
    print(f"\ntrained {model_name} to step {result.step} (weights digest {result.weights_digest}); "
          f"model saved in {result.model_dir.model_file}")  # fmt: skip
    summary = result.summary
    if summary is None:
        return
    test = summary["test"]
    if test:
        elbo = f"test ELBO {test['elbo']:.1f}" if "elbo" in test else f"test loss {test['loss']:.4g}"
        print(f"  {elbo} (nats per image, on the validation images)")
    check = summary["robustness"]
    if check is None:
        print("  robustness check: skipped, the training data has no labels to probe")
    else:
        attacked = ", ".join(f"eps {e:g}: {100 * a:.1f} %" for e, a in check["pgd"].items())
        print(f"  robustness check ({check['task']}, linear probe on the encoder mean, {check['examples']} test images): "
              f"clean {100 * check['clean']:.1f} %, L-inf PGD-10 {attacked}")  # fmt: skip
    export_base = os.path.join(os.path.dirname(os.path.abspath(directory)), "export")
    print("next:")
    print(f"  python -m evaluate.robustness --model_dir={directory}    # the full protocol")
    print(f"  python -m export.encoder --model_dir={directory} --export_base={export_base} --model_name={model_name}")
    print(f"  python -m serving.server --model_name={model_name} --model_base_path={export_base}/{model_name}")
    print(f"  tensorboard --logdir={result.model_dir.log_dir}")


def _main(model_name, model_config_class):
    from train import runner
    from train.loop import NonFiniteLossError
    from train.settings import TrainSettings
    from zoo import data as zoo_data
    from zoo.model_dir import ModelDirError

    console.quiet_info_logs()
    options = {field.name: FLAGS[field.name].value for field in TrainSettings.fields()}
    options.update({field.name: FLAGS[field.name].value for field in model_config_class.fields()})
    try:
        result = runner.run(model_name, FLAGS.model_dir, **options)
    except (ValueError, ModelDirError, zoo_data.DataUnavailableError, NonFiniteLossError, FileNotFoundError) as error:
        _fail(str(error))
    if result.is_chief:
        _print_summary(model_name, result)
    else:
        print(f"worker trained {model_name} to step {result.step} (weights digest {result.weights_digest}); "
              "the chief saved the model")  # fmt: skip


def main(model_name=None):
    """Parses the flags of `model_name` (or of `--model`) and trains."""
    import zoo
    from train.settings import TrainSettings

    if model_name is None:  # `python -m train --model=NAME`: the model's flags depend on --model
        flags.DEFINE_enum("model", None, sorted(zoo.MODELS), "Model to train.")
        model_name = _model_from_argv(sorted(zoo.MODELS))
    try:
        model_class = zoo.get_model_class(model_name)
    except ValueError as error:
        _fail(str(error))
    flags.DEFINE_string("model_dir", DEFAULT_MODEL_DIR, "Where checkpoints, logs and the final model go.")
    define_flags(TrainSettings, sys.argv[0])
    define_flags(model_class.config_class, sys.argv[0])
    app.run(lambda argv: _main(model_name, model_class.config_class) if len(argv) == 1
            else _fail(f"unexpected arguments: {argv[1:]}"))  # fmt: skip


def _model_from_argv(choices):
    """The value of --model in sys.argv, before absl parses it (the flags to define depend on it)."""
    for i, arg in enumerate(sys.argv[1:], start=1):
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
        if arg == "--model" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    _fail(f"--model is required (also for --help, which then lists its flags); choose one of: {', '.join(choices)}")
