"""Maps model names to classes.

A model registers under the name of its file (`zoo/models/avae.py` -> "avae"),
so `python -m train --model=avae`, the registry key and the file all agree;
nothing in the project branches on model names. Every module of `zoo.models`
is a model, so discovery needs no list.
"""

import hashlib
import importlib
import pkgutil
import zipfile

import keras

from zoo.model_dir import ModelDir, ModelDirError

MODELS = {}


def register(name):
    """Class decorator: registers a model under `name` and as Keras-serialisable."""

    def decorator(cls):
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls = keras.saving.register_keras_serializable(package="zoo", name=name)(cls)
        cls.registry_name = name
        MODELS[name] = cls
        return cls

    return decorator


def import_all_models():
    """Imports every module of `zoo.models` so each model registers itself (once; then a no-op)."""
    from zoo import models

    for info in pkgutil.iter_modules(models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"zoo.models.{info.name}")


def get_model_class(name):
    """Returns the class registered as `name`, or raises naming the choices."""
    import_all_models()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def load(model_dir):
    """The trained model in `model_dir` (its `model.keras`); FileNotFoundError when there is none, ModelDirError
    when it is damaged (a truncated or corrupt archive)."""
    import_all_models()  # the classes must be registered to deserialise
    directory = ModelDir(model_dir)
    if not directory.has_model():
        raise FileNotFoundError(f"no trained model in {directory.path!r} (expected {directory.model_file})")
    if not _whole_archive(directory.model_file):
        raise ModelDirError(
            f"{directory.model_file} is damaged (not a whole .keras archive): run its training command again, which "
            "writes it anew from the last checkpoint"
        )
    return keras.saving.load_model(directory.model_file)


def _whole_archive(path):
    """Whether `path` is a zip archive whose every member reads back with its checksum (a .keras file is one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def weights_digest(model):
    """A short fingerprint of every weight's value: equal digests, equal models (across workers, across a
    killed and resumed run, between a model card and the weights it describes)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()[:16]
