"""`train.run`: one training run from explicit settings, what every `python -m train...` calls."""

import dataclasses

import keras
import tensorflow as tf

import zoo
from evaluate import quick_check
from train import distribute, loop
from train import settings as train_settings
from train.callbacks import RobustnessMonitor
from zoo import data as zoo_data
from zoo.base import ZooModel
from zoo.model_dir import ModelDir, init_from_chain


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    model_dir: ModelDir
    step: int
    weights_digest: str
    is_chief: bool
    # What the end-of-training summary measured (`train.summary`); None when it was not asked for.
    summary: dict = None


def _train_size(settings):
    """Examples trained on: the training split's, or the first `train_examples` of it, for beta_tcvae's total
    correlation. Asking for more than the split has is an error (a data-size ablation would silently train on fewer)."""
    split = zoo_data.get_spec(settings.dataset).load("train", settings.data_dir, settings.download)
    size = int(split.cardinality())
    if settings.train_examples:
        if size > 0 and settings.train_examples > size:
            raise ValueError(
                f"train_examples {settings.train_examples} is more than the {size} examples of the "
                f"{settings.dataset} training split"
            )
        return settings.train_examples
    if size < 1:
        raise ValueError(f"the size of the {settings.dataset} training split is unknown: give dataset_size")
    return size


def _model_class(model):
    """The class of `model`: a registered model's name, looked up here (the one look-up of a run started by name),
    or a model class (a `ZooModel` subclass with a `registry_name`), taken as it is."""
    if isinstance(model, str):
        return zoo.get_model_class(model)
    if isinstance(model, type) and issubclass(model, ZooModel) and hasattr(model, "registry_name"):
        return model
    raise TypeError(f"model must be a registered model's name or its class (zoo.get_model_class(name)), got {model!r}")


def _init_source(model_class, settings):
    """The trained model `init_from` names, or None; a model that reads no data must have one."""
    if not settings.init_from:
        if not model_class.needs_data:
            raise ValueError(
                f"{model_class.registry_name} reads no data, it post-trains a trained model: give init_from=<its model_dir>"
            )
        return None
    try:
        return zoo.load(settings.init_from)
    except (OSError, ValueError) as error:
        raise ValueError(f"init_from: {error}") from None


def _check_dataset(model_class, settings):
    """The robustness check's dataset: the one trained on; for a model that reads no data, the one the model it
    post-trains was trained on (following init_from back to a run that read data)."""
    if model_class.needs_data:
        return settings.dataset
    for directory in init_from_chain(settings.init_from):
        dataset = directory.read_config().get("dataset")
        if dataset:
            return dataset
    raise ValueError(
        f"robustness_every: no model behind init_from {settings.init_from} says which data it was "
        "trained on, so there is nothing to check on"
    )


def _shapes(model_class, source, settings):
    """(image_shape, arch, latent_dim): the `init_from` model's if any, else the dataset's and the settings'."""
    if source is not None:
        shapes = (tuple(source.image_shape), source.arch, source.latent_dim)
        if not model_class.needs_data:
            return shapes
    spec = zoo_data.get_spec(settings.dataset, settings.data_dir)
    if source is None:
        return tuple(spec.image_shape), settings.arch, settings.latent_dim
    if shapes[0] != tuple(spec.image_shape):
        raise ValueError(
            f"the init_from model takes {shapes[0]} images, dataset {settings.dataset} has {spec.image_shape}"
        )
    return shapes


