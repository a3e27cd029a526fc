"""Exports a trained encoder as a SavedModel for TF Serving and TF Hub reuse.

    python -m export.encoder --model_dir=M --export_base=E --model_name=N [--version=V]

loads `M/model.keras` and writes `E/N/<V, or the next integer>/` atomically
(a temporary directory beside it, then one rename), so a server polling
`E/N` never sees a half-written version. It also writes, for the real
`tensorflow_model_server`, `E/models.config` (one entry per exported model)
and `E/batching_parameters.txt`. These names and the layout are `zoo.export_layout`'s.

The export contract (names and shapes are stable; the batch dimension is
None; H, W, C and D are the model's image shape and latent dimension):

- `serving_default`: `images` float32 [None, H, W, C] in [0, 1] ->
  `embedding` float32 [None, D] (posterior mean), `stddev` float32 [None, D]
  (posterior standard deviation; zeros for a deterministic model).
- `encode_image`: `image_bytes` string [None] (JPEG/PNG/BMP/GIF bytes, as TF
  Serving clients send them with {"b64": ...}), decoded to C channels and,
  when of another size, centre-cropped and resized to H x W as training read
  its dataset's images (`zoo.data.crop_and_resize`) -> `embedding`, `stddev`.
- `reconstruct`: `images` -> `reconstruction` float32 [None, H, W, C].
- `decode`: `latents` float32 [None, D] -> `images` float32 [None, H, W, C].
- The TF Hub reusable SavedModel API on the same object: `__call__(images,
  training=False)` -> embedding, and `variables`, `trainable_variables`,
  `regularization_losses`.

Images with NaN or infinite values are rejected with INVALID_ARGUMENT (HTTP
400 from TF Serving and from `serving.server`). `assets/model_card.md` (and
`model_card.json`) describe the model: type, training settings, its training
stages (through `init_from`, with the steps each ran), dataset and,
when the model directory holds the evaluation (`robustness.json`), its robustness table.

The module is a thin `tf.Module` in the style of TF Model Garden's
`export_base.py`: `tf.function`s with fixed input signatures, named
signatures, and one `export()` call. It calls the model's own public methods
(`posterior`, `decode`, `__call__`: the interface every zoo model has) and
reimplements none of its maths. `export.run(model_dir, export_base, model_name)`
is what the command line calls.
"""

import json
import os
import shutil
import tempfile

from zoo import console
from zoo.export_layout import BATCHING_PARAMETERS, MODEL_CARD, MODEL_CARD_JSON, MODELS_CONFIG, next_version

if __name__ == "__main__":
    console.quiet_tensorflow()  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

from zoo import data as zoo_data  # noqa: E402
from zoo import registry  # noqa: E402
from zoo.model_dir import ModelDir, init_from_chain  # noqa: E402

SIGNATURES = ("serving_default", "encode_image", "reconstruct", "decode")

