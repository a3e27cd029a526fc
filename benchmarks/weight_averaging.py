"""Checkpoint averaging and BatchNorm recalibration of a trained run, by training's own robustness check (issue 11).

    python -m benchmarks.weight_averaging --model_dir=/work/runs/conv_avae_35k_lr3e-4 --steps=5000,7500,10000 \\
        --data_dir=../shared/tfds

Two cheap post-hoc changes: averaging the weights of the last checkpoints (stochastic weight averaging,
Izmailov et al., 2018; weight averaging adds robust accuracy in adversarial training, Gowal et al., 2020),
after which the BatchNorm moving statistics are recomputed on training data, and that recomputation alone
(with separate coupled passes the AVAE's delusion batches update the moving statistics as well as the data
do). For the last checkpoint of `--steps` (as trained and recomputed) and for the mean of the last two and of
all of them (recomputed), one row of `evaluate.quick_check.quick_robustness` (the same probe, PGD and digits
as the run's `robustness_curve.csv`); rows as JSON lines on stdout.
"""

import json

from zoo import console

console.quiet_tensorflow()  # before anything loads TensorFlow

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import zoo  # noqa: E402
from evaluate import quick_check  # noqa: E402
from zoo import data as zoo_data  # noqa: E402
from zoo.model_dir import ModelDir  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A finished training run with checkpoints at --steps.", required=True)
    flags.DEFINE_list("steps", None, "Checkpoint steps to average, oldest first (at least two).", required=True)
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory (prepared: no download).")
    flags.DEFINE_integer(
        "recalibration_batches", 300, "Training batches of 64 whose statistics replace the moving ones.", lower_bound=1
    )
    flags.DEFINE_list("epsilons", ["0.02", "0.05", "0.1"], "L-inf radii of the check.")


def checkpoint_weights(model, model_dir, step):
    """The model's weights (BatchNorm moving statistics included) in the run's checkpoint at `step`."""
    prefix = f"{ModelDir(model_dir).checkpoint_dir}/ckpt-{step}"
    if not tf.io.gfile.exists(prefix + ".index"):
        kept = tf.train.get_checkpoint_state(ModelDir(model_dir).checkpoint_dir)
        steps = [path.rsplit("-", 1)[-1] for path in kept.all_model_checkpoint_paths] if kept else []
        raise ValueError(f"no checkpoint at step {step} in {model_dir!r}; it keeps: {', '.join(steps) or 'none'}")
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    return [w.copy() for w in model.get_weights()]


def recalibrate_batch_norm(model, dataset, data_dir, batches):
    """Replaces the encoder's BatchNorm moving statistics by those of `batches` clean training batches."""
    images = zoo_data.training_batches(dataset, 64, data_dir=data_dir, download=False)
    for x, _ in images.take(batches):
        model.encoder(x, training=True)  # momentum 0.99: after 300 batches the old statistics weigh 5 %


def main(argv):
    del argv
    steps = [int(s) for s in FLAGS.steps]
    if len(steps) < 2:
        raise app.UsageError("--steps: give at least two checkpoint steps")
    try:
        model = zoo.load(FLAGS.model_dir)
        weights = {step: checkpoint_weights(model, FLAGS.model_dir, step) for step in steps}
    except (FileNotFoundError, ValueError) as error:
        raise app.UsageError(str(error)) from None
    dataset = ModelDir(FLAGS.model_dir).read_config()["dataset"]
    check = quick_check.load_check_data(dataset, FLAGS.data_dir, False)

    def row(label, recalibrate):
        if recalibrate:
            recalibrate_batch_norm(model, dataset, FLAGS.data_dir, FLAGS.recalibration_batches)
        result = quick_check.quick_robustness(
            lambda x: model(x, training=False), check, [float(e) for e in FLAGS.epsilons], seed=0
        )
        print(
            json.dumps(
                {
                    "weights": label,
                    "batch_norm": "recomputed" if recalibrate else "moving",
                    "clean": result["clean"],
                    **{f"eps_{e:g}": a for e, a in result["pgd"].items()},
                }
            ),
            flush=True,
        )

    last = steps[-1]
    for recalibrate in (False, True):
        model.set_weights(weights[last])
        row(f"checkpoint {last}", recalibrate)
    for subset in (steps[-2:], steps) if len(steps) > 2 else (steps,):
        model.set_weights([np.mean(ws, axis=0) for ws in zip(*(weights[s] for s in subset))])
        row("mean of checkpoints " + ", ".join(map(str, subset)), True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
