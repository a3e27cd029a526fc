"""Maps model names to classes.

A model registers under the name of its file (`zoo/avae.py` -> "avae"), so the
training entry point `python -m train.avae`, the registry key and the file all
agree; nothing in the project branches on model names.
"""

import importlib
import pkgutil

import keras

MODELS = {}

# Modules of the zoo package that are infrastructure, not models.
_NOT_MODELS = {"base", "registry", "maths", "networks", "data", "attacks", "training"}


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
    """Imports every model module in `zoo/` so each registers itself."""
    import zoo

    for info in pkgutil.iter_modules(zoo.__path__):
        if info.name not in _NOT_MODELS and not info.name.startswith("_"):
            importlib.import_module(f"zoo.{info.name}")


def get_model_class(name):
    """Returns the class registered as `name`, or raises naming the choices."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]
