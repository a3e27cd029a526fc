"""What the scripts beside it share: the mlp models as `train` builds them, the ColorMNIST training
pipeline, Keras' own train function (the code before), and timing in alternated rounds."""

import keras
import tensorflow as tf

from train import loop
from train.callbacks import StepTimer
from zoo import data as zoo_data


def training_data(data_dir, shuffle=True):
    """Batches of 64 ColorMNIST training digits, repeated (shuffled) or once in order."""
    return zoo_data.load("color_mnist", "train", 64, data_dir=data_dir, shuffle=shuffle, repeat=shuffle,
                         drop_remainder=True, download=False)  # fmt: skip


def mlp_model(name, steps_per_execution=10, **hyperparameters):
    """The model `name` (mlp, latent 64, XLA on, Adam), initialised from seed 0."""
    keras.utils.set_random_seed(0)
    return loop.build_model(name, tf.distribute.get_strategy(), jit_compile=True,
                            steps_per_execution=steps_per_execution, image_shape=(28, 28, 3), arch="mlp",
                            latent_dim=64, **hyperparameters)  # fmt: skip


def use_keras_train_function(model):
    """Makes `fit` run Keras' own train function (one XLA program per step), bypassing ZooModel's."""
    model.make_train_function = lambda force=False: keras.Model.make_train_function(model, force)


def time_alternated(runs, rounds, steps):
    """{key: step seconds} of `fit` on each (model, data) of `runs`, in rounds whose order reverses every
    other round; the first execution of each `fit` call is left out."""
    times = {key: [] for key in runs}
    for round_ in range(rounds):
        for key in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
            model, data = runs[key]
            timer = StepTimer()
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
            times[key] += [seconds for _, seconds in timer.rows][1:]
    return times
