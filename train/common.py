"""Flags shared by every `python -m train.<model>` entry point, and its main.

An entry point only calls `run("<model>")`. The model's own flags come from its
class: one flag per entry of its `hyperparameters` (the default's type, its
`hyperparameter_help`, and an enum for `hyperparameter_choices`), and the class's
`check_hyperparameters` validates them, so a setting is declared and checked in
one place.
"""

import json
import os
import sys

from absl import app, flags

from zoo import data as zoo_data

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "color_mnist_embedded", list(zoo_data.DATASETS), "Dataset to train on.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory (tfds data_dir).")
flags.DEFINE_bool("download", True, "Let tensorflow-datasets download data that is not prepared in data_dir.")
flags.DEFINE_enum("arch", None, ["mlp", "conv", "conv64"], "Architecture; default: the dataset's (conv64 for CelebA).")
flags.DEFINE_integer("latent_dim", 64, "Latent dimension.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Global batch size (split over replicas).", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_integer("train_steps", 10_000, "Optimizer steps to train for.", lower_bound=1)
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints (and between validations).", lower_bound=1)
flags.DEFINE_integer("eval_examples", 1000, "Test examples used for validation at each checkpoint (0: none).")
flags.DEFINE_string("model_dir", "/tmp/robust_zoo/model", "Where checkpoints, logs and the final model go.")
flags.DEFINE_integer("seed", 0, "Seed for initialisation, data order and training noise.")
flags.DEFINE_enum(
    "strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker"],
    "tf.distribute strategy: auto mirrors over several GPUs; multi_worker reads the cluster from TF_CONFIG.",
)  # fmt: skip
flags.DEFINE_integer("virtual_cpus", 0, "Split the host CPU into N logical devices (tests mirrored on CPU).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer(
    "steps_per_execution", 1, "Training steps per call into TensorFlow (fewer Python round trips; lowered to divide "
    "--checkpoint_every and --train_steps).", lower_bound=1,
)  # fmt: skip
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 maths with loss scaling (for GPUs); weights stay float32.")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard summaries.", lower_bound=1)
flags.DEFINE_string(
    "init_from", None, "model_dir of a trained model to start from: its weights, arch, image shape and latent_dim "
    "(required by models that read no data, e.g. avae_ss)."
)

_DEFINE_BY_TYPE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_model_flags(model_class):
    """Defines a flag for each hyper-parameter of `model_class`, typed by its default."""
    for name, default in model_class.hyperparameters.items():
        help_text = model_class.describe_hyperparameter(name)
        choices = model_class.hyperparameter_choices.get(name)
        if choices:
            flags.DEFINE_enum(name, default, list(choices), help_text)
        else:
            _DEFINE_BY_TYPE[type(default)](name, default, help_text)


def _fail(message):
    """One clear line on stderr, no traceback."""
    sys.exit(f"error: {message}")


def _model_kwargs(model_class, image_shape, arch, latent_dim):
    kwargs = {"image_shape": image_shape, "arch": arch, "latent_dim": latent_dim, "seed": FLAGS.seed}
    kwargs.update({name: FLAGS[name].value for name in model_class.hyperparameters})
    if kwargs.get("dataset_size") == 0:  # a `dataset_size` hyper-parameter left at 0: the training split's size
        kwargs["dataset_size"] = _train_size()
    return kwargs


def _train_size():
    """Examples in --dataset's training split, for estimators that need it (beta_tcvae's total correlation)."""
    try:
        size = int(zoo_data.get_spec(FLAGS.dataset).load("train", FLAGS.data_dir, FLAGS.download).cardinality())
    except zoo_data.DataUnavailableError as error:
        _fail(str(error))
    if size < 1:
        _fail(f"the size of the --dataset={FLAGS.dataset} training split is unknown: pass --dataset_size")
    return size


def _load_init_from(model_name, model_class, training):
    """The trained model `--init_from` names, or None; a model that reads no data must have one."""
    if not FLAGS.init_from:
        if not model_class.needs_data:
            _fail(f"{model_name} reads no data, it post-trains a trained model: pass --init_from=<its model_dir>")
        return None
    try:
        return training.load_model(FLAGS.init_from)
    except (OSError, ValueError) as error:
        _fail(f"--init_from: {error}")


