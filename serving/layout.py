"""TensorFlow Serving's model layout: one SavedModel per integer-named version directory,
`<base_path>/<version>/saved_model.pb`.

Free of TensorFlow, so that the exporter, the server's version polling and `zoo.pretrained` share
one reading of the layout without paying TensorFlow's import.
"""

import os

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_saved_model(path):
    """Whether the directory `path` holds a finished SavedModel."""
    return any(os.path.isfile(os.path.join(path, name)) for name in _SAVED_MODEL_FILES)


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
