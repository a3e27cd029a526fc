"""Reading settings from JSON files: a run's config (`python -m train --config`) and a study's files
(`train.study`), one way, without TensorFlow or absl."""

import json


def read_json_object(path, what):
    """The JSON object in the file `path` as a dict. Raises ValueError with one sentence naming it as `what`
    (e.g. "--config", "run config") when it is missing, unreadable, not JSON or not an object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except OSError as error:
        raise ValueError(f"{what} {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path} must hold a JSON object of settings by name")
    return value
