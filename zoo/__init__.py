"""Robust representation learning zoo.

Importing the package registers every model, so `keras.saving.load_model`
can rebuild any `.keras` file the zoo wrote.
"""

from zoo import registry  # noqa: F401
from zoo.registry import MODELS, get_model_class  # noqa: F401

registry.import_all_models()
