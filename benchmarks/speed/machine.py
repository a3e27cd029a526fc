"""The machine the speed benchmark ran on: CPU model and ISA flags, GPUs, library versions, oneDNN."""

import os
import platform

import keras
import tensorflow as tf

from train import distribute


def _cpu():
    """(model name, ISA flags) of the first CPU in /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields.get("model name", platform.processor() or platform.machine()), set(fields.get("flags", "").split())


def machine():
    name, isa = _cpu()
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in isa]
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & isa)
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "isa": vector,
        "bfloat16": "native (AVX512-BF16/AMX)" if native_bf16 else "emulated: no AVX512-BF16 or AMX instructions",
        "auto_precision": distribute.auto_precision(),
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onednn": _onednn_enabled(),
    }


def _onednn_enabled():
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
