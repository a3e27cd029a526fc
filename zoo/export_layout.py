"""Where an exported encoder's files lie: TensorFlow Serving's model layout and the names `export.encoder` writes.

    <export_base>/models.config                      one entry per exported model (MODELS_CONFIG)
    <export_base>/batching_parameters.txt            BatchingParameters text proto (BATCHING_PARAMETERS)
    <export_base>/<model_name>/<version>/            one SavedModel per integer-named version:
        saved_model.pb, variables/, assets/model_card.md, assets/model_card.json

The one home of these names, shared by the exporter (`export.encoder`), the server's version polling
(`serving.manager`), the shipped encoders (`zoo.pretrained`) and the evaluation of an exported encoder
(`evaluate.pipeline`). It lives in `zoo`, which imports no other package of the project, so that all of them
can import it; and it is free of TensorFlow, so that reading the layout does not pay TensorFlow's import.
"""

import os

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_PBTXT = "saved_model.pbtxt"  # the text form, which TF Serving also loads
ASSETS = "assets"  # where `tf.saved_model.save` copies a SavedModel's `tf.saved_model.Asset` files
MODEL_CARD = "model_card.md"
MODEL_CARD_JSON = "model_card.json"
MODELS_CONFIG = "models.config"
BATCHING_PARAMETERS = "batching_parameters.txt"


def is_saved_model(path):
    """Whether the directory `path` holds a finished SavedModel."""
    return any(os.path.isfile(os.path.join(path, name)) for name in (SAVED_MODEL_PB, SAVED_MODEL_PBTXT))


def model_card_file(version_path):
    """The JSON model card inside the SavedModel version directory `version_path` (the Markdown one is beside it)."""
    return os.path.join(version_path, ASSETS, MODEL_CARD_JSON)


def list_versions(base_path):
    """{version: path} of the finished SavedModel versions under `base_path` ({} when it is missing).

    Any other entry (an exporter's temporary directory, a file, an integer directory without a
    SavedModel yet) is ignored, so a version is never seen half-written.
    """
    try:
        entries = os.listdir(base_path)
    except OSError:
        return {}
    versions = {}
    for entry in entries:
        path = os.path.join(base_path, entry)
        if entry.isdigit() and is_saved_model(path):
            versions[int(entry)] = path
    return versions


def next_version(base_path):
    """One more than the largest integer directory under `base_path`, finished or not: an export
    never reuses a version number that something already holds."""
    try:
        entries = os.listdir(base_path)
    except OSError:
        return 1
    return max((int(entry) for entry in entries if entry.isdigit()), default=0) + 1
