"""A quiet console for the command lines: TensorFlow's own log lines stay off it (and its fast CPU kernels on).

TensorFlow 2.21 writes C++ log lines (CUDA probing, "All log messages before absl::InitializeLog()")
while it loads and finds its devices, before TF_CPP_MIN_LOG_LEVEL takes effect. Entry points call
`quiet_tensorflow()` first thing: unless the user set TF_CPP_MIN_LOG_LEVEL (then nothing changes), it
sets it to 3 and loads TensorFlow and its devices with the process's stderr sent to /dev/null. Python
warnings and errors are unaffected: an import error is still raised, and its traceback printed, once
stderr is back. `quiet_info_logs()`, called once the flags are parsed, hides the INFO lines TensorFlow
writes through absl (checkpoint sharding, SavedModel fingerprints) unless `--verbosity` was given.
"""

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def _stderr_to_devnull():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow():
    """Loads TensorFlow without its C++ log, unless TF_CPP_MIN_LOG_LEVEL is set; idempotent.

    Also turns on TensorFlow's oneDNN kernels unless TF_ENABLE_ONEDNN_OPTS says otherwise. TensorFlow
    enables them by itself only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX; elsewhere (AVX2 machines
    such as AMD Zen) it falls back to Eigen, whose gradient of a strided convolution made the conv encoder's
    step several times slower (results/onednn.md).
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with _stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs too (cuInit on machines without a GPU)
    # TensorFlow's own Python INFO lines (each checkpoint's "Sharding callback duration", ...).
    tf.get_logger().setLevel(logging.WARNING)


def quiet_info_logs():
    """absl's log at WARNING, unless the command line set --verbosity."""
    from absl import flags, logging as absl_logging

    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
