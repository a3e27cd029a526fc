"""Training entry points: `python -m train.<model> --dataset=...`."""

import os

# TensorFlow's C++ start-up chatter hides the progress bar; set the variable to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
