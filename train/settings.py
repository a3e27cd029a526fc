"""The settings of a training run, one validated dataclass (`zoo.config`): `train.run` takes them as
keyword arguments and `python -m train` makes one flag of each field."""

import dataclasses

from train import distribute
from train.distribute import STRATEGIES
from train.loop import LEARNING_RATE_SCHEDULES
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
    data_dir: str = setting(
        None,
        "tensorflow-datasets data directory (tfds data_dir); for image_folder, the folder of JPEG/PNG images "
        "(with labels.csv or list_attr_celeba.txt for labels); for celeb_a, it may hold CelebA's own "
        "img_align_celeba/ and list_attr_celeba.txt instead.",
    )
    download: bool = setting(True, "Let tensorflow-datasets download data that is not prepared in data_dir.")
    arch: str = setting(
        None,
        "Architecture; default: the dataset's recipe (train.settings.RECIPES: conv, conv64 for CelebA and image "
        "folders).",
        choices=tuple(networks.ARCHITECTURES),
    )
    colour_per_visit: bool = setting(
        False,
        "ColorMNIST: draw a training digit's colour afresh at every visit, as the public AVAE code does (test "
        "colours stay fixed); otherwise each digit keeps one colour, a hash of its pixels.",
    )
    shift_pixels: int = setting(
        0,
        "Translate each training image by a random whole number of pixels in [-N, N] along each axis, its "
        "border filled with black (0: no shift); a draw from the seed and the image's place in the training "
        "stream, so a resumed run shifts exactly as the uninterrupted one. Validation, test and evaluation "
        "images are never shifted.",
        check=NON_NEGATIVE,
    )
    train_examples: int = setting(
        0,
        "Train on the first N examples of the training split only (0: all of it), for data-size ablations; "
        "the robustness check's probe and test images stay the same.",
        check=NON_NEGATIVE,
    )
    latent_dim: int = setting(64, "Latent dimension.", check=AT_LEAST_ONE)
    batch_size: int = setting(64, "Global batch size (split over replicas).", check=AT_LEAST_ONE)
    learning_rate: float = setting(
        1e-4, "Adam learning rate (the papers'); the MNIST family's recipe: 3e-4.", check=NON_NEGATIVE
    )
    learning_rate_schedule: str = setting(
        "constant",
        "How the learning rate moves: constant, or cosine (decayed to 0 on a half cosine over train_steps, which then "
        "fixes the rates: raising train_steps later changes them).",
        choices=LEARNING_RATE_SCHEDULES,
    )
    train_steps: int = setting(
        10_000, "Optimizer steps to train for; the MNIST family's recipe: 20,000.", check=AT_LEAST_ONE
    )
    checkpoint_every: int = setting(
        500,
        "Steps between checkpoints (and between validations); the MNIST family's recipe: 2,500.",
        check=AT_LEAST_ONE,
    )
    eval_examples: int = setting(
        1000,
        "Examples whose ELBO is measured at each checkpoint (0: none), of the dataset's validation split where it has "
        "one (the *_plus_embedded datasets), else of its test split; the robustness checks read the same split.",
        check=NON_NEGATIVE,
    )
    seed: int = setting(0, "Seed for initialisation, data order and training noise.")
    strategy: str = setting(
        "auto",
        "tf.distribute strategy: auto mirrors over several GPUs; multi_worker reads the cluster from TF_CONFIG.",
        choices=STRATEGIES,
    )
    virtual_cpus: int = setting(
        0, "Split the host CPU into N logical devices (tests mirrored on CPU).", check=NON_NEGATIVE
    )
    jit_compile: bool = setting(
        None,
        "Compile the train step with XLA. Default: on for the mlp architecture on one replica, off for the "
        "convolutional ones, where it measured slower on CPU (results/speed_defaults.md).",
    )
    steps_per_execution: int = setting(
        None,
        "Training steps per call into TensorFlow (fewer Python round trips; lowered to divide checkpoint_every "
        "and the steps left). Default: the largest divisor of both up to 10, 1 with several replicas "
        "(distribute.auto_steps_per_execution).",
        check=AT_LEAST_ONE,
    )
    steps_per_xla_program: int = setting(
        None,
        "With XLA, training steps unrolled into each XLA program: faster steps, longer compilation, the same "
        "weights. Default: 5 for runs of 10,000 steps or more, else 1 (distribute.auto_steps_per_xla_program).",
        check=AT_LEAST_ONE,
    )
    precision: str = setting(
        "auto",
        "Compute precision; weights stay float32. auto: the fastest that is safe on the device found "
        "(mixed_bfloat16 on GPUs of compute capability 8 and CPUs with AMX, mixed_float16 on older GPUs, "
        "else float32).",
        choices=PRECISION_CHOICES,
    )
    log_every: int = setting(50, "Steps between TensorBoard summaries.", check=AT_LEAST_ONE)
    init_from: str = setting(
        None,
        "Model directory of a trained model to start from: its weights, arch, image shape and latent_dim "
        "(required by models that read no data, e.g. avae_ss).",
    )
    robustness_every: int = setting(
        0,
        "Every N steps, fit a linear probe on the encoder mean and measure clean and PGD-10 accuracy on fixed test "
        "images; logged to TensorBoard and robustness_curve.csv (0: never). A model that reads no data (avae_ss) is "
        "checked on the dataset its init_from model was trained on.",
        check=NON_NEGATIVE,
    )
    robustness_epsilons: str = setting(
        "0.02,0.05,0.1", "Comma-separated L-inf radii of the robustness checks.", check=EPSILON_LIST
    )
    allow_new_settings: bool = setting(
        False,
        "Resume a model directory under other hyper-parameters or training settings than it was trained with (for "
        "example a lower learning rate after a non-finite loss); otherwise that is refused, since the weights would "
        "be those of no single run. flags.json then records the new settings.",
    )
    summary: bool = setting(
        True,
        "At the end, print the test ELBO and a quick robustness check (linear probe, PGD-10) and what to run next.",
    )

    def check(self):
        if self.colour_per_visit:
            try:
                data.check_colour_per_visit(self.dataset)
            except ValueError as refusal:
                raise self.error(str(refusal)) from None
        if self.shift_pixels:  # checked against the dataset's images (a model that reads no data opens none)
            try:
                data.check_shift_pixels(self.dataset, self.shift_pixels)
            except ValueError as refusal:
                raise self.error(str(refusal)) from None

    def trajectory(self):
        """The settings that fix the weights step by step, besides the model's configuration: a model directory
        resumes only under the same values (`ModelDir.check`). The budget is not among them, so that a run can grow,
        unless a schedule spreads the learning rate over it. Execution choices (strategy, XLA, steps per execution)
        compute the same steps and are not among them either."""
        names = ["dataset", "train_examples", "batch_size", "learning_rate", "learning_rate_schedule", "seed"]
        names += ["colour_per_visit", "shift_pixels", "precision"]
        if self.learning_rate_schedule != "constant":
            names.append("train_steps")
        return {name: getattr(self, name) for name in names}

    @property
    def epsilons(self):
        return tuple(float(e) for e in self.robustness_epsilons.split(","))