def _shapes(model_class, source):
    """(image_shape, arch, latent_dim): the `--init_from` model's if any, else the dataset's and the flags'."""
    if source is not None:
        shapes = (tuple(source.image_shape), source.arch, source.latent_dim)
        if not model_class.needs_data:
            return shapes
    spec = zoo_data.get_spec(FLAGS.dataset)
    if source is None:
        return spec.image_shape, FLAGS.arch or spec.default_arch, FLAGS.latent_dim
    if shapes[0] != tuple(spec.image_shape):
        _fail(f"the --init_from model takes {shapes[0]} images, --dataset={FLAGS.dataset} has {spec.image_shape}")
    return shapes


def _main(model_name):
    import keras
    import tensorflow as tf
    import zoo
    from zoo import training

    training.split_cpu(FLAGS.virtual_cpus)
    try:  # first: MultiWorkerMirroredStrategy must exist before other TensorFlow work
        strategy = training.make_strategy(FLAGS.strategy)
    except ValueError as error:
        _fail(str(error))
    role = training.worker_role(strategy)  # only the chief writes into --model_dir
    keras.utils.set_random_seed(FLAGS.seed)
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        _fail(f"--batch_size={FLAGS.batch_size} is not divisible by the {replicas} replicas of --strategy={FLAGS.strategy}")

    model_class = zoo.get_model_class(model_name)
    source = _load_init_from(model_name, model_class, training)
    image_shape, arch, latent_dim = _shapes(model_class, source)
    kwargs = _model_kwargs(model_class, image_shape, arch, latent_dim)
    dataset = FLAGS.dataset if model_class.needs_data else None
    config = {"model": model_name, "dataset": dataset, "init_from": FLAGS.init_from, **kwargs,
              "image_shape": list(image_shape)}  # fmt: skip
    used_flags = {f.name: f.value for f in FLAGS.get_key_flags_for_module(__name__)}

    try:
        # The model checks its hyper-parameters before anything is written to --model_dir.
        model = training.build_model(
            model_name, strategy, learning_rate=FLAGS.learning_rate, jit_compile=FLAGS.jit_compile,
            steps_per_execution=FLAGS.steps_per_execution, mixed_precision=FLAGS.mixed_precision, **kwargs,
        )  # fmt: skip
        training.prepare_model_dir(FLAGS.model_dir, config, write_config=role.is_chief)
        if role.is_chief:
            with open(os.path.join(FLAGS.model_dir, "flags.json"), "w") as f:
                json.dump(used_flags, f, indent=2, sort_keys=True)
        if source is not None:  # a resumed run then restores its own checkpoint over these weights
            model.set_weights(source.get_weights())

        def make_train_data(initial_step):
            if not model_class.needs_data:  # batches that carry only the batch size: the model draws its inputs
                return tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(FLAGS.batch_size, drop_remainder=True)
            return zoo_data.load(
                FLAGS.dataset, "train", FLAGS.batch_size, data_dir=FLAGS.data_dir, shuffle=True,
                seed=FLAGS.seed + initial_step, repeat=True, drop_remainder=True, download=FLAGS.download,
            )  # fmt: skip

        validation = None
        if FLAGS.eval_examples and model_class.needs_data:
            validation = zoo_data.load(
                FLAGS.dataset, "test", FLAGS.batch_size, data_dir=FLAGS.data_dir, take=FLAGS.eval_examples,
                download=FLAGS.download,
            )  # fmt: skip
        training.train(
            model, make_train_data, FLAGS.model_dir, FLAGS.train_steps, checkpoint_every=FLAGS.checkpoint_every,
            validation_data=validation, log_every=FLAGS.log_every,
        )  # fmt: skip
    except (ValueError, zoo_data.DataUnavailableError, training.NonFiniteLossError) as error:
        _fail(str(error))
    step, digest = int(model.optimizer.iterations.numpy()), training.weights_digest(model)
    if role.is_chief:
        print(f"trained {model_name} to step {step} (weights digest {digest}); model saved in "
              f"{os.path.join(FLAGS.model_dir, training.MODEL_FILE)}")  # fmt: skip
    else:
        print(f"worker {role.task_type}:{role.task_id} trained {model_name} to step {step} (weights digest {digest}); "
              "the chief saved the model")  # fmt: skip


def run(model_name):
    """Entry point of `python -m train.<model_name>`: its model's flags, then training."""
    import zoo

    define_model_flags(zoo.get_model_class(model_name))
    for flag in FLAGS.get_key_flags_for_module(__name__):  # `--help` lists the shared flags too
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(lambda argv: _main(model_name) if len(argv) == 1 else _fail(f"unexpected arguments: {argv[1:]}"))