def run(model, model_dir, verbose="auto", **options):
    """Trains the model `model` into `model_dir`, resuming from its checkpoints.

    `model` is a registered model's name ("avae"), looked up once here, or its class (`zoo.get_model_class(name)`,
    as the command lines and studies pass it, which looked the name up where it entered); the class goes on to
    `loop.build_model`, and its `registry_name` is the "model" of config.json.

    `options` are the fields of `TrainSettings` (dataset, arch, train_steps, ...) and the model's
    hyper-parameters (e.g. rho), by name; `verbose` is Keras' (0: no progress bar). Raises ValueError (bad settings), ModelDirError,
    DataUnavailableError or NonFiniteLossError with one clear sentence; nothing is written to
    `model_dir` before the settings and the data are checked. Returns a `TrainResult`.
    """
    model_class = _model_class(model)
    settings, hyperparameters = train_settings.resolve(model_class, options)
    distribute.split_cpu(settings.virtual_cpus)
    # First: MultiWorkerMirroredStrategy must exist before other TensorFlow work.
    strategy = distribute.make_strategy(settings.strategy)
    role = distribute.worker_role(strategy)  # only the chief writes into model_dir
    keras.utils.set_random_seed(settings.seed)
    replicas = strategy.num_replicas_in_sync
    if settings.batch_size % replicas:
        raise ValueError(
            f"batch_size {settings.batch_size} is not divisible by the {replicas} replicas of strategy "
            f"{settings.strategy!r}"
        )

    source = _init_source(model_class, settings)
    image_shape, arch, latent_dim = _shapes(model_class, source, settings)
    # A model that reads no data (avae_ss) trains without any; it is checked on data only when a curve is asked for.
    checked = settings.robustness_every or (settings.summary and model_class.needs_data)
    check_dataset = _check_dataset(model_class, settings) if checked else None
    # Missing or bad data fails here, before anything is written to model_dir (downloaded first where allowed).
    dataset_read = settings.dataset if model_class.needs_data else check_dataset
    if dataset_read:
        zoo_data.check_available(dataset_read, settings.data_dir, settings.download)
    settings = train_settings.with_speed_defaults(settings, arch, replicas)
    size_asked = hyperparameters.get("dataset_size", None) == 0  # 0 asks for the size trained on
    if model_class.needs_data and (settings.train_examples or size_asked):
        train_size = _train_size(settings)  # also refuses more train_examples than the split has
        if size_asked:
            hyperparameters["dataset_size"] = train_size
    model_kwargs = {"image_shape": image_shape, "arch": arch, "latent_dim": latent_dim, "seed": settings.seed}
    # The model checks its hyper-parameters before anything is written to model_dir.
    keras_model = loop.build_for_settings(model_class, strategy, settings, **model_kwargs, **hyperparameters)
    dataset = settings.dataset if model_class.needs_data else None
    config = {
        "model": model_class.registry_name,
        "dataset": dataset,
        "init_from": settings.init_from,
        **keras_model.get_config(),
        "image_shape": list(image_shape),
    }
    config.pop("name")
    directory = ModelDir(model_dir)
    directory.check(config, flags=settings.trajectory(), settings_may_change=settings.allow_new_settings)
    if source is not None:  # a resumed run then restores its own checkpoint over these weights
        keras_model.set_weights(source.get_weights())
    # Before config.json and flags.json are written: a directory whose checkpoints all fail to restore gets nothing.
    initial_step = loop.restore(keras_model, directory, move_damaged=role.is_chief)
    if role.is_chief:
        directory.record(config, flags=dataclasses.asdict(settings))

    def make_train_data(step):
        if not model_class.needs_data:  # batches that carry only the batch size: the model draws its inputs
            return tf.data.Dataset.from_tensors(tf.zeros([0])).repeat().batch(settings.batch_size, drop_remainder=True)
        return zoo_data.training_batches(
            settings.dataset,
            settings.batch_size,
            data_dir=settings.data_dir,
            seed=settings.seed,
            start=step * settings.batch_size,
            download=settings.download,
            take=settings.train_examples or None,
            colour_per_visit=settings.colour_per_visit,
            shift_pixels=settings.shift_pixels,
        )

    # Training's own measurements read the dataset's check split: its validation digits where it has them.
    measured_split = zoo_data.get_spec(check_dataset).check_split if check_dataset else None
    validation = None
    if settings.eval_examples and model_class.needs_data:
        validation = zoo_data.load(
            settings.dataset,
            zoo_data.get_spec(settings.dataset).check_split,
            settings.batch_size,
            data_dir=settings.data_dir,
            take=settings.eval_examples,
            download=settings.download,
        )
    check_data = None
    if role.is_chief and check_dataset:
        check_data = quick_check.load_check_data(check_dataset, settings.data_dir, settings.download)
    callbacks = []
    if settings.robustness_every and check_data is not None:
        callbacks.append(
            RobustnessMonitor(
                check_data,
                settings.epsilons,
                settings.robustness_every,
                directory.robustness_curve_file,
                f"{directory.log_dir}/robustness",
                seed=settings.seed,
            )
        )
    loop.train(
        keras_model,
        make_train_data,
        directory.path,
        settings.train_steps,
        checkpoint_every=settings.checkpoint_every,
        validation_data=validation,
        log_every=settings.log_every,
        callbacks=callbacks,
        verbose=verbose,
        initial_step=initial_step,
    )
    result = TrainResult(
        model=keras_model,
        model_dir=directory,
        step=int(keras_model.optimizer.iterations.numpy()),
        weights_digest=zoo.weights_digest(keras_model),
        is_chief=role.is_chief,
    )
    if settings.summary and role.is_chief:
        # A multi-worker model's variables are collective: evaluating them on the chief alone would wait for
        # workers that have finished. The chief measures the saved model, a copy of its own, instead.
        measured = zoo.load(directory.path) if distribute.is_multi_worker(strategy) else keras_model
        result.summary = _summary(measured, validation, check_data, settings, measured_split)
        directory.write_json(directory.summary_file, result.summary)
    return result


def _summary(model, validation, check_data, settings, split):
    """What the run achieved, on the dataset's check split (validation digits where it has them, else test): the
    ELBO and the quick robustness check."""
    summary = {"dataset": settings.dataset, "split": split, "elbo": None, "robustness": None}
    if validation is not None:
        summary["elbo"] = {
            name: float(value) for name, value in model.evaluate(validation, verbose=0, return_dict=True).items()
        }
    if check_data is not None:
        summary["robustness"] = quick_check.quick_robustness(
            lambda x: model(x, training=False), check_data, (0.05, 0.1), seed=settings.seed
        )
    return summary
