"""How training steps run under XLA: an execution's steps unrolled into XLA programs of several steps.

The trainer's choice, not the model's: `train.loop.build_model` installs it on a compiled model, and the model
keeps only its maths (`ZooModel.train_step`). Keras compiles each step alone and loops over them, so the
program's launch and buffers come back every step, a large part of a small (mlp) step; unrolled, fed their
batches, the steps run faster with the same weights (results/xla_executions.md), and compile time, which grows
with the steps per program, caps them (`train.distribute.auto_steps_per_xla_program`). The programs draw their
noise with ThreeFry (`zoo.rng.xla_program`), the project's RNG policy inside XLA training programs.
"""

import tensorflow as tf

from zoo import rng


def use_xla_programs(model, steps_per_program):
    """Makes `model.fit` run each execution's steps in XLA programs of up to `steps_per_program` unrolled steps.

    Applies when the model is compiled with XLA on one replica (several cannot run one XLA program on CPU,
    `train.loop.build_model`); otherwise Keras' own train function runs. An execution that the data cuts short
    runs its batches one by one in a program of one step, so no batch is dropped and `fit`'s StopIteration works.
    """
    keras_make_train_function = model.make_train_function

    def make_train_function(force=False):
        if model.train_function is not None and not force:
            return model.train_function
        strategy = model.distribute_strategy
        if not model.jit_compile or model.run_eagerly or strategy.num_replicas_in_sync > 1:
            return keras_make_train_function(force)
        model.train_function = _unrolled_train_function(model, int(model.steps_per_execution), steps_per_program)
        return model.train_function

    model.make_train_function = make_train_function


def _unrolled_train_function(model, steps, per_program):
    strategy = model.distribute_strategy

    def one_step(batch):
        with rng.xla_program():
            return strategy.experimental_local_results(strategy.run(model.train_step, args=(batch,)))[0]

    def unrolled(batches):
        for batch in batches:
            logs = one_step(batch)
        return logs

    one_step_program = tf.function(one_step, jit_compile=True, reduce_retracing=True)
    unrolled_program = tf.function(unrolled, jit_compile=True, reduce_retracing=True)

    @tf.function
    def execution(iterator):
        batches = [iterator.get_next_as_optional() for _ in range(steps)]
        ran = tf.reduce_sum([tf.cast(batch.has_value(), tf.int32) for batch in batches])

        def one_by_one():
            logs = {name: tracker.result() for name, tracker in model.trackers.items()}
            for batch in batches:
                logs = tf.cond(
                    batch.has_value(),
                    lambda batch=batch: one_step_program(batch.get_value()),
                    lambda logs=logs: logs,
                )
            return logs

        def all_there():
            values = [batch.get_value() for batch in batches]
            for begin in range(0, steps, per_program):
                logs = unrolled_program(values[begin : begin + per_program])
            return logs

        return ran, tf.cond(ran == steps, all_there, one_by_one)

    def train_function(iterator):
        ran, logs = execution(iterator)
        if ran == 0:
            raise StopIteration
        return logs

    return train_function
