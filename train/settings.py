"""The settings of a training run, one validated dataclass (`zoo.config`): `train.run` takes them as
keyword arguments and `python -m train` makes one flag of each field."""

import dataclasses

from train.distribute import STRATEGIES
from zoo import data, networks
from zoo.config import AT_LEAST_ONE, NON_NEGATIVE, Config, setting

def EPSILON_LIST(value):
    try:
        return None if all(float(e) > 0 for e in value.split(",")) else "must be positive radii"
    except ValueError:
        return "must be comma-separated numbers"


# "auto": the fastest precision that is safe on the device found (`distribute.auto_precision`).
PRECISION_CHOICES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class TrainSettings(Config):
    dataset: str = setting("color_mnist_embedded", "Dataset to train on.", choices=tuple(data.DATASETS))
    data_dir: str = setting(None, "tensorflow-datasets data directory (tfds data_dir).")
    download: bool = setting(True, "Let tensorflow-datasets download data that is not prepared in data_dir.")
    arch: str = setting(
        None, "Architecture; default: the dataset's (conv64 for CelebA).", choices=tuple(networks.ARCHITECTURES)
    )
    colour_per_visit: bool = setting(
        False, "ColorMNIST: draw a training digit's colour afresh at every visit, as the public AVAE code does (test "
        "colours stay fixed); otherwise each digit keeps one colour, a hash of its pixels.",
    )  # fmt: skip
    train_examples: int = setting(
        0, "Train on the first N examples of the training split only (0: all of it), for data-size ablations; "
        "the robustness check's probe and test images stay the same.", check=NON_NEGATIVE,
    )  # fmt: skip
    latent_dim: int = setting(64, "Latent dimension.", check=AT_LEAST_ONE)
    batch_size: int = setting(64, "Global batch size (split over replicas).", check=AT_LEAST_ONE)
    learning_rate: float = setting(1e-4, "Adam learning rate.", check=NON_NEGATIVE)
    train_steps: int = setting(10_000, "Optimizer steps to train for.", check=AT_LEAST_ONE)
    checkpoint_every: int = setting(500, "Steps between checkpoints (and between validations).", check=AT_LEAST_ONE)
    eval_examples: int = setting(1000, "Test examples used for validation at each checkpoint (0: none).", check=NON_NEGATIVE)
    seed: int = setting(0, "Seed for initialisation, data order and training noise.")
    strategy: str = setting(
        "auto", "tf.distribute strategy: auto mirrors over several GPUs; multi_worker reads the cluster from TF_CONFIG.",
        choices=STRATEGIES,
    )  # fmt: skip
    virtual_cpus: int = setting(0, "Split the host CPU into N logical devices (tests mirrored on CPU).", check=NON_NEGATIVE)
    jit_compile: bool = setting(
        None, "Compile the train step with XLA. Default: on for the mlp architecture on one replica, off for the "
        "convolutional ones, where it measured 3-4x slower on CPU (distribute.auto_jit_compile).",
    )  # fmt: skip
    steps_per_execution: int = setting(
        None, "Training steps per call into TensorFlow (fewer Python round trips; lowered to divide checkpoint_every "
        "and the steps left). Default: the largest divisor of both up to 10, 1 with several replicas "
        "(distribute.auto_steps_per_execution).",
        check=AT_LEAST_ONE,
    )  # fmt: skip
    steps_per_xla_program: int = setting(
        None, "With XLA, training steps unrolled into each XLA program: faster steps, longer compilation, the same "
        "weights. Default: 5 for runs of 10,000 steps or more, else 1 (distribute.auto_steps_per_xla_program).",
        check=AT_LEAST_ONE,
    )  # fmt: skip
    precision: str = setting(
        "auto", "Compute precision; weights stay float32. auto: the fastest that is safe on the device found "
        "(mixed_bfloat16 on GPUs of compute capability 8 and CPUs with AMX, mixed_float16 on older GPUs, "
        "else float32).", choices=PRECISION_CHOICES,
    )  # fmt: skip
    log_every: int = setting(50, "Steps between TensorBoard summaries.", check=AT_LEAST_ONE)
    init_from: str = setting(
        None, "Model directory of a trained model to start from: its weights, arch, image shape and latent_dim "
        "(required by models that read no data, e.g. avae_ss).",
    )  # fmt: skip
    robustness_every: int = setting(
        0, "Every N steps, fit a linear probe on the encoder mean and measure clean and PGD-10 accuracy on fixed test "
        "images; logged to TensorBoard and robustness_curve.csv (0: never). A model that reads no data (avae_ss) is "
        "checked on the dataset its init_from model was trained on.", check=NON_NEGATIVE,
    )  # fmt: skip
    robustness_epsilons: str = setting(
        "0.02,0.05,0.1", "Comma-separated L-inf radii of the robustness checks.", check=EPSILON_LIST
    )
    summary: bool = setting(
        True, "At the end, print the test ELBO and a quick robustness check (linear probe, PGD-10) and what to run next."
    )

    def check(self):
        if self.colour_per_visit:
            try:
                data.check_colour_per_visit(self.dataset)
            except ValueError as refusal:
                raise self.error(str(refusal)) from None

    @property
    def epsilons(self):
        return tuple(float(e) for e in self.robustness_epsilons.split(","))
