"""Where training runs: `tf.distribute` strategies and each process's role in a cluster."""

import collections
import math
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")


def split_cpu(virtual_cpus):
    """Splits the host CPU into `virtual_cpus` logical devices (before TF initialises)."""
    if virtual_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * virtual_cpus)


def make_strategy(name):
    """A `tf.distribute` strategy by name; `auto` mirrors when several GPUs are visible.

    `multi_worker` reads the cluster from the TF_CONFIG environment variable;
    create it first thing in the program, before any other TensorFlow work.
    """
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "strategy multi_worker needs the TF_CONFIG environment variable describing the cluster "
                "and this worker's task (see the README, 'Several machines')"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy([d.name for d in gpus] if gpus else [d.name for d in cpus])
    raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


WorkerRole = collections.namedtuple("WorkerRole", ["is_chief", "task_type", "task_id"])


def worker_role(strategy):
    """This process's place in the cluster; a single-process strategy is its own chief.

    The chief is the task of type "chief", or worker 0 when the cluster names no chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None) if is_multi_worker(strategy) else None
    if resolver is None or not resolver.task_type:
        return WorkerRole(True, None, 0)
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return WorkerRole(is_chief, task_type, task_id)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def auto_precision():
    """The fastest compute precision that is safe on the devices found.

    bfloat16 has float32's exponent range, so it needs no loss scaling: GPUs of compute capability 8 and
    later (Ampere, Hopper) and CPUs with AMX compute it natively. Older GPUs get float16 with loss
    scaling. Elsewhere (CPUs without AMX, where bfloat16 is emulated and slower) float32.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        if capability >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16" if capability >= (7, 0) else "float32"
    return "mixed_bfloat16" if "amx_bf16" in _cpu_flags() else "float32"


# What the speed defaults were chosen from: results/speed_defaults.md (VAE and AVAE, mlp and conv, float32,
# alternated rounds in one run on a 2-core Xeon). XLA made the mlp step faster and the conv step
# slower; 10 steps per execution helped mlp with and without XLA, 50 nothing more, and the conv step does not
# notice the per-step Python work.
AUTO_JIT_ARCHITECTURES = ("mlp",)
AUTO_STEPS_PER_EXECUTION = 10


def auto_jit_compile(arch, replicas):
    """XLA where it measured faster: the mlp architecture, on one replica (several replicas in one process
    cannot run one XLA program on CPU, see `loop.build_model`)."""
    return arch in AUTO_JIT_ARCHITECTURES and replicas == 1


def auto_steps_per_execution(checkpoint_every, train_steps, replicas):
    """The largest number of steps up to AUTO_STEPS_PER_EXECUTION that divides the checkpoint interval and
    the budget, so that no execution has to be shortened; 1 with several replicas, where Keras 3.15's `fit`
    under MirroredStrategy fails on an execution of several steps."""
    return 1 if replicas > 1 else math.gcd(AUTO_STEPS_PER_EXECUTION, checkpoint_every, train_steps)


# results/xla_executions.md: programs of 5 unrolled steps ran the mlp AVAE and VAE faster than Keras' one
# program per step, for some seconds more compilation, which a short run does not win back (the break-even is
# in that file).
AUTO_STEPS_PER_XLA_PROGRAM = 5
UNROLL_FROM_TRAIN_STEPS = 10_000


def auto_steps_per_xla_program(train_steps):
    """Training steps per XLA program (`train.xla_programs`): several for runs long enough to win back
    their compilation, one below."""
    return AUTO_STEPS_PER_XLA_PROGRAM if train_steps >= UNROLL_FROM_TRAIN_STEPS else 1


def worker_model_dir(model_dir, role):
    """Where this worker writes: the model directory for the chief, a temporary one inside it otherwise."""
    return model_dir if role.is_chief else model_dir.worker_dir(role.task_type, role.task_id)
