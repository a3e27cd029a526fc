"""Pretrained encoders shipped inside the package, in TensorFlow Serving's layout.

    from zoo import pretrained
    encoder = pretrained.load("avae_color_mnist_conv")
    embedding = encoder(images)  # images float32 [N, 28, 28, 3] in [0, 1] -> posterior mean [N, 64]

Each encoder is a SavedModel written by `export.encoder` (its signatures, the TF Hub reusable API and
`assets/model_card.json`, whose `evaluation` key holds the robustness table it was audited with) under
`zoo/pretrained_encoders/<name>/<version>/`, so `path(name)`'s parent is a TF Serving model base path:

    python -m serving.server --model_name=avae --model_base_path=<parent of pretrained.path(name)>

How each was trained, evaluated and exported: `zoo/pretrained_encoders/README.md`.
"""

import importlib.resources
import json
import os

from serving.layout import list_versions

PACKAGE_DIRECTORY = "pretrained_encoders"
_MODEL_CARD = os.path.join("assets", "model_card.json")


def _root():
    # A real directory in both a wheel install and an editable one (the package is not zipped).
    return str(importlib.resources.files("zoo") / PACKAGE_DIRECTORY)


def _newest_version(name):
    """The SavedModel directory of `name`'s newest finished version, or None."""
    versions = list_versions(os.path.join(_root(), name))
    return versions[max(versions)] if versions else None


def names():
    """The shipped encoders, sorted."""
    root = _root()
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if _newest_version(name))


def path(name):
    """The SavedModel directory of the newest version of encoder `name`."""
    shipped = names()
    if name not in shipped:  # also keeps a name like "../x" inside the package
        raise ValueError(f"no pretrained encoder named {name!r}; choices: {', '.join(shipped) or 'none shipped'}")
    return _newest_version(name)


def model_card(name):
    """The encoder's model card (training flags, model config and its robustness evaluation) as a dict."""
    with open(os.path.join(path(name), _MODEL_CARD)) as f:
        return json.load(f)


def load(name):
    """The encoder as a SavedModel object: `__call__(images)` gives the embedding, and `.signatures` the
    serving signatures (`serving_default`, `encode_image`, `reconstruct`, `decode`)."""
    directory = path(name)  # before TensorFlow loads: an unknown name fails fast
    import tensorflow as tf

    return tf.saved_model.load(directory)