# Each dataset's recipe: what a run on it trains unless told otherwise (a config file, then flags, override it).
# The MNIST family's is the one that trained the shipped avae_color_mnist_conv and vae_color_mnist_conv (conv,
# Adam 3e-4, 20,000 steps: zoo/pretrained_encoders/README.md; measured against the papers' 1e-4 in
# results/avae_plateau.md, section 10). Where research finds a better recipe, it changes here and nowhere else.
_MNIST_RECIPE = {"arch": "conv", "learning_rate": 3e-4, "train_steps": 20_000, "checkpoint_every": 2_500}
RECIPES = {
    "color_mnist_embedded": _MNIST_RECIPE,
    "color_mnist": _MNIST_RECIPE,
    "mnist_embedded": _MNIST_RECIPE,
    "mnist": _MNIST_RECIPE,
    "color_mnist_plus_embedded": _MNIST_RECIPE,
    "mnist_plus_embedded": _MNIST_RECIPE,
    "fashion_mnist": {"arch": "conv"},
    "svhn_cropped": {"arch": "conv"},
    "celeb_a": {"arch": "conv64"},
    "image_folder": {"arch": "conv64"},
}


def resolve(model_class, options):
    """(TrainSettings, the model's hyper-parameters) of a run: `options` (settings and hyper-parameters by name, as
    a config file and the flags give them) over the dataset's recipe over the fields' defaults.

    Raises ValueError naming the known settings for a name that is neither.
    """
    dataset = options.get("dataset") or TrainSettings.dataset
    settings, rest = TrainSettings.split({**RECIPES.get(dataset, {}), **options})
    hyperparameters, unknown = model_class.config_class.split(rest)
    if unknown:
        known = ", ".join(field.name for field in model_class.config_class.fields()) or "none"
        raise ValueError(
            f"unknown setting(s) {', '.join(sorted(unknown))} for model {model_class.registry_name!r} "
            f"(its hyper-parameters: {known}; training settings: {', '.join(f.name for f in TrainSettings.fields())})"
        )
    return TrainSettings(**settings), hyperparameters


def with_speed_defaults(settings, arch, replicas):
    """`settings` with every speed setting left to "auto" or None decided for this run (`train.distribute`): the
    precision for the device found, XLA for the architecture, steps per execution and per XLA program for the
    checkpoint interval and the budget. The one place they are decided; flags.json records the result."""
    return dataclasses.replace(
        settings,
        precision=distribute.auto_precision() if settings.precision == "auto" else settings.precision,
        jit_compile=(
            distribute.auto_jit_compile(arch, replicas) if settings.jit_compile is None else settings.jit_compile
        ),
        steps_per_execution=settings.steps_per_execution
        or distribute.auto_steps_per_execution(settings.checkpoint_every, settings.train_steps, replicas),
        steps_per_xla_program=settings.steps_per_xla_program
        or distribute.auto_steps_per_xla_program(settings.train_steps),
    )
