"""Pretrained encoders shipped inside the package, in TensorFlow Serving's layout.

    from zoo import pretrained
    encoder = pretrained.load("avae_color_mnist_conv")
    embedding = encoder(images)  # images: floats [N, 28, 28, 3] in [0, 1] -> posterior means [N, 64]

Each encoder is a SavedModel written by `export.encoder` (its signatures, the TF Hub reusable API and
`assets/model_card.json`, whose `evaluation` key holds the robustness table it was audited with) under
`zoo/pretrained_encoders/<name>/<version>/` (`zoo.export_layout`), so `path(name)`'s parent is a TF Serving model
base path:

    python -m serving.server --model_name=avae --model_base_path=<parent of pretrained.path(name)>

How each was trained, evaluated and exported: `zoo/pretrained_encoders/README.md`.
"""

import importlib.resources
import json
import os

from zoo.export_layout import list_versions, model_card_file

PACKAGE_DIRECTORY = "pretrained_encoders"
_EIGHT_BIT_HINT = "divide 8-bit pixels by 255"  # the usual slip behind a wrong dtype or range


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
    return read_model_card(path(name))


def read_model_card(directory):
    """The model card of any encoder `export.encoder` wrote, given its SavedModel version directory."""
    with open(model_card_file(directory)) as f:
        return json.load(f)


def load(name):
    """The encoder `name` as an `Encoder`: `encoder(images)` gives the embedding (the posterior mean),
    `encoder.reconstruct(images)` the decoded embedding, and `encoder.signatures` the serving signatures
    (`serving_default`, `encode_image`, `reconstruct`, `decode`) of its SavedModel (`encoder.saved_model`)."""
    directory = path(name)  # before TensorFlow loads: an unknown name fails fast
    import tensorflow as tf

    return Encoder(tf.saved_model.load(directory))


class Encoder:
    """A shipped encoder's SavedModel, with the images checked before they reach it.

    The SavedModel's functions were traced for float32 [N, H, W, C] alone, and anything else fails inside
    TensorFlow with "Could not find matching concrete function" (numpy's default float64 most often). Here
    floating images are cast to float32, and 8-bit pixels, a missing batch axis, a wrong image size or pixels
    outside [0, 1] each get one sentence saying what is expected.
    """

    def __init__(self, saved_model):
        self.saved_model = saved_model
        spec = saved_model.signatures["serving_default"].structured_input_signature[1]["images"]
        self.image_shape = tuple(int(d) for d in spec.shape[1:])

    @property
    def signatures(self):
        return self.saved_model.signatures

    def __call__(self, images, training=False):
        return self.saved_model(self.check_images(images), training=training)

    def reconstruct(self, images):
        return self.saved_model.reconstruct(self.check_images(images))["reconstruction"]

    def check_images(self, images):
        """`images` as a float32 tensor [N, H, W, C]; a ValueError for a wrong dtype or shape, and TensorFlow's
        InvalidArgumentError, with the same kind of sentence, for pixels outside [0, 1]."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        expected = f"[N, {', '.join(map(str, self.image_shape))}]"
        if not images.dtype.is_floating:
            hint = f" ({_EIGHT_BIT_HINT})" if images.dtype == tf.uint8 else ""
            raise ValueError(f"images must be floats in [0, 1], got {images.dtype.name}{hint}")
        shape = tuple(images.shape)
        if shape == self.image_shape:
            raise ValueError(f"images must be a batch {expected}, got one image {list(shape)}: add a batch axis")
        if len(shape) != 4 or any(d is not None and d != e for d, e in zip(shape[1:], self.image_shape)):
            raise ValueError(f"images must have shape {expected}, got {list(shape)}")
        images = tf.cast(images, tf.float32)
        # Pixels in [0, 255] given as floats are the usual slip, and they would give an embedding without a word.
        message = f"images must lie in [0, 1] ({_EIGHT_BIT_HINT})"
        checks = [
            tf.debugging.assert_greater_equal(images, 0.0, message=message),
            tf.debugging.assert_less_equal(images, 1.0, message=message),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(images)
