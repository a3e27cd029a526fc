"""Robust representation learning zoo.

`zoo.load(model_dir)` loads the model a training run finished, `zoo.weights_digest(model)` fingerprints its
weights; `zoo.get_model_class(name)` and
`zoo.MODELS` give the registered models. The models register on first use of these, so importing
`zoo` itself loads no TensorFlow and a command line can quiet TensorFlow first (`zoo.console`).
"""

_LAZY = ("MODELS", "get_model_class", "load", "weights_digest")


def __getattr__(name):
    if name in _LAZY:
        from zoo import registry

        registry.import_all_models()
        return getattr(registry, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