# Written beside the models for `tensorflow_model_server --enable_batching`;
# also what `serving.server` reads. Batches of up to 64 rows, closed after 2 ms.
DEFAULT_BATCHING_PARAMETERS = """\
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""


class EncoderExportModule(tf.Module):
    """The exported object: serving signatures plus the TF Hub reusable API."""

    # Plain attributes on this object, shadowing tf.Module's properties of the
    # same names, so they are saved as the TF Hub reusable SavedModel API asks.
    variables = None
    trainable_variables = None
    regularization_losses = None

    def __init__(self, model, model_card_paths=(), crop=None):
        super().__init__(name="encoder_export")
        object.__setattr__(self, "_model", model)  # not tracked: its variables are, below
        height, width, channels = (int(d) for d in model.image_shape)
        self._image_size = (height, width)
        self._channels = channels
        self._crop = crop  # what training cropped an image of another size to (`zoo.data.crop_and_resize`)
        latent_dim = int(model.latent_dim)
        images = tf.TensorSpec([None, height, width, channels], tf.float32, name="images")
        image_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
        latents = tf.TensorSpec([None, latent_dim], tf.float32, name="latents")

        variables = [_tf_variable(v) for v in model.variables]
        self.variables = variables
        self.trainable_variables = [v for v in variables if v.trainable]
        self.regularization_losses = []
        self.model_card = [tf.saved_model.Asset(path) for path in model_card_paths]

        self.serve = tf.function(self._serve, input_signature=[images])
        self.encode_image = tf.function(self._encode_image, input_signature=[image_bytes])
        self.reconstruct = tf.function(self._reconstruct, input_signature=[images])
        self.decode = tf.function(self._decode, input_signature=[latents])
        self.__call__ = tf.function(self._call)
        for training in (False, True):
            self.__call__.get_concrete_function(images, training=training)

    # -- the model's maths, through its public methods ------------------------

    def _posterior_moments(self, images):
        model = self._model
        images = tf.debugging.assert_all_finite(images, "images must be finite (no NaN or Inf)")
        posterior = model.posterior(images, training=False)  # a point mass for a deterministic model
        mean = tf.cast(posterior.mean(), tf.float32)
        stddev = posterior.stddev()
        stddev = tf.broadcast_to(tf.cast(stddev, tf.float32), tf.shape(mean))
        return mean, stddev

    def _decode_latents(self, latents):
        return tf.cast(self._model.decode(latents, training=False), tf.float32)

    def _decode_image(self, data):
        image = tf.io.decode_image(data, channels=self._channels, expand_animations=False, dtype=tf.float32)
        size = tf.shape(image)[:2]
        image = tf.cond(
            tf.reduce_all(size == self._image_size),
            lambda: image,
            lambda: zoo_data.crop_and_resize(image, self._image_size, self._crop),
        )
        return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [*self._image_size, self._channels])

    # -- the signatures ----------------------------------------------------------

    def _serve(self, images):
        embedding, stddev = self._posterior_moments(images)
        return {"embedding": embedding, "stddev": stddev}

    def _encode_image(self, image_bytes):
        spec = tf.TensorSpec([*self._image_size, self._channels], tf.float32)
        images = tf.map_fn(self._decode_image, image_bytes, fn_output_signature=spec)
        return self._serve(images)

    def _reconstruct(self, images):
        embedding, _ = self._posterior_moments(images)
        return {"reconstruction": self._decode_latents(embedding)}

    def _decode(self, latents):
        latents = tf.debugging.assert_all_finite(latents, "latents must be finite (no NaN or Inf)")
        return {"images": self._decode_latents(latents)}

    def _call(self, images, training=False):
        """TF Hub reusable API: the embedding (the model's own `call`: posterior mean)."""
        return tf.cast(self._model(images, training=training), tf.float32)

    def signatures(self):
        return {
            "serving_default": self.serve.get_concrete_function(),
            "encode_image": self.encode_image.get_concrete_function(),
            "reconstruct": self.reconstruct.get_concrete_function(),
            "decode": self.decode.get_concrete_function(),
        }


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (or the variable itself)."""
    value = getattr(variable, "value", variable)
    return value if isinstance(value, tf.Variable) else variable


# ----------------------------------------------------------------------------
# Model card


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def robustness_table(evaluation):
    """Markdown: the evaluation's adversarial accuracy (worst case over its attacks), task by radius."""
    accuracy = evaluation.get("adversarial_accuracy") or {}
    epsilons = sorted({epsilon for per_task in accuracy.values() for epsilon in per_task}, key=float)
    lines = ["| task | " + " | ".join(f"eps {e}" for e in epsilons) + " |", "|---|" + "---|" * len(epsilons)]
    for task, per_task in accuracy.items():
        lines.append(f"| {task} | " + " | ".join(_cell(per_task.get(e, "")) for e in epsilons) + " |")
    return "\n".join(lines)


def _stage(model, model_dir, flags):
    optimizer = getattr(model, "optimizer", None)
    return {
        "model_dir": os.path.abspath(model_dir) if model_dir else None,
        "steps": int(optimizer.iterations.numpy()) if optimizer is not None else None,
        "learning_rate": flags.get("learning_rate"),
    }


def training_stages(model, model_dir):
    """How the model was trained, oldest stage first: [{"model_dir", "steps", "learning_rate"}].

    A run started from another one's weights (`init_from`) continues its training, so the card counts both.
    `steps` is each stage's own optimizer count (saved in its model.keras; a flag's train_steps is a target,
    not what ran), None for a stage whose model directory is gone at export time.
    """
    flags = ModelDir(model_dir).read_flags() if model_dir else {}
    stages = [_stage(model, model_dir, flags)]
    for directory in init_from_chain(flags.get("init_from"), after=model_dir):
        if not directory.has_model():
            stages.insert(0, {"model_dir": os.path.abspath(directory), "steps": None, "learning_rate": None})
            break
        stages.insert(0, _stage(registry.load(directory.path), directory.path, directory.read_flags()))
    return stages


def _training_lines(stages):
    known = [stage["steps"] for stage in stages if stage["steps"] is not None]
    if len(stages) == 1:
        steps = f"{known[0]:,} steps" if known else "steps not recorded"
        return [f"- {steps}, learning rate {_cell(stages[0]['learning_rate'])}"]
    total = f"{sum(known):,} steps in all" if len(known) == len(stages) else "steps not all recorded"
    lines = [f"- {total}, in {len(stages)} stages, each started from the weights of the one before (`init_from`):"]
    for number, stage in enumerate(stages, 1):
        steps = f"{stage['steps']:,} steps" if stage["steps"] is not None else "its directory was gone at export"
        lines.append(f"  {number}. `{stage['model_dir']}`: {steps}, learning rate {_cell(stage['learning_rate'])}")
    return lines


def _training_data(config, flags):
    """What the weights were trained on: the dataset, its data directory, the split sizes read there now (None
    where the data is not on this machine) and how many training examples the run took (all: None)."""
    dataset, data_dir = config.get("dataset") or flags.get("dataset"), flags.get("data_dir")
    return {
        "dataset": dataset,
        "data_dir": data_dir,
        "splits": zoo_data.split_sizes(dataset, data_dir) if dataset else None,
        "train_examples": flags.get("train_examples") or None,
    }


def _splits_text(splits):
    """ " (N training and M test examples)", or "" when the sizes are not known here."""
    if not splits or None in splits.values():
        return ""
    return f" ({splits['train']:,} training and {splits['test']:,} test examples)"


def model_card(model, model_dir):
    """(markdown, dict) describing the exported model."""
    directory = ModelDir(model_dir)
    config, flags = directory.read_config(), directory.read_flags()
    stages = training_stages(model, model_dir)
    steps = [stage["steps"] for stage in stages]
    evaluation = directory.read_robustness() or None
    model_type = model.registry_name
    card = {
        "model_type": model_type,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "dataset": config.get("dataset") or flags.get("dataset"),
        "image_shape": [int(d) for d in model.image_shape],
        "latent_dim": int(model.latent_dim),
        "architecture": model.arch,
        "stddev": "posterior standard deviation (zeros for a deterministic model's point-mass posterior)",
        "training_stages": stages,
        "training_steps": None if None in steps else sum(steps),
        "training_flags": flags,
        "training_data": _training_data(config, flags),
        "weights_digest": registry.weights_digest(model),  # `zoo.weights_digest`: ties the card to its weights
        "model_config": config,
        "evaluation": evaluation,
        "signatures": list(SIGNATURES),
    }
    height, width, channels = card["image_shape"]
    lines = [
        f"# Model card: {model_type}",
        "",
        f"- Model type: `{model_type}` ({card['model_class']})",
        f"- Dataset: `{card['dataset']}`{_splits_text(card['training_data']['splits'])}; weights digest "
        f"`{card['weights_digest']}` (`zoo.weights_digest`)",
        f"- Architecture: `{card['architecture']}`; images {height}x{width}x{channels} in [0, 1]; "
        f"latent dimension {card['latent_dim']}",
        f"- `stddev` output: {card['stddev']}",
        "",
        "## Signatures",
        "",
        f"- `serving_default`: `images` float32 [None, {height}, {width}, {channels}] -> `embedding`, `stddev` "
        f"float32 [None, {card['latent_dim']}]",
        "- `encode_image`: `image_bytes` string [None] (JPEG/PNG) -> `embedding`, `stddev`",
        f"- `reconstruct`: `images` -> `reconstruction` float32 [None, {height}, {width}, {channels}]",
        f"- `decode`: `latents` float32 [None, {card['latent_dim']}] -> `images`",
        "- TF Hub: `__call__(images, training=False)` -> embedding; `variables`, `trainable_variables`, "
        "`regularization_losses`",
        "",
        "## Training",
        "",
        *_training_lines(stages),
        "",
        "## Training flags" + (" (the last stage)" if len(stages) > 1 else ""),
        "",
    ]
    if flags:
        lines += ["| flag | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in sorted(flags.items())]
    else:
        lines.append(f"(no {ModelDir.FLAGS} in the model directory)")
    lines += ["", "## Robustness", ""]
    if evaluation is not None:
        attacks = ", ".join(evaluation.get("attack_budgets") or {}) or "not recorded"
        lines += [
            f"From `{ModelDir.ROBUSTNESS}` (`python -m evaluate.robustness`): accuracy of a linear probe on "
            f"the embedding under the worst case per example of the attacks run ({attacks}), by L-inf "
            "radius.",
            "",
            robustness_table(evaluation),
        ]
    else:
        lines.append(f"(no {ModelDir.ROBUSTNESS} in the model directory at export time)")
    return "\n".join(lines) + "\n", card


# ----------------------------------------------------------------------------
# TF Serving configuration files


def write_models_config(export_base, model_name):
    """Adds (or refreshes) `model_name` in `export_base/models.config` (absolute base paths)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(export_base, MODELS_CONFIG)
    config = model_server_config_pb2.ModelServerConfig()
    if os.path.exists(path):
        with open(path) as f:
            text_format.Parse(f.read(), config)
    entries = config.model_config_list.config
    base_path = os.path.abspath(os.path.join(export_base, model_name))
    for entry in entries:
        if entry.name == model_name:
            entry.base_path = base_path
            break
    else:
        entries.add(name=model_name, base_path=base_path, model_platform="tensorflow")
    _atomic_write(path, text_format.MessageToString(config))
    return path


def write_batching_parameters(export_base):
    path = os.path.join(export_base, BATCHING_PARAMETERS)
    if not os.path.exists(path):  # keep a file the user tuned
        _atomic_write(path, DEFAULT_BATCHING_PARAMETERS)
    return path


def _atomic_write(path, text):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# export()


def export(model, export_base, model_name, version=None, model_dir=None):
    """Writes `model` to `export_base/model_name/<version>/`; returns that path.

    `version` defaults to one more than the largest existing version. The
    SavedModel is written to a temporary directory in the same parent, then
    renamed, so readers never see a partial version.
    """
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"invalid model name {model_name!r}")
    model_base = os.path.join(export_base, model_name)
    os.makedirs(model_base, exist_ok=True)
    version = next_version(model_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists; choose another --version or omit it for the next one")

    work = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_base)
    try:
        card_dir = os.path.join(work, "card")
        os.makedirs(card_dir)
        markdown, card = model_card(model, model_dir or "")
        card["version"] = version
        card["model_name"] = model_name
        with open(os.path.join(card_dir, MODEL_CARD), "w") as f:
            f.write(markdown)
        with open(os.path.join(card_dir, MODEL_CARD_JSON), "w") as f:
            json.dump(card, f, indent=2, sort_keys=True, default=str)
        dataset = card.get("dataset")
        module = EncoderExportModule(
            model,
            [os.path.join(card_dir, MODEL_CARD), os.path.join(card_dir, MODEL_CARD_JSON)],
            crop=zoo_data.DATASETS[dataset].crop if dataset in zoo_data.DATASETS else None,
        )
        saved = os.path.join(work, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        os.rename(saved, final)  # atomic: same directory, same filesystem
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_models_config(export_base, model_name)
    write_batching_parameters(export_base)
    return final


def run(model_dir, export_base, model_name, version=None):
    """Loads the trained model in `model_dir` (a finished training run) and exports it; returns the version path."""
    import zoo

    return export(zoo.load(model_dir), export_base, model_name, version=version, model_dir=model_dir)


def main(argv):
    import sys

    from absl import flags

    del argv
    console.quiet_info_logs()
    FLAGS = flags.FLAGS
    try:
        path = run(FLAGS.model_dir, FLAGS.export_base, FLAGS.model_name, FLAGS.version)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"exported {FLAGS.model_name} version {os.path.basename(path)} to {path}")
    print(
        f"TF Serving config: {os.path.join(FLAGS.export_base, MODELS_CONFIG)}; batching parameters: "
        f"{os.path.join(FLAGS.export_base, BATCHING_PARAMETERS)}"
    )


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model_dir", None, "Training run directory holding model.keras (and flags.json).")
    flags.DEFINE_string("export_base", None, "Export base directory E; the model goes to E/<model_name>/<version>.")
    flags.DEFINE_string("model_name", "encoder", "Model name (the TF Serving model name).")
    flags.DEFINE_integer("version", None, "Version number; default: one more than the largest existing version.")
    flags.mark_flags_as_required(["model_dir", "export_base"])
    app.run(main)
