"""Robustness evaluation of trained models: the papers' protocol as one command (issue 4).

    python -m evaluate.robustness --model_dir=M --data_dir=D --output_dir=O

writes O/robustness.json, O/robustness.md and PNG plots; `--dataset` defaults to the one in
M/config.json. M may also be an exported encoder (a SavedModel version directory that `export.encoder`
wrote, such as a shipped `zoo.pretrained.path(name)`): it is attacked through its serving signature,
as its users call it. The downstream accuracy is the worst case per example over the project's PGD and ART's
APGD-CE, targeted APGD-DLR and Square (`--attacks`); `--quick` keeps the project's PGD alone. Several
models side by side:

    python -m evaluate.robustness --model_dir=M1 --model_dir=M2 ... --output_dir=O

evaluates each into O/<name of its directory>/ and writes O/comparison.md and O/comparison_*.png;
results already computed are compared without rerunning:

    python -m evaluate.robustness --compare=O1/robustness.json,O2/robustness.json --output_dir=O

This module only turns flags into the arguments of `evaluate.run`. The settings flags (`--pgd_steps`,
`--epsilons`, ...) are generated from the fields of `evaluate.stage_base.Common` and of each stage in
`evaluate.stages`, with their help and defaults.
"""

import sys

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

from absl import app, flags  # noqa: E402

import evaluate  # noqa: E402
from evaluate import stages as stage_registry  # noqa: E402
from evaluate.stage_base import Common, EvaluationError  # noqa: E402
from zoo import data as zoo_data  # noqa: E402

FLAGS = flags.FLAGS


def _settings():
    """{name: (field, base type, element type, owner)} for every setting of Common and of every stage."""
    owners = stage_registry.setting_owners()
    return {
        field.name: (field, kind, element, owners[field.name])
        for owner in (Common, *stage_registry.STAGES.values())
        for field, kind, element in owner.typed_fields()
    }


def define_flags(flag_values=FLAGS, module_name=__name__):
    """The command line's own flags, and one flag per setting (type, default, help and choices from its field)."""
    kwargs = dict(flag_values=flag_values, module_name=module_name)
    flags.DEFINE_multi_string(
        "model_dir",
        None,
        "Trained model directory (model.keras, config.json), or an "
        "exported encoder's SavedModel version directory (export.encoder's, e.g. "
        "zoo.pretrained.path(name)); repeat to compare.",
        **kwargs,
    )
    flags.DEFINE_list("compare", None, "robustness.json files to compare side by side (no evaluation).", **kwargs)
    flags.DEFINE_list(
        "labels", None, "Names of the compared models in plots and tables (default: directory names).", **kwargs
    )
    flags.DEFINE_string("dataset", None, "Dataset; default: the one in model_dir/config.json.", **kwargs)
    flags.DEFINE_string(
        "data_dir",
        None,
        "tensorflow-datasets data directory, or image_folder's folder; default: the "
        "one the model was trained on, where it exists.",
        **kwargs,
    )
    flags.DEFINE_string("output_dir", None, "Where robustness.json, the table and the plots go.", **kwargs)
    flags.DEFINE_list(
        "stages", list(stage_registry.STAGES), "Stages to run, from: " + ", ".join(stage_registry.STAGES), **kwargs
    )
    for field, kind, element, owner in _settings().values():
        help_text = field.metadata["help"] + ("" if owner is Common else f" [{owner.name} stage]")
        default, choices = field.default, field.metadata.get("choices")
        if kind is tuple:
            shown = None if default is None else [f"{v:g}" if element is float else str(v) for v in default]
            help_text += f" Comma-separated{', from: ' + ', '.join(choices) if choices else ''}."
            flags.DEFINE_list(field.name, shown, help_text, **kwargs)
        elif kind is str and choices:
            flags.DEFINE_enum(field.name, default, list(choices), help_text, **kwargs)
        else:
            define = {
                bool: flags.DEFINE_bool,
                int: flags.DEFINE_integer,
                float: flags.DEFINE_float,
                str: flags.DEFINE_string,
            }[kind]
            define(field.name, default, help_text, **kwargs)


def _fail(message):
    """One clear line on stderr, no traceback."""
    sys.exit(f"error: {message}")


def _setting(flag_values, name, kind, element):
    """A flag's value as its settings field takes it (comma lists of numbers parsed here, naming the flag)."""
    value = flag_values[name].value
    if kind is not tuple or value is None:
        return value
    if element is float:
        numbers = []
        for item in value:
            try:
                numbers.append(float(item))
            except ValueError:
                _fail(f"--{name} must be comma-separated numbers, got {item!r} in {','.join(value)!r}")
        return tuple(numbers)
    return tuple(value)


def run_from_flags(flag_values=FLAGS):
    """Turns parsed flags into the arguments of `evaluate.run` and runs it; bad input exits with one line."""
    values = flag_values
    if not values.output_dir:
        _fail("--output_dir is required")
    if not values.model_dir and not values.compare:
        _fail("--model_dir is required (or --compare=results.json,... to compare existing results)")
    if values.model_dir and values.compare:
        _fail("give either --model_dir (evaluate) or --compare (existing results), not both")
    settings = {name: _setting(values, name, kind, element) for name, (_, kind, element, _) in _settings().items()}
    owners = stage_registry.setting_owners()
    try:
        common = Common(**{name: value for name, value in settings.items() if owners[name] is Common})
        stages = stage_registry.build(values.stages, **settings)
        return evaluate.run(
            values.model_dir or (),
            values.output_dir,
            compare_paths=values.compare or (),
            labels=values.labels,
            dataset=values.dataset,
            data_dir=values.data_dir,
            stages=stages,
            common=common,
        )
    except (EvaluationError, zoo_data.DataUnavailableError) as error:
        _fail(str(error))


def _main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    console.quiet_info_logs()
    run_from_flags(FLAGS)


def main():
    define_flags(FLAGS, sys.argv[0])
    app.run(_main)


if __name__ == "__main__":
    main()
