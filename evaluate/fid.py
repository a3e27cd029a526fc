"""Feature extractors for FID, and the FID of a model's samples and reconstructions.

Two kinds of features, which give numbers on different scales (never compare
an FID of one kind with one of the other; the JSON's "fid_features" says which):

- "inception": InceptionV3 pool features (`keras.applications`, ImageNet
  weights, 2048-d; images resized to 299x299, grey replicated to RGB). Used
  when its weights can be had: in "auto" mode only when Keras already has them
  cached (~/.keras/models), so an offline machine never tries to download.
- "classifier": the 128-d penultimate layer of a small convnet trained on the
  dataset's own training split, one softmax head per task (the same tasks as
  the probes). It is trained once per (dataset, data_dir, settings) and cached
  as `<cache_dir>/<dataset>/classifier-<key>.keras` with a JSON beside it, so
  every model evaluated on a dataset is scored with the same features.
"""

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from evaluate import frechet
from zoo import data as zoo_data
from zoo import model_dir

INCEPTION_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
FEATURE_KINDS = ("auto", "inception", "classifier")
CLASSIFIER_VERSION = 2  # bump when the architecture or training changes: invalidates caches


def default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "robust_zoo", "fid_classifiers")


def inception_weights_cached():
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.exists(os.path.join(keras_home, "models", INCEPTION_WEIGHTS))


class FeatureExtractor:
    """images [n, H, W, C] in [0, 1] (numpy) -> features [n, d] (numpy), plus a description for the JSON."""

    def __init__(self, fn, description, batch_size):
        self._fn = tf.function(fn)
        self.description = description
        self.batch_size = batch_size

    def __call__(self, images):
        return np.concatenate(
            [
                self._fn(tf.constant(images[i : i + self.batch_size])).numpy()
                for i in range(0, len(images), self.batch_size)
            ]
        )


def inception_extractor(batch_size=32):
    network = keras.applications.InceptionV3(include_top=False, pooling="avg", weights="imagenet")

    def features(images):
        if images.shape[-1] == 1:
            images = tf.repeat(images, 3, axis=-1)
        images = tf.image.resize(images, (299, 299))
        return network(images * 2.0 - 1.0, training=False)

    return FeatureExtractor(
        features,
        {"kind": "inception", "network": "keras.applications.InceptionV3 (imagenet, avg pool)", "dim": 2048},
        batch_size,
    )


def _build_classifier(image_shape, tasks):
    images = keras.Input(image_shape, name="images")
    x = images
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(128, activation="relu", name="features")(x)
    heads = {task: keras.layers.Dense(classes, name=task)(features) for task, classes in tasks.items()}
    return keras.Model(images, heads, name="fid_classifier")


def _train_classifier(classifier, train, test, epochs, log, learning_rate=1e-3):
    """Adam on the summed cross-entropies of the heads (a plain loop: cheap to trace with many heads).

    Returns the test accuracy per task.
    """
    optimizer = keras.optimizers.Adam(learning_rate)

    def cross_entropy(labels, logits):
        return tf.add_n(
            [
                tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels[t], logits=logits[t]))
                for t in logits
            ]
        )

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = cross_entropy(labels, classifier(images, training=True))
        variables = classifier.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(reduce_retracing=True)
    def correct(images, labels):
        logits = classifier(images, training=False)
        hits = {t: tf.equal(tf.argmax(logits[t], -1, output_type=tf.int32), labels[t]) for t in logits}
        return {t: tf.reduce_sum(tf.cast(hit, tf.float32)) for t, hit in hits.items()}

    for epoch in range(epochs):
        losses = [float(step(images, labels)) for images, labels in train]
        log(f"fid: classifier epoch {epoch + 1}/{epochs}, loss {np.mean(losses):.4f}")
    totals, count = {}, 0
    for images, labels in test:
        for task, value in correct(images, labels).items():
            totals[task] = totals.get(task, 0.0) + float(value)
        count += int(images.shape[0])
    return {task: total / max(count, 1) for task, total in totals.items()}


def _cache_key(dataset, data_dir, train_examples, epochs, seed):
    text = json.dumps(
        [CLASSIFIER_VERSION, dataset, os.path.abspath(data_dir) if data_dir else None, train_examples, epochs, seed]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def classifier_extractor(
    dataset, data_dir, cache_dir, train_examples, epochs, seed=0, download=True, batch_size=128, log=print
):
    """The cached dataset classifier's features, training and caching it first if needed."""
    spec = zoo_data.get_spec(dataset, data_dir)
    key = _cache_key(dataset, data_dir, train_examples, epochs, seed)
    folder = os.path.join(cache_dir, dataset)
    path = os.path.join(folder, f"classifier-{key}.keras")
    meta_path = path[: -len(".keras")] + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        classifier = keras.saving.load_model(path, compile=False)
        with open(meta_path) as f:
            meta = json.load(f)
        log(f"fid: using cached feature classifier {path}")
    else:
        log(f"fid: training the feature classifier for {dataset} (cached afterwards in {path})")
        keras.utils.set_random_seed(seed)
        classifier = _build_classifier(spec.image_shape, spec.tasks)
        train = zoo_data.load(
            dataset,
            "train",
            batch_size,
            data_dir=data_dir,
            shuffle=True,
            seed=seed,
            take=train_examples,
            download=download,
        )
        test = zoo_data.load(dataset, "test", batch_size, data_dir=data_dir, take=2000, download=download)
        test_accuracy = _train_classifier(classifier, train, test, epochs, log)
        meta = {
            "dataset": dataset,
            "data_dir": os.path.abspath(data_dir) if data_dir else None,
            "train_examples": train_examples,
            "epochs": epochs,
            "seed": seed,
            "test_accuracy": test_accuracy,
        }
        os.makedirs(folder, exist_ok=True)
        # Written under a temporary name and renamed: concurrent runs never read half a file.
        tmp = f"{path}.tmp-{os.getpid()}.keras"
        classifier.save(tmp)
        os.replace(tmp, path)
        model_dir.write_json(meta_path, meta)
    feature_model = keras.Model(classifier.inputs, classifier.get_layer("features").output)
    description = {
        "kind": "classifier",
        "network": "2-conv classifier trained on the dataset, 128-d penultimate layer",
        "dim": 128,
        "path": path,
        **{k: meta[k] for k in ("dataset", "train_examples", "epochs", "test_accuracy") if k in meta},
    }
    return FeatureExtractor(lambda images: feature_model(images, training=False), description, batch_size)


def make_extractor(kind, dataset, data_dir, cache_dir, train_examples, epochs, seed=0, download=True, log=print):
    """`kind` in FEATURE_KINDS; "auto" is InceptionV3 when its weights are cached, else the classifier."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown FID features {kind!r}; choose one of: {', '.join(FEATURE_KINDS)}")
    if kind == "inception" or (kind == "auto" and inception_weights_cached()):
        try:
            return inception_extractor()
        except Exception as error:  # no weights and no network: say so in one line
            raise ValueError(
                f'InceptionV3 ImageNet weights are not available ({error}); set fid_features to "classifier"'
            ) from None
    return classifier_extractor(dataset, data_dir, cache_dir, train_examples, epochs, seed, download, log=log)


def fid(extractor, real_images, fake_images):
    """Frechet distance between extractor features of two image sets (numpy arrays in [0, 1])."""
    return float(frechet.frechet_distance_of_features(extractor(real_images), extractor(fake_images)).numpy())
