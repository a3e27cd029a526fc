"""Flags shared by every `python -m train.<model>` entry point, and its main.

An entry point defines the flags of its model's own hyper-parameters and calls
`run("<model>")`. Each hyper-parameter a model class declares is read from the
flag of the same name.
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
flags.DEFINE_float("obs_var", 0.5, "Observation variance of the Gaussian likelihood.")
flags.DEFINE_enum("likelihood", "gaussian", ["gaussian", "bernoulli"], "Decoder likelihood.")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored"], "tf.distribute strategy.")
flags.DEFINE_integer("virtual_cpus", 0, "Split the host CPU into N logical devices (tests mirrored on CPU).")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard summaries.", lower_bound=1)

flags.register_validator("obs_var", lambda v: v > 0, message="--obs_var must be positive")


def _fail(message):
    """One clear line on stderr, no traceback."""
    sys.exit(f"error: {message}")


def _model_kwargs(model_class, image_shape, arch):
    kwargs = {"image_shape": image_shape, "arch": arch, "latent_dim": FLAGS.latent_dim, "seed": FLAGS.seed}
    kwargs.update({name: FLAGS[name].value for name in model_class.hyperparameters})
    return kwargs


def _main(model_name):
    import keras
    import zoo
    from zoo import training

    training.split_cpu(FLAGS.virtual_cpus)
    keras.utils.set_random_seed(FLAGS.seed)
    strategy = training.make_strategy(FLAGS.strategy)
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        _fail(f"--batch_size={FLAGS.batch_size} is not divisible by the {replicas} replicas of --strategy={FLAGS.strategy}")

    model_class = zoo.get_model_class(model_name)
    spec = zoo_data.get_spec(FLAGS.dataset)
    arch = FLAGS.arch or spec.default_arch
    kwargs = _model_kwargs(model_class, spec.image_shape, arch)
    config = {"model": model_name, "dataset": FLAGS.dataset, **kwargs, "image_shape": list(spec.image_shape)}
    used_flags = {f.name: f.value for f in FLAGS.get_key_flags_for_module(__name__)}
    used_flags.update({name: FLAGS[name].value for name in model_class.hyperparameters})

    try:
        training.prepare_model_dir(FLAGS.model_dir, config)
        with open(os.path.join(FLAGS.model_dir, "flags.json"), "w") as f:
            json.dump(used_flags, f, indent=2, sort_keys=True)
        model = training.build_model(
            model_name, strategy, learning_rate=FLAGS.learning_rate, jit_compile=FLAGS.jit_compile, **kwargs
        )

        def make_train_data(initial_step):
            return zoo_data.load(
                FLAGS.dataset, "train", FLAGS.batch_size, data_dir=FLAGS.data_dir, shuffle=True,
                seed=FLAGS.seed + initial_step, repeat=True, drop_remainder=True, download=FLAGS.download,
            )  # fmt: skip

        validation = None
        if FLAGS.eval_examples:
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
    print(f"trained {model_name} to step {int(model.optimizer.iterations.numpy())}; model saved in "
          f"{os.path.join(FLAGS.model_dir, training.MODEL_FILE)}")  # fmt: skip


def run(model_name):
    """Entry point of `python -m train.<model_name>`."""
    app.run(lambda argv: _main(model_name) if len(argv) == 1 else _fail(f"unexpected arguments: {argv[1:]}"))
